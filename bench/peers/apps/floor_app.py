"""No queue: the drain's task body alone, as fast as one Python process can run it.

The ceiling for any Python worker whose tasks run this body: the same client (redis.asyncio
with its defaults, as kubeq_app.py and taskiq_app.py build it), the same event loop as
kubeq[fast] (uvloop when importable), the same concurrency as the kubeq row (64). What a
queue's worker costs beyond this row is the queue's own work: claiming, running,
settling, its metrics.

  python floor_app.py enqueue N   # records N (nothing is queued)
  python floor_app.py worker      # N INCRs from 64 coroutines, then idles until stopped
"""

import asyncio
import os
import time

import redis.asyncio as aredis
from shared import URL, abody, body_client, command, report

import redis

TARGET = "bench:floor:n"
CONCURRENCY = int(os.environ.get("FLOOR_CONCURRENCY", "64"))


async def run() -> None:
    r = body_client(aredis)
    n = int(await r.get(TARGET) or 0)
    left = [n]

    async def one() -> None:
        while left[0] > 0:
            left[0] -= 1  # claimed before the await: exactly n bodies run
            await abody(r, None)

    await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    await asyncio.Event().wait()  # a worker runs until stopped, as the others do


def main() -> None:
    cmd, args = command()
    if cmd == "enqueue":
        t = time.perf_counter()
        redis.Redis.from_url(URL).set(TARGET, int(args[0]))
        secs = time.perf_counter() - t
        report(n=int(args[0]), secs=secs, rate=int(args[0]) / secs, api="none: nothing queued")
        return
    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
