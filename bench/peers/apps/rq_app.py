"""RQ: worker `rq worker -w rq.worker.SimpleWorker bench` (no fork per job)."""

from rq import Queue
from shared import URL, body, command, paced, timed_enqueue

import redis

_r = redis.Redis.from_url(URL)


def noop(ts=None):
    body(_r, ts)


if __name__ == "__main__":
    import rq_app  # enqueue by module path, so the worker imports this same function

    q = Queue("bench", connection=_r)
    cmd, args = command()
    if cmd == "enqueue":
        timed_enqueue(int(args[0]), lambda n: [q.enqueue(rq_app.noop) for _ in range(n)], "enqueue")
    else:
        paced(float(args[0]), float(args[1]), lambda ts: q.enqueue(rq_app.noop, ts))
