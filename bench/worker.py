"""One worker process: drain rate, submit→start latency at a fixed offered rate, peak RSS.

Producer, worker and redis-server share this machine. The worker is a real
`python -m kubeq.worker` process running kubeq.examples.bench:app.

1. Drain: 20,000 no-op tasks are submitted first; the worker then starts and drains them.
   Rate = tasks / (last finished_at - first started_at), from the tasks' own records.
2. Latency: a producer submits one task at a time at a fixed rate (500/s by default) for
   20 s while the worker idles between tasks; latency = started_at - created_at per task
   (millisecond timestamps from the tasks' records: the resolution is 1 ms).
3. Peak RSS: the worker's VmHWM from /proc just before it is stopped.

Run: `python -m bench.worker` (about a minute). JSON and a PNG under bench/results/.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, write
from kubeq.protocol import Client, QueueConfig
from kubeq.redis_server import RedisServer


def start_worker(url: str, queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KUBEQ_REDIS_URL": url,
        "KUBEQ_QUEUE": queue,
        "KUBEQ_APP": "kubeq.examples.bench:app",
        "KUBEQ_CONCURRENCY": str(concurrency),
        "KUBEQ_METRICS_PORT": "0",
        "KUBEQ_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "kubeq.worker"], env=env)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def wait_done(client: Client, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.stats().counters.get("completed", 0) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.stats().counters} after {timeout}s")
        time.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)


def drain(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    client = Client.from_url(url, "drain", config=QueueConfig(name="drain"))
    client.submit_many([{"type": "noop"}] * tasks)
    worker = start_worker(url, "drain", concurrency)
    wait_done(client, tasks, 120)
    rss = peak_rss_mb(worker.pid)
    stop(worker)
    done = list(client.finished(page_size=5000))
    first = min(t.started_at or 0 for t in done)
    last = max(t.finished_at or 0 for t in done)
    client.close()
    return {
        "tasks": tasks,
        "concurrency": concurrency,
        "seconds": (last - first) / 1000,
        "tasks_per_s": tasks / max((last - first) / 1000, 1e-3),
        "peak_rss_mb": rss,
    }


def latency(url: str, rate: float, seconds: float, concurrency: int) -> dict[str, Any]:
    client = Client.from_url(url, "latency", config=QueueConfig(name="latency"))
    worker = start_worker(url, "latency", concurrency)
    time.sleep(1.5)  # let it connect and go idle: we measure an idle worker's wake-up
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        target = start + i / rate
        while (delay := target - time.perf_counter()) > 0:
            time.sleep(delay)
        client.submit("noop")
    wait_done(client, n, 60)
    rss = peak_rss_mb(worker.pid)
    stop(worker)
    lat = [(t.started_at or 0) - t.created_at for t in client.finished(page_size=5000)]
    client.close()
    return {
        "offered_per_s": rate,
        "tasks": n,
        "concurrency": concurrency,
        "submit_to_start_ms": {
            "p50": pct(lat, 0.5),
            "p95": pct(lat, 0.95),
            "p99": pct(lat, 0.99),
            "max": max(lat),
        },
        "peak_rss_mb": rss,
        "latencies_ms": sorted(lat),
    }


def plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = data["latency"]["latencies_ms"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(lat, [i / len(lat) for i in range(len(lat))])
    ax.set(
        xlabel="submit → start (ms)",
        ylabel="fraction of tasks",
        title=f"one worker at {data['latency']['offered_per_s']:.0f} tasks/s offered "
        f"(drain: {data['drain']['tasks_per_s']:,.0f} tasks/s)",
    )
    ax.set_xlim(0, max(10, data["latency"]["submit_to_start_ms"]["p99"] * 3))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "worker.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with RedisServer() as server:
        d = drain(server.url, args.tasks, args.concurrency)
        print(f"drain: {d['tasks_per_s']:,.0f} tasks/s, peak RSS {d['peak_rss_mb']:.1f} MB")
        lat = latency(server.url, args.rate, args.seconds, args.concurrency)
        s = lat["submit_to_start_ms"]
        print(
            f"latency at {args.rate:.0f}/s: p50 {s['p50']} ms, p95 {s['p95']} ms, "
            f"p99 {s['p99']} ms, max {s['max']} ms; peak RSS {lat['peak_rss_mb']:.1f} MB"
        )
    data = {"drain": d, "latency": lat}
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(data)
    path = write("worker", data)
    print(f"wrote {path} and {RESULTS / 'worker.png'}")


if __name__ == "__main__":
    main()
