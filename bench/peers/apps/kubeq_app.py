"""kubeq: worker `python -m kubeq.worker` with KUBEQ_APP=kubeq_app:app (project venv)."""

import os

import redis.asyncio as aredis
from shared import BODY_CLIENT, DONE, URL, abody, body_client, command, paced, timed_enqueue

from kubeq import App, Client

app = App("bench")
_r = None


def _redis():
    if URL.startswith("redis+cluster://"):  # the scaling run on a Redis Cluster (drains)
        # The body's one round trip goes straight to the node holding its counter: redis-py's
        # async RedisCluster, shared by concurrent calls, fails and re-sends some commands
        # (README, Scaling), so a body through it measured that client, not the queue.
        import redis

        cluster = redis.RedisCluster.from_url(URL.replace("redis+cluster://", "redis://", 1))
        node = cluster.get_node_from_key(DONE)
        cluster.close()
        return aredis.Redis(host=node.host, port=node.port, **BODY_CLIENT)
    return body_client(aredis)


@app.task("noop")
async def noop(payload, ctx):
    global _r
    if _r is None:
        _r = _redis()
    await abody(_r, (payload or {}).get("ts"))


if __name__ == "__main__":
    cmd, args = command()
    c = Client.from_url(URL, os.environ.get("KUBEQ_QUEUE", "bench"))
    if cmd == "enqueue":
        if args[1:] == ["bulk"]:  # submit_many in chunks of 1000

            def many(n):
                # payload {} as BullMQ's addBulk sends data {}: the same bytes to encode
                for i in range(0, n, 1000):
                    c.submit_many([{"type": "noop", "payload": {}}] * min(1000, n - i))

            timed_enqueue(int(args[0]), many, "submit_many, chunks of 1000")
        else:
            timed_enqueue(int(args[0]), lambda n: [c.submit("noop") for _ in range(n)], "submit")
    else:
        paced(float(args[0]), float(args[1]), lambda ts: c.submit("noop", {"ts": ts}))
