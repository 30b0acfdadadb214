"""Dramatiq (RedisBroker): worker `dramatiq dramatiq_app --processes 1` (8 threads)."""

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from shared import URL, body, command, paced, timed_enqueue

import redis

dramatiq.set_broker(RedisBroker(url=URL))
_r = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(ts=None):
    body(_r, ts)


if __name__ == "__main__":
    cmd, args = command()
    if cmd == "enqueue":
        timed_enqueue(int(args[0]), lambda n: [noop.send() for _ in range(n)], "send")
    else:
        paced(float(args[0]), float(args[1]), lambda ts: noop.send(ts))
