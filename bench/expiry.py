"""Expiry keeps pace: a sustained stream of completions with a short result TTL.

One Python process submits, claims and completes tasks in batches as fast as it can
against a private redis-server, with `results.ttlSeconds` short, and no reaper running:
every settle prunes as many expired results as it adds (plus a few), so the results hash,
and Redis's used memory, stay flat once the first TTL has passed. Before issue 9 the
results hash grew by every completion until a reaper round (1,000 per ~15 s) caught up,
which it never did above ~67 completions/s.

Run: `python -m bench.expiry` (writes bench/results/expiry.json).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import write
from kubeq.protocol import Client, QueueConfig
from kubeq.redis_server import RedisServer


def run(seconds: float, ttl: int, batch: int) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    done = 0
    with RedisServer() as server:
        cfg = QueueConfig(name="expiry", result_ttl_seconds=ttl)
        with Client.from_url(server.url, "expiry", config=cfg) as client:
            items = [{"type": "t", "payload": {"v": i}} for i in range(batch)]
            start = time.perf_counter()
            next_sample = start
            while (now := time.perf_counter()) - start < seconds:
                client.submit_many(items)
                claimed = client.claim("bench", batch).tasks
                client.settle([client.ops.completion(c, {"ok": True}, 0) for c in claimed])
                done += len(claimed)
                if now >= next_sample:
                    memory = client.redis.info("memory")
                    samples.append(
                        {
                            "t": round(now - start, 2),
                            "completed": done,
                            "results": client.redis.hlen(client.keys.results),
                            "used_memory": int(memory["used_memory"]),
                        }
                    )
                    next_sample += 1.0
            elapsed = time.perf_counter() - start
    warm = [s for s in samples if s["t"] >= 2 * ttl]
    rate = done / elapsed
    return {
        "seconds": seconds,
        "result_ttl_seconds": ttl,
        "batch": batch,
        "completed": done,
        "tasks_per_s": rate,
        "samples": samples,
        "after_warmup": {
            "results_min": min(s["results"] for s in warm),
            "results_max": max(s["results"] for s in warm),
            "used_memory_min": min(s["used_memory"] for s in warm),
            "used_memory_max": max(s["used_memory"] for s in warm),
            "used_memory_median": statistics.median(s["used_memory"] for s in warm),
            # What rate x TTL predicts the hash holds when expiry keeps pace.
            "results_expected": round(rate * ttl),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    data = run(args.seconds, args.ttl, args.batch)
    path = write("expiry", data)
    w = data["after_warmup"]
    print(
        f"{data['tasks_per_s']:,.0f} tasks/s for {args.seconds:g} s, result TTL {args.ttl} s: "
        f"results {w['results_min']:,}-{w['results_max']:,} "
        f"(rate x TTL = {w['results_expected']:,}), used memory "
        f"{w['used_memory_min'] / 2**20:.1f}-{w['used_memory_max'] / 2**20:.1f} MiB; wrote {path}"
    )


if __name__ == "__main__":
    main()
