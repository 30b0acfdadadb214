"""taskiq + taskiq-redis ListQueueBroker: worker `taskiq worker taskiq_app:broker --workers 1`."""

import asyncio

import redis.asyncio as aredis
from shared import URL, abody, apaced, atimed_enqueue, body_client, command
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(URL)
_r = None


@broker.task(task_name="noop")
async def noop(ts=None):
    global _r
    if _r is None:
        _r = body_client(aredis)
    await abody(_r, ts)


async def main():
    await broker.startup()
    cmd, args = command()
    if cmd == "enqueue":

        async def each(n):
            for _ in range(n):
                await noop.kiq()

        await atimed_enqueue(int(args[0]), each, "kiq")
    else:
        await apaced(float(args[0]), float(args[1]), lambda ts: noop.kiq(ts))
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
