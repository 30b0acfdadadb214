"""kubeq.testing: handlers in process, no Redis, the worker's own semantics; and the
documented pytest fixture for integration tests."""

from __future__ import annotations

import kubeq_test_apps
import pytest

from kubeq.protocol import Backoff, Client, PayloadNotJSON, QueueConfig
from kubeq.testing import _kubeq_redis_server, arun_task, kubeq_redis_url, run_task

# A project's conftest.py says `pytest_plugins = ["kubeq.testing"]`; pytest allows that only
# in the root conftest, so this test module imports the fixtures instead.
_ = (_kubeq_redis_server, kubeq_redis_url)
app = kubeq_test_apps.app
FAST = QueueConfig(name="t", max_attempts=3, backoff=Backoff(base_seconds=1, max_seconds=4))


def test_success_validation_and_result() -> None:
    r = run_task(app, "validated", {"sensor": "a", "value": 2})
    assert (r.status, r.result, r.attempts) == ("completed", {"sensor": "a", "value": 4.0}, 1)
    bad = run_task(app, "validated", {"sensor": "a"})
    assert (bad.status, bad.reason, bad.attempts) == ("dead", "invalid_payload", 1)
    model = run_task(app, "echo", kubeq_test_apps.Reading(sensor="b", value=1))
    assert model.result == {"sensor": "b", "value": 1.0}  # pydantic payloads accepted


def test_retries_follow_the_policy_and_delays_are_reported_not_slept() -> None:
    r = run_task(app, "flaky", {"succeed_on": 3}, config=FAST)
    assert (r.status, r.result, r.attempts) == ("completed", 3, 3)
    assert len(r.delays) == 2
    assert all(0 <= d <= 4 for d in r.delays)
    dead = run_task(app, "always_fails", config=FAST)
    assert (dead.status, dead.reason, dead.attempts) == ("dead", "attempts_exhausted", 3)
    assert [e.type for e in dead.errors] == ["ValueError"] * 3
    assert run_task(app, "permanent").reason == "permanent_error"
    assert run_task(app, "retry_then_ok").delays == [0.01]  # Retry(delay=0.01)
    assert run_task(app, "capped", config=FAST).attempts == 1  # the handler's max_attempts
    assert run_task(app, "always_fails", max_attempts=1).attempts == 1  # per-task override


def test_timeouts_and_hostile_handlers_as_in_the_worker() -> None:
    t = run_task(app, "sync_times_out", max_attempts=1)
    assert (t.status, t.reason) == ("dead", "timeout")
    assert run_task(app, "raises_cancelled", max_attempts=1).error.type == "CancelledError"  # type: ignore[union-attr]
    assert run_task(app, "not_json").reason == "result_not_json"
    with pytest.raises(PayloadNotJSON):
        run_task(app, "echo", {"x": object()})  # refused as a submit would refuse it


async def test_arun_task_runs_on_the_current_loop() -> None:
    r = await arun_task(app, "sleep", {"seconds": 0.01})
    assert r.result == {"slept": 0.01, "attempt": 1}


def test_the_redis_fixture_is_a_private_server(kubeq_redis_url: str) -> None:
    assert not kubeq_redis_url.endswith(":6379/0")
    with Client.from_url(kubeq_redis_url, "fx") as c:
        c.ping()
        assert c.status(c.submit("echo", 1)).payload == 1
