"""The latency run of bench/peers alone, repeated and interleaved: submit -> start at a paced
rate for each system, `--rounds` times in turn (kubeq, bullmq, taskiq, kubeq, ...), so a
change to the worker's wake-up path is compared with the peers in one run without the
17 minutes of drains. Writes bench/results/<out>.json.

    python -m bench.peers.latency --systems kubeq,bullmq,taskiq --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from bench.common import write
from bench.peers.run import latency
from bench.peers.systems import compile_sources, systems
from kubeq.redis_server import RedisServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="kubeq,bullmq,taskiq")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--out", default="peers-latency")
    a = ap.parse_args(argv)
    table = systems()
    names = [x for x in a.systems.split(",") if x]
    unknown = [x for x in names if x not in table]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {sorted(table)}")
    logdir = Path(os.environ.get("BENCH_LOGS", "/tmp/kubeq-bench-peers"))
    logdir.mkdir(parents=True, exist_ok=True)
    compile_sources()
    records: list[dict[str, Any]] = []
    with RedisServer() as server:
        for rnd in range(a.rounds):
            for name in names:
                rec = latency(table[name], server.url, a.rate, a.secs, logdir) | {"round": rnd}
                print(f"latency {name}: p50 {rec['p50']:.2f} p99 {rec['p99']:.2f} ms", flush=True)
                records.append(rec)
    params = {"rounds": a.rounds, "rate": a.rate, "secs": a.secs}
    path = write(a.out, {"params": params, "records": records})
    for name in names:
        mine = [r for r in records if r["system"] == name]
        p50 = statistics.median(r["p50"] for r in mine)
        p99 = statistics.median(r["p99"] for r in mine)
        print(f"{name}: median over {len(mine)} runs p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
