"""Out-of-range numbers are refused with clear errors before anything is enqueued, and a
record that holds one anyway (a foreign or older writer) does not crash `kubeq status`."""

from __future__ import annotations

import json

import pytest
from tests.cli.conftest import Kubeq

import redis
from kubeq.protocol import Client, InvalidTask, QueueKeys


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--delay", "1e300"), "delay must be a finite number of seconds"),
        (("--delay", "inf"), "delay must be a finite number of seconds"),
        (("--delay", "nan"), "delay must be a finite number of seconds"),
        (("--max-attempts", str(10**30)), "max_attempts must be an integer from 1 to 1000"),
        (("--max-attempts", "1001"), "max_attempts must be an integer from 1 to 1000"),
        (("--eta", "9999-12-31T00:00:00"), "eta_ms must be"),
    ],
)
def test_submit_refuses_out_of_range_numbers(
    kubeq: Kubeq, queue_client: Client, args: tuple[str, ...], message: str
) -> None:
    result = kubeq("submit", "t", "{}", *args, code=2)
    assert result.stderr.startswith(f"error: {message}")
    assert queue_client.stats().backlog == 0
    assert queue_client.stats().delayed == 0


def test_the_client_refuses_them_too(queue_client: Client) -> None:
    with pytest.raises(InvalidTask, match="max_attempts"):
        queue_client.submit("t", max_attempts=10**30)
    with pytest.raises(InvalidTask, match="max_attempts"):
        queue_client.submit("t", max_attempts=True)
    with pytest.raises(InvalidTask, match="delay"):
        queue_client.submit("t", delay=1e300)


def test_status_shows_a_huge_time_instead_of_crashing(
    kubeq: Kubeq, redis_url: str, queue_client: Client
) -> None:
    task_id = queue_client.submit("t", delay=60)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = QueueKeys("default", "default")
    record = json.loads(r.hget(keys.tasks, task_id))
    record["created_at"] = 10**300
    r.hset(keys.tasks, task_id, json.dumps(record))
    r.zadd(keys.delayed(record["priority"]), {task_id: 1e300})  # as --delay 1e300 did
    r.close()
    out = kubeq("status", task_id).stdout
    assert "out of range" in out
