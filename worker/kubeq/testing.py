"""Testing handlers: run them in process, without Redis, with the worker's own semantics.

    from kubeq.testing import run_task

    def test_resize_rejects_a_zero_width():
        r = run_task(app, "images.resize", {"url": "u", "width": 0})
        assert (r.status, r.reason) == ("dead", "permanent_error")

`run_task` goes through the very code the worker runs (kubeq.worker.execution): payload
validation, `Permanent`, `Retry`, `retry_on`/`permanent`, the handler's and the queue's
max_attempts, timeouts (sync handlers in a child process that is killed, as in the
worker), unstorable results. Every attempt runs until the task completes or is
dead-lettered; backoff delays are recorded in `TaskRun.delays`, never slept.

For integration tests against a real queue, `pytest_plugins = ["kubeq.testing"]` in a
conftest.py gives the fixture `kubeq_redis_url`: a private redis-server on a free port for
the test session (needs `redis-server` on PATH), flushed after each test.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kubeq.app import App, json_payload
from kubeq.protocol import ClaimedTask, QueueConfig, QueueOps, Task, TaskError, TaskRequest

_NOW = 1_700_000_000_000  # a fixed clock: delays are reported, never waited for


@dataclass
class TaskRun:
    """What happened to one task across its attempts."""

    status: str  # completed | dead
    attempts: int
    result: Any = None
    reason: str | None = None  # dead-letter reason
    error: TaskError | None = None  # the last attempt's error
    delays: list[float] = field(default_factory=list)  # seconds before each retry
    errors: list[TaskError] = field(default_factory=list)  # one per failed attempt


async def arun_task(
    app: App,
    task_type: str,
    payload: Any = None,
    *,
    max_attempts: int | None = None,
    config: QueueConfig | None = None,
    seed: int = 0,
) -> TaskRun:
    """`run_task` for async tests (on the running loop)."""
    from kubeq.worker.execution import TaskRunner

    config = config or QueueConfig(name="testing")
    ops = QueueOps(config)
    runner = TaskRunner(
        app,
        ops,
        queue=config.full_name,
        worker_id="testing",
        clock=lambda: _NOW,
        rng=random.Random(seed),
        thread_pool_size=1,
        process_pool_size=1,
        start_method="spawn",
    )
    # The same validation and encoding a submit does; the handler gets the payload back
    # from the record's JSON, as in the worker.
    req = TaskRequest(type=task_type, payload=json_payload(payload), max_attempts=max_attempts)
    record = ops.encode_task(req, _NOW)[6]
    stored = json.loads(record)
    data = stored.get("payload")
    run = TaskRun(status="pending", attempts=0)
    task_id = secrets.token_hex(8)
    try:
        for attempt in _attempts():
            task = Task(
                id=task_id,
                queue=config.full_name,
                type=task_type,
                payload=data,
                priority=config.default_level,
                attempts=attempt,
                max_attempts=int(stored["max_attempts"]),
                created_at=_NOW,
                due_at=_NOW,
                started_at=_NOW,
                worker="testing",
                token=attempt,
            )
            out = await runner.execute(ClaimedTask(task=task, token=attempt, level_index=1))
            run.attempts = attempt
            outcome = json.loads(out.settlement.outcome)
            if out.event == "completed":
                run.status, run.result = "completed", outcome.get("result")
                return run
            err = TaskError.model_validate(outcome["error"])
            run.error = err
            run.errors.append(err)
            if out.event == "retried":
                run.delays.append((out.retry_in_ms or 0) / 1000)
                continue
            run.status, run.reason = "dead", out.reason
            return run
    finally:
        runner.shutdown()
    raise AssertionError("unreachable")


def run_task(app: App, task_type: str, payload: Any = None, **options: Any) -> TaskRun:
    """Run one task of `app` through all its attempts; see the module docstring."""
    return asyncio.run(arun_task(app, task_type, payload, **options))


def _attempts() -> Iterator[int]:
    n = 1
    while n <= 10_000:  # max_attempts is at most 1000: a bound, not a policy
        yield n
        n += 1


try:  # the pytest fixture, when pytest is there (it is a test-time dependency only)
    import pytest
except ImportError:  # pragma: no cover
    pass
else:

    @pytest.fixture(scope="session")
    def _kubeq_redis_server() -> Iterator[Any]:
        from kubeq.redis_server import RedisServer

        with RedisServer() as server:
            yield server

    @pytest.fixture
    def kubeq_redis_url(_kubeq_redis_server: Any) -> Iterator[str]:
        """URL of a private redis-server (started once per session), flushed after use."""
        import redis

        yield _kubeq_redis_server.url
        r = redis.Redis.from_url(_kubeq_redis_server.url)
        try:
            r.flushall()
        finally:
            r.close()
