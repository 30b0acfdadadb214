"""kubeq's drain with 1, 2 and 4 worker processes, on one Redis and on a 3-node Redis
Cluster holding several queues; tasks/s and Redis CPU per 1,000 tasks (INFO cpu, summed
over the nodes), so a reader sees where the next bottleneck is.

  python -m bench.peers.scaling [--quick]      -> bench/results/scaling.json

Every worker process serves every queue (KUBEQ_QUEUE=q0,q1,...); wall time from starting
the workers until the body counter reaches n.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
from bench.common import write
from bench.peers.run import _env, _redis_cpu, _rss_mb, stop
from bench.peers.systems import APPS, compile_sources, systems
from kubeq.redis_server import RedisServer, free_port

DONE = "bench:done"


def start_cluster(stack: ExitStack) -> tuple[str, list[redis.Redis]]:
    """Three masters, no replicas; the URL kubeq takes and a client per node."""
    nodes = []
    for _ in range(3):
        node = RedisServer(
            port=free_port(max_port=55535),  # cluster bus = port + 10000
            extra=("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
        )
        node.extra = (*node.extra, "--cluster-config-file", str(node.directory / "nodes.conf"))
        stack.callback(node.close)
        nodes.append(node.start())
    cli = shutil.which("redis-cli") or "redis-cli"
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    clients = [redis.Redis(port=n.port, decode_responses=True) for n in nodes]
    deadline = time.monotonic() + 30
    while any(c.cluster("info")["cluster_state"] != "ok" for c in clients):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not converge")
        time.sleep(0.1)
    return f"redis+cluster://127.0.0.1:{nodes[0].port}/0", clients


def counter(url: str) -> redis.Redis | redis.RedisCluster:
    """One client for polling the counter (a new cluster client per poll would itself
    load the cluster with slot discovery)."""
    if url.startswith("redis+cluster://"):
        return redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://", 1))
    return redis.Redis.from_url(url)


def drain(
    url: str, nodes: list[redis.Redis], queues: list[str], workers: int, n: int
) -> dict[str, Any]:
    kubeq = systems()["kubeq"]
    for c in nodes:
        c.flushall()
    per = n // len(queues)
    for q in queues:
        env = _env(kubeq, url) | {"KUBEQ_QUEUE": q}
        subprocess.run(
            [*kubeq.producer, "enqueue", str(per), "bulk"], cwd=APPS, env=env, check=True,
            capture_output=True,
        )  # fmt: skip
    total = per * len(queues)
    cpu0 = sum(_redis_cpu(c) for c in nodes)
    env = _env(kubeq, url) | {"KUBEQ_QUEUE": ",".join(queues)}
    t0 = time.perf_counter()
    quiet = subprocess.DEVNULL
    procs = [
        subprocess.Popen(
            kubeq.worker, cwd=APPS, env=env, stdout=quiet, stderr=quiet, start_new_session=True
        )
        for _ in range(workers)
    ]
    peak = 0.0
    done = 0
    poll = counter(url)
    try:
        while True:
            done, t = int(poll.get(DONE) or 0), time.perf_counter() - t0
            if done >= total or t > 120:
                break
            peak = max(peak, max(_rss_mb(p.pid) for p in procs))
            time.sleep(0.02)
        cpu = sum(_redis_cpu(c) for c in nodes) - cpu0
    finally:
        for p in procs:
            stop(p)
        poll.close()
    return {
        "redis": "cluster-3" if url.startswith("redis+cluster://") else "single",
        "queues": len(queues),
        "workers": workers,
        "n": total,
        "done": done,
        "wall_s": t,
        "rate": done / t,
        "redis_cpu_s_per_1000": cpu / max(done, 1) * 1000,
        "rss_max_worker_mb": peak,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--queues", type=int, default=4, help="queues on the cluster")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.reps = 2000, 1
    records = []
    compile_sources()
    with ExitStack() as stack:
        single = RedisServer()
        stack.callback(single.close)
        single.start()
        s_nodes = [redis.Redis(port=single.port, decode_responses=True)]
        c_url, c_nodes = start_cluster(stack)
        cluster_queues = [f"q{i}" for i in range(a.queues)]
        for rep in range(a.reps):
            for workers in (1, 2, 4):
                for url, nodes, queues in (
                    (single.url, s_nodes, ["bench"]),
                    (c_url, c_nodes, cluster_queues),
                ):
                    rec = drain(url, nodes, queues, workers, a.n) | {"rep": rep}
                    print(
                        f"{rec['redis']:>9} {workers} workers: {rec['rate']:,.0f}/s, Redis "
                        f"{rec['redis_cpu_s_per_1000'] * 1000:.0f} ms CPU per 1000 tasks",
                        flush=True,
                    )
                    records.append(rec)
    path: Path = write("scaling", {"params": vars(a), "records": records})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
