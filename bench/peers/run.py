"""Drain, latency and bulk submit for kubeq and its peers, interleaved in one run.

  python -m bench.peers.run [--quick] [--systems kubeq,bullmq,...] [--reps 3]

Drain: FLUSHALL, 20,000 tasks queued with the system's per-task API, then ONE worker
process starts; wall time from starting it until the body counter reaches 20,000 (polled
every 10 ms), startup included. Peak RSS of the worker process (and its process tree)
sampled meanwhile. One second later the counter is read again (lost/duplicate check).
Latency: a warmed worker, a paced producer at 500 tasks/s for 20 s; each task records its
own start minus its submit timestamp. Bulk: submit_many vs addBulk, no worker running.
Writes bench/results/peers.json (+ peers.png).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from bench.common import write
from bench.peers.stats import last_json, percentile, schedule
from bench.peers.systems import APPS, System, compile_sources, systems
from kubeq.redis_server import RedisServer

DONE, LAT = "bench:done", "bench:lat"


def _env(s: System, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(APPS),
        "BENCH_REDIS_URL": url,
        "KUBEQ_REDIS_URL": url,
        **s.env,
    }


def _argv(argv: tuple[str, ...], url: str) -> list[str]:
    return [a.replace("{url}", url) for a in argv]


def produce(s: System, url: str, *args: object) -> dict[str, Any]:
    out = subprocess.run(
        [*_argv(s.producer, url), *map(str, args)],
        cwd=APPS,
        env=_env(s, url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{s.name} producer failed: {out.stderr[-2000:]}")
    return last_json(out.stdout)


def start_worker(s: System, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            _argv(s.worker, url),
            cwd=APPS,
            env=_env(s, url),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(p: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the worker's own process group, SIGKILL after 15 s."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    except ProcessLookupError:
        pass


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for f in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in f.read_text().split()]
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def drain(s: System, url: str, n: int, timeout: float, logdir: Path) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    r.flushall()
    enq = produce(s, url, "enqueue", n)
    cpu0 = _redis_cpu(r)
    t0 = time.perf_counter()
    p = start_worker(s, url, logdir / f"{s.name}.log")
    peak_main = peak_tree = 0.0
    first = None
    done = 0
    while True:
        done, t = int(r.get(DONE) or 0), time.perf_counter() - t0
        if done and first is None:
            first = t
        if done >= n or t > timeout or p.poll() is not None:
            break
        peak_main = max(peak_main, _rss_mb(p.pid))
        peak_tree = max(peak_tree, sum(_rss_mb(q) for q in _tree(p.pid)))
        time.sleep(0.01)
    cpu = _redis_cpu(r) - cpu0
    worker_cpu = sum(_cpu_s(q) for q in _tree(p.pid))
    time.sleep(1.0)
    final = int(r.get(DONE) or 0)
    stop(p)
    return {
        "kind": "drain",
        "system": s.name,
        "n": n,
        "done": done,
        "final": final,
        "wall_s": t,
        "rate": done / t,
        "startup_s": first,
        "rss_main_mb": peak_main,
        "rss_tree_mb": peak_tree,
        "redis_cpu_s_per_1000": cpu / max(done, 1) * 1000,
        "worker_cpu_s_per_1000": worker_cpu / max(done, 1) * 1000,  # startup included
        "enqueue": enq,
        "timed_out": done < n,
    }


def latency(s: System, url: str, rate: float, secs: float, logdir: Path) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    r.flushall()
    p = start_worker(s, url, logdir / f"{s.name}-latency.log")
    try:
        produce(s, url, "enqueue", 20)  # warm-up: the worker is up and has run tasks
        deadline = time.monotonic() + 60
        while int(r.get(DONE) or 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        prod = produce(s, url, "produce", rate, secs)
        at_end, t_end = r.llen(LAT), time.monotonic()
        while r.llen(LAT) < prod["sent"] and time.monotonic() - t_end < 30:
            time.sleep(0.1)
        vals = [float(v) for v in r.lrange(LAT, 0, -1)]
    finally:
        stop(p)
    return {
        "kind": "latency",
        "system": s.name,
        "offered": rate,
        "sent": prod["sent"],
        "received": len(vals),
        "done_at_producer_end": at_end,
        "p50": percentile(vals, 0.50),
        "p99": percentile(vals, 0.99),
        "max": max(vals) if vals else None,
    }


def bulk(s: System, url: str, n: int) -> dict[str, Any]:
    redis.Redis.from_url(url).flushall()
    return {"kind": "bulk", "system": s.name, **produce(s, url, "enqueue", n, "bulk")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: small n, short runs")
    ap.add_argument(
        "--systems",
        default="kubeq,kubeq-stock-gc,floor-python,floor-node,bullmq,taskiq,dramatiq,celery,rq,arq",
    )
    ap.add_argument("--latency-systems", default="kubeq,bullmq,taskiq,dramatiq")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--secs", type=float, default=20)
    ap.add_argument("--out", default="peers")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.secs, a.reps = 1000, 2, 1
    table = systems()
    names = [x for x in a.systems.split(",") if x]
    unknown = [x for x in names if x not in table]
    if unknown:
        ap.error(f"unknown systems {unknown}; known: {sorted(table)}")
    # Slow peers (~200 tasks/s) would take minutes per rep: cut their drains at 60 s.
    timeout = 30 if a.quick else 60
    logdir = Path(os.environ.get("BENCH_LOGS", "/tmp/kubeq-bench-peers"))
    logdir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    compile_sources()
    server = RedisServer().start()
    try:
        url = server.url
        for rep, name in schedule(names, a.reps):
            rec = drain(table[name], url, a.n, timeout, logdir) | {"rep": rep}
            print(
                f"drain {name} rep {rep}: {rec['rate']:,.0f}/s rss {rec['rss_main_mb']:.0f} MB",
                flush=True,
            )
            records.append(rec)
        for name in [x for x in a.latency_systems.split(",") if x in names]:
            rec = latency(table[name], url, a.rate, a.secs, logdir)
            print(f"latency {name}: p50 {rec['p50']} p99 {rec['p99']} ms", flush=True)
            records.append(rec)
        for _, name in schedule([x for x in names if table[x].bulk], a.reps):
            rec = bulk(table[name], url, a.n)
            print(f"bulk {name}: {rec['rate']:,.0f}/s", flush=True)
            records.append(rec)
    finally:
        server.stop()
    params = {"n": a.n, "reps": a.reps, "rate": a.rate, "secs": a.secs, "quick": a.quick}
    # The Python bodies' client options (apps/shared.py): "default", or "none" (ablation).
    params["body_timeout"] = os.environ.get("BENCH_BODY_TIMEOUT", "default")
    path = write(a.out, {"params": params, "records": records})
    print(f"wrote {path}")
    from bench.peers.report import markdown

    print(markdown(json.loads(path.read_text())))
    try:
        from bench.peers.plot import plot

        print(f"wrote {plot(path)}")
    except ImportError:
        print("matplotlib missing: no plot (pip install 'kubeq[plot]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
