"""Celery: worker `celery -A celery_app worker -P solo` (its fastest single process here)."""

from celery import Celery
from shared import URL, body, command, paced, timed_enqueue

import redis

app = Celery("bench", broker=URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
_r = redis.Redis.from_url(URL)


@app.task(name="noop")
def noop(ts=None):
    body(_r, ts)


if __name__ == "__main__":
    cmd, args = command()
    if cmd == "enqueue":
        timed_enqueue(int(args[0]), lambda n: [noop.delay() for _ in range(n)], "delay")
    else:
        paced(float(args[0]), float(args[1]), lambda ts: noop.delay(ts))
