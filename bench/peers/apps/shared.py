"""What every Python peer app shares: the Redis URL, the task body, the producers.

Stdlib + redis-py only, so it imports in the bench-only venv and in the project's.
The task body makes exactly one Redis round trip: INCR the drain counter, or (a latency
task, which carries its submit time) RPUSH its submit->start delay in ms.
"""

import asyncio
import json
import os
import sys
import time

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")
DONE, LAT = "bench:done", "bench:lat"
# The async bodies' client options. By default none: redis-py's own defaults, as a user
# writes `Redis.from_url(url)` (redis-py 8: a 5 s socket timeout, so every command runs
# under asyncio.wait_for / asyncio.timeout). BENCH_BODY_TIMEOUT=none is an ablation: no
# per-command timeout, as ioredis (BullMQ's body) has by default.
BODY_CLIENT = {"socket_timeout": None} if os.environ.get("BENCH_BODY_TIMEOUT") == "none" else {}


def body_client(module):
    """The async task body's Redis client (`module`: redis.asyncio), options as above."""
    return module.Redis.from_url(URL, **BODY_CLIENT)


def report(**fields):
    print(json.dumps(fields), flush=True)


def body(r, ts):
    if ts is None:
        r.incr(DONE)
    else:
        r.rpush(LAT, (time.time() - ts) * 1000.0)


async def abody(r, ts):
    if ts is None:
        await r.incr(DONE)
    else:
        await r.rpush(LAT, (time.time() - ts) * 1000.0)


def timed_enqueue(n, submit, api):
    t = time.perf_counter()
    submit(n)
    secs = time.perf_counter() - t
    report(n=n, secs=secs, rate=n / secs, api=api)


def paced(rate, secs, submit):
    """Task i goes out at t0 + i/rate carrying time.time() (its submit timestamp)."""
    n, t0 = int(rate * secs), time.perf_counter()
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        submit(time.time())
    report(sent=n, secs=time.perf_counter() - t0)


async def atimed_enqueue(n, submit, api):
    t = time.perf_counter()
    await submit(n)
    secs = time.perf_counter() - t
    report(n=n, secs=secs, rate=n / secs, api=api)


async def apaced(rate, secs, submit):
    n, t0 = int(rate * secs), time.perf_counter()
    for i in range(n):
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        await submit(time.time())
    report(sent=n, secs=time.perf_counter() - t0)


def command():
    """argv: enqueue N [bulk] | produce RATE SECS"""
    a = sys.argv[1:]
    return a[0], a[1:]
