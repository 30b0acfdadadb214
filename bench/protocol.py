"""Protocol throughput: submit_many and claim+ack at batch sizes 1, 10, 100 (and 1000).

One Python process drives a private local redis-server (same machine). Each figure is the
median of several runs; payloads are small JSON objects. Run: `python -m bench.protocol`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import RESULTS, write
from kubeq.protocol import Client, QueueConfig
from kubeq.redis_server import RedisServer

BATCHES = (1, 10, 100, 1000)


def _fresh(url: str, name: str) -> Client:
    client = Client.from_url(url, name, config=QueueConfig(name=name))
    client.redis.flushall()
    return client


def submit_rate(url: str, batch: int, total: int) -> float:
    client = _fresh(url, "bench-submit")
    items = [
        {"type": "telemetry.ingest", "payload": {"device": i % 500, "v": i}} for i in range(total)
    ]
    start = time.perf_counter()
    for i in range(0, total, batch):
        client.submit_many(items[i : i + batch], chunk_size=batch)
    elapsed = time.perf_counter() - start
    assert client.stats().ready == total
    client.close()
    return total / elapsed


def claim_ack_rate(url: str, batch: int, total: int) -> float:
    client = _fresh(url, "bench-claim")
    client.submit_many(
        [{"type": "telemetry.ingest", "payload": {"device": i % 500, "v": i}} for i in range(total)]
    )
    done = 0
    start = time.perf_counter()
    while True:
        claim = client.claim("bench-worker", batch)
        if not claim.tasks:
            break
        now = client.clock()
        results = client.settle([client.ops.completion(c, None, now) for c in claim.tasks])
        done += sum(results)
    elapsed = time.perf_counter() - start
    assert done == total, (done, total)
    client.close()
    return total / elapsed


def run(runs: int, scale: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs, "submit_many": {}, "claim_ack": {}}
    with RedisServer() as server:
        for batch in BATCHES:
            total = min(scale, max(2000, batch * 200))
            subs = [submit_rate(server.url, batch, total) for _ in range(runs)]
            acks = [claim_ack_rate(server.url, batch, total) for _ in range(runs)]
            out["submit_many"][str(batch)] = {
                "tasks": total,
                "tasks_per_s": statistics.median(subs),
                "all_runs": subs,
            }
            out["claim_ack"][str(batch)] = {
                "tasks": total,
                "tasks_per_s": statistics.median(acks),
                "all_runs": acks,
            }
            print(
                f"batch {batch:>5}: submit_many {statistics.median(subs):>9,.0f}/s   "
                f"claim+ack {statistics.median(acks):>9,.0f}/s"
            )
    return out


def plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("submit_many", "submit_many"), ("claim_ack", "claim + ack")):
        xs = [int(b) for b in data[key]]
        ax.plot(xs, [data[key][str(b)]["tasks_per_s"] for b in xs], marker="o", label=label)
    ax.set(
        xscale="log",
        xlabel="batch size (tasks per round trip)",
        ylabel="tasks/s",
        title="kubeq protocol throughput, one Python process, local redis-server",
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "protocol.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=int, default=100_000, help="max tasks per run")
    args = parser.parse_args()
    data = run(args.runs, args.scale)
    path = write("protocol", data)
    plot(data)
    print(f"wrote {path} and {RESULTS / 'protocol.png'}")


if __name__ == "__main__":
    main()
