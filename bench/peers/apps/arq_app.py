"""arq: worker `arq arq_app.WorkerSettings` (defaults: max_jobs 10, poll 0.5 s)."""

import asyncio

from arq import create_pool
from arq.connections import RedisSettings
from shared import URL, abody, apaced, atimed_enqueue, command

SETTINGS = RedisSettings.from_dsn(URL)


async def noop(ctx, ts=None):
    await abody(ctx["redis"], ts)


class WorkerSettings:
    functions = [noop]
    redis_settings = SETTINGS


async def main():
    pool = await create_pool(SETTINGS)
    cmd, args = command()
    if cmd == "enqueue":

        async def each(n):
            for _ in range(n):
                await pool.enqueue_job("noop")

        await atimed_enqueue(int(args[0]), each, "enqueue_job")
    else:
        await apaced(float(args[0]), float(args[1]), lambda ts: pool.enqueue_job("noop", ts))
    await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main())
