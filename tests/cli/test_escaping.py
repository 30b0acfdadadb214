"""Data from Redis never controls the terminal: control characters, escape sequences, bidi
overrides and rich markup in task records, errors, worker ids and counter names are shown
escaped, one record per line, by every human-facing command; and by the worker's log."""

from __future__ import annotations

import json
import logging
import random

from tests.cli.conftest import Kubeq

import redis
from kubeq.protocol import Client, QueueKeys, TaskError, WorkerInfo
from kubeq.text import printable
from kubeq.worker.logs import TextFormatter

ESC = "\x1b"
HOSTILE = f"x\nFORGED line {ESC}[31mred{ESC}[0m \u202eevil [red]markup[/red] \x07"


def forge(redis_url: str, queue_client: Client) -> str:
    """A task whose record a foreign writer rewrote, dead-lettered with a hostile error."""
    keys = QueueKeys("default", "default")
    task_id = queue_client.submit("ok", {"n": 1})
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    record = json.loads(r.hget(keys.tasks, task_id))
    record["type"] = HOSTILE
    r.hset(keys.tasks, task_id, json.dumps(record))
    r.hincrby(keys.counters, HOSTILE, 1)
    r.close()
    (claimed,) = queue_client.claim(f"w{HOSTILE}", 1).tasks
    error = TaskError(type=HOSTILE, message=HOSTILE, traceback=f"Traceback\n  {HOSTILE}\n")
    now = queue_client.clock()
    settlement = queue_client.ops.failure(claimed, error, now, random.Random(), permanent=True)
    assert queue_client.settle([settlement]) == [True]
    queue_client.heartbeat(f"w{HOSTILE}", [], WorkerInfo(id=f"w{HOSTILE}", pod=HOSTILE))
    return task_id


def assert_inert(text: str) -> None:
    assert ESC not in text
    assert "\u202e" not in text
    assert "\x07" not in text
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    # Shown as written, not interpreted (rich drops tags it interprets; a table may wrap).
    assert "[red]" in text or "[/red]" in text


def test_every_human_facing_command_escapes_redis_data(
    kubeq: Kubeq, redis_url: str, queue_client: Client
) -> None:
    task_id = forge(redis_url, queue_client)
    status = kubeq("status", task_id).stdout
    assert_inert(status)
    assert "\\x1b[31mred" in status  # escaped, visibly
    assert "Traceback\n" in status  # a traceback keeps its own lines
    for args in (("dlq", "list"), ("workers",), ("stats",)):
        assert_inert(kubeq(*args).stdout)
    result = kubeq("result", task_id, code=1)
    assert_inert(result.stdout + result.stderr)


def test_the_worker_text_log_keeps_one_record_per_line() -> None:
    record = logging.LogRecord(
        "kubeq.task", logging.INFO, __file__, 1, "task %s failed: %s", ("t1", HOSTILE), None
    )
    record.__dict__.update(queue="ns/q", task_id="t1", type=HOSTILE, attempt=1)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line
    assert ESC not in line
    assert "type=x\\x0aFORGED" in line
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    text = TextFormatter("%(message)s").format(record)
    _, _, traceback = text.partition("\n")
    assert ESC not in text
    assert traceback.startswith("Traceback")
    assert not any(line.startswith("FORGED") for line in text.splitlines())


def test_printable() -> None:
    assert printable("plain text") == "plain text"
    assert printable("a\nb") == "a\\x0ab"
    assert printable("a\nb", newlines=True) == "a\n    b"
    assert printable("\u202e\u2028\x7f") == "\\u202e\\u2028\\x7f"
    assert printable("é 日本") == "é 日本"
