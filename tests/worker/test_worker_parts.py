"""The worker's parts on their own: app registry, outcomes, breaker, metrics, logs, settings."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import re
from typing import Any

import kubeq_test_apps
import pytest
import redis.exceptions
from worker_support import queue_config

from kubeq.app import App, TaskContext, load_app
from kubeq.exceptions import Permanent, Retry
from kubeq.metrics import WorkerMetrics
from kubeq.protocol import ClaimedTask, Client, QueueOps, Task
from kubeq.worker import WorkerSettings
from kubeq.worker.breaker import CircuitBreaker
from kubeq.worker.execution import TaskRunner
from kubeq.worker.logs import JSONFormatter, logging_config


def claimed(
    type: str, attempts: int = 1, max_attempts: int = 3, payload: Any = None
) -> ClaimedTask:
    task = Task(
        id="t1",
        queue="default/q",
        type=type,
        payload=payload,
        priority="default",
        attempts=attempts,
        max_attempts=max_attempts,
        created_at=0,
        due_at=0,
    )
    return ClaimedTask(task=task, token=7, level_index=2)


@pytest.fixture
def runner() -> TaskRunner:
    return TaskRunner(
        kubeq_test_apps.app,
        QueueOps(queue_config(name="q")),
        queue="default/q",
        worker_id="w",
        clock=lambda: 1_000,
        rng=random.Random(1),
    )


def test_a_decorated_handler_stays_callable_and_registers_once() -> None:
    app = App("t")

    @app.task("double", max_attempts=2, executor="thread")
    def double(payload: int, ctx: TaskContext) -> int:
        return payload * 2

    ctx = TaskContext("id", 1, 2, "default/q", "default", "double")
    assert double(3, ctx) == 6
    assert app.tasks["double"] is double
    assert double.options.executor == "thread"
    # Sync handlers default to a child process, which imports them by name.
    assert kubeq_test_apps.sync_sleep.options.executor == "process"
    with pytest.raises(TypeError, match="module level"):

        @app.task("local_sync")
        def local_sync(payload: int, ctx: TaskContext) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        app.task("double")(lambda p, c: None)
    with pytest.raises(TypeError, match="plain function"):
        app.task("bad", executor="process")(kubeq_test_apps.noop.fn)
    with pytest.raises(RuntimeError, match="not connected"):
        double.submit(1)
    assert load_app("kubeq_test_apps:app") is kubeq_test_apps.app
    with pytest.raises(TypeError, match="not a kubeq App"):
        load_app("kubeq_test_apps:Reading")


def test_submit_shortcuts_use_the_bound_queue(redis_url: str) -> None:
    cfg = queue_config()
    app = App("t").connect(redis_url, cfg.name, config=cfg)

    @app.task("ingest", max_attempts=2)
    async def ingest(payload: Any, ctx: TaskContext) -> None: ...

    try:
        tid = ingest.submit(kubeq_test_apps.Reading(sensor="a", value=1.0), priority="high")
        task = app.client().status(tid)
        # The handle writes the handler's max_attempts into the record (for the reaper).
        assert (task.type, task.payload, task.priority, task.max_attempts) == (
            "ingest",
            {"sensor": "a", "value": 1.0},
            "high",
            2,
        )
    finally:
        app.close()


async def test_asubmit_uses_an_async_client(redis_url: str) -> None:
    cfg = queue_config()
    app = App("t").connect(redis_url, cfg.name, config=cfg)
    handle = app.task("x")(kubeq_test_apps.echo.fn)
    try:
        tid = await handle.asubmit([1])
        with Client.from_url(redis_url, cfg.name, config=cfg) as c:
            assert c.status(tid).payload == [1]
    finally:
        await app.aclose()


async def test_outcomes_map_exceptions_to_settlements(runner: TaskRunner) -> None:
    out = await runner.execute(claimed("echo", payload=5))
    assert (out.event, out.settlement.action) == ("completed", "complete")
    assert json.loads(out.settlement.outcome)["result"] == 5
    retry = runner.on_exception(claimed("x"), kubeq_test_apps.flaky, Retry(delay=2.5))
    assert (retry.event, retry.settlement.due_ms, retry.failed) == ("retried", 3_500, True)
    last = runner.on_exception(claimed("x", attempts=3), kubeq_test_apps.flaky, Retry())
    assert (last.event, last.reason) == ("dead", "attempts_exhausted")
    perm = runner.on_exception(claimed("x"), kubeq_test_apps.flaky, Permanent("no"))
    assert (perm.event, perm.reason, perm.settlement.action) == ("dead", "permanent_error", "dead")
    # A Retry wins over a handler's narrow retry_on; other errors outside it are permanent.
    narrow = kubeq_test_apps.only_retries_oserror
    assert runner.on_exception(claimed("x"), narrow, Retry()).event == "retried"
    assert runner.on_exception(claimed("x"), narrow, OSError()).event == "retried"
    assert runner.on_exception(claimed("x"), narrow, KeyError()).event == "dead"
    cancelled = runner.cancelled(claimed("x"))
    assert (cancelled.settlement.action, cancelled.event) == ("cancel", "cancelled")
    assert runner.released(claimed("x")).settlement.action == "release"
    for bad in (-1, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match="finite number"):
            Retry(delay=bad)  # type: ignore[arg-type]


def test_breaker_opens_backs_off_with_jitter_and_probes_once() -> None:
    now = [0.0]
    b = CircuitBreaker(3, 1.0, 8.0, rng=random.Random(2), clock=lambda: now[0])
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open"
    assert not b.allow()
    assert 0.5 <= b.delay() <= 1.0
    now[0] += 1.0
    assert b.allow()
    assert b.state == "half_open"
    assert not b.allow()  # one probe at a time
    b.record_failure()  # the probe failed: open again, longer
    assert b.state == "open"
    assert 1.0 <= b.delay() <= 2.0
    now[0] += 2.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed"
    assert b.allow()
    for _ in range(20):
        b.opened += 1
        assert b.backoff() <= 8.0


async def test_every_breaker_probe_reports_whatever_its_body_does() -> None:
    """A half-open probe that never reported once starved the heartbeats for the whole
    probe window (a progress flush took it): `attempt()` reports every outcome itself."""
    now = [0.0]
    b = CircuitBreaker(1, 1.0, 8.0, rng=random.Random(2), clock=lambda: now[0])

    def reopen() -> None:
        b.record_failure()
        now[0] += 10.0  # past the backoff: the next caller probes

    reopen()
    with pytest.raises(redis.exceptions.ConnectionError):
        async with b.attempt():
            raise redis.exceptions.ConnectionError("down")
    assert b.state == "open"  # a transient failure re-opens

    now[0] += 10.0
    with pytest.raises(redis.exceptions.ResponseError):
        async with b.attempt():
            raise redis.exceptions.ResponseError("refused")
    assert b.state == "closed"  # Redis answered: it is reachable

    reopen()
    started, release = asyncio.Event(), asyncio.Event()

    async def probe() -> None:
        async with b.attempt():
            started.set()
            await release.wait()

    t = asyncio.create_task(probe())
    await started.wait()
    assert b.state == "half_open"
    assert not b.allow()
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    async with asyncio.timeout(1):  # the cancelled probe's turn is free at once
        await b.ready()
        async with b.attempt():
            pass
    assert b.state == "closed"

    reopen()
    now[0] -= 9.99  # still open
    waiter = asyncio.create_task(b.ready())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    now[0] += 1.0
    async with asyncio.timeout(2):
        await waiter
    assert b.state == "open"  # ready() took no turn
    assert b.allow()
    assert b.state == "half_open"


def test_metrics_have_the_documented_names_and_bounded_labels() -> None:
    m = WorkerMetrics("ns/q", ["known"])
    m.series("default", "known").completed.inc()
    m.series("default", "surprise").claimed.inc()
    m.dead_lettered("default", "known", "timeout")
    m.dead_lettered("default", "known", "lease_expired")  # not ours: folded
    text = m.expose().decode()
    for name in (
        "kubeq_tasks_claimed_total",
        "kubeq_tasks_completed_total",
        "kubeq_tasks_failed_total",
        "kubeq_tasks_retried_total",
        "kubeq_tasks_dead_lettered_total",
        "kubeq_tasks_cancelled_total",
        "kubeq_tasks_released_total",
        "kubeq_task_duration_seconds",
        "kubeq_task_queue_wait_seconds",
        "kubeq_tasks_in_flight",
        "kubeq_worker_concurrency",
        "kubeq_leases_lost_total",
        "kubeq_settles_refused_total",
        "kubeq_redis_errors_total",
        "kubeq_worker_draining",
    ):
        assert f"# TYPE {name} " in text, name
    assert 'task_type="unknown"' in text
    assert "surprise" not in text
    assert 'reason="timeout"' in text
    assert "lease_expired" not in text
    # Two workers in one process (tests) do not collide: each has its own registry.
    WorkerMetrics("ns/q")


def test_json_logs_carry_the_task_fields() -> None:
    record = logging.LogRecord(
        "kubeq.task", logging.INFO, __file__, 1, "task %s retried", ("t1",), None
    )
    record.__dict__.update(queue="ns/q", task_id="t1", type="x", attempt=2, event="retried")
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "task t1 retried"
    assert {k: line[k] for k in ("queue", "task_id", "type", "attempt", "event")} == {
        "queue": "ns/q",
        "task_id": "t1",
        "type": "x",
        "attempt": 2,
        "event": "retried",
    }
    assert logging_config("json", "debug")["loggers"]["kubeq"]["level"] == "DEBUG"


def test_settings_come_from_kubeq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = queue_config(name="telemetry", lease_seconds=5, heartbeat_seconds=1)
    env = {
        "KUBEQ_REDIS_URL": "redis://r:6379/1",
        "KUBEQ_QUEUE": "telemetry",
        "KUBEQ_CONCURRENCY": "8",
        "KUBEQ_METRICS_PORT": "0",
        "KUBEQ_POD_NAME": "p-1",
        "KUBEQ_LOG_FORMAT": "json",
        "KUBEQ_QUEUE_CONFIG": cfg.model_dump_json(),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = WorkerSettings()
    assert (s.redis_url, s.concurrency, s.metrics_port, s.pod_name, s.log_format) == (
        "redis://r:6379/1",
        8,
        0,
        "p-1",
        "json",
    )
    assert s.queue_config == cfg
    assert s.grace_seconds == 30
    assert WorkerSettings(concurrency=2).concurrency == 2  # explicit beats env
    monkeypatch.setenv("KUBEQ_QUEUE", "other")
    with pytest.raises(ValueError, match="queue_config names"):
        WorkerSettings()


def test_redis_credentials_and_tls_from_separate_settings() -> None:
    s = WorkerSettings(
        redis_url="redis://redis:6379/0",
        redis_username="app",
        redis_password="s3cret",
        redis_tls=True,
        redis_tls_insecure_skip_verify=True,
    )
    url, options = s.redis_connection()
    assert url == "rediss://app:s3cret@redis:6379/0?ssl_cert_reqs=none"
    assert options == {}
    assert "s3cret" not in repr(s)
    assert WorkerSettings(redis_url="redis://r/0").redis_connection() == ("redis://r/0", {})


def test_metric_labels_are_only_names_from_the_config_and_the_app() -> None:
    m = WorkerMetrics("ns/q", ["known"])
    m.prime(["high", "low"])
    m.series("high", "known").completed.inc()
    m.series('evil"} 1\nkubeq_forged{a="', "known").completed.inc()
    m.dead_lettered("x" * 500, "known", "timeout")
    for n in range(100):
        m.series(f"p{n}", f"t{n}").claimed.inc()
    text = m.expose().decode()
    assert "forged" not in text
    assert "x" * 50 not in text
    priorities = set(re.findall(r'priority="([^"]*)"', text))
    assert priorities == {"high", "low", "unknown"}
    assert set(re.findall(r'task_type="([^"]*)"', text)) == {"known", "unknown"}


def test_histogram_buckets_are_dense_enough_for_quantiles_between_100ms_and_10s() -> None:
    from kubeq.metrics import DURATION_BUCKETS, WAIT_BUCKETS

    for buckets in (DURATION_BUCKETS, WAIT_BUCKETS):
        steps = [(a, b) for a, b in itertools.pairwise(buckets) if 0.1 <= a < 10]
        assert steps
        # A quantile interpolated inside one bucket is off by at most the bucket's width:
        # at most +50 % of its lower bound here (the old 1 -> 2.5 -> 5 s gave p50 2.4 s for
        # a true 1.48 s).
        assert all(b / a <= 1.5 for a, b in steps), steps


class Later(Retry):
    def __init__(self, seconds: float, why: str) -> None:
        super().__init__(f"later: {why}", delay=seconds)
        self.why = why


def test_a_retry_crosses_a_process_boundary_whole() -> None:
    import pickle

    for exc in (Retry("plain", delay=2.5), Later(3, "busy")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert (str(back), back.delay, back.__dict__) == (str(exc), exc.delay, exc.__dict__)


def test_a_task_type_outside_the_safe_pattern_is_refused_at_registration() -> None:
    from kubeq import App

    app = App("names")
    with pytest.raises(ValueError, match="safe pattern"):

        @app.task("bad type\nforged")
        async def h(payload: object, ctx: object) -> None: ...

    with pytest.raises(ValueError, match="pass name="):

        @app.task  # the default name of a nested function holds "<locals>"
        async def nested(payload: object, ctx: object) -> None: ...

    @app.task("ok.type")
    async def fine(payload: object, ctx: object) -> None: ...

    assert "ok.type" in app.tasks


def test_type_tally_counts_each_type_apart_and_keeps_what_a_failed_flush_put_back() -> None:
    from kubeq.protocol.ops import Settlement
    from kubeq.worker.execution import Outcome
    from kubeq.worker.tally import TypeTally

    def out(t: str, event: Any, duration: float | None, failed: bool = False) -> Outcome:
        s = Settlement("id", 1, 1, "complete")
        return Outcome(s, event, "default", t, 1, None, failed, duration)

    tally = TypeTally()
    tally.add(out("a", "completed", 0.0104))
    tally.add(out("a", "retried", 0.002, failed=True))
    tally.add(out("b", "dead", None, failed=True))  # never ran (e.g. malformed): no run
    tally.add(out("b", "released", 0.5))  # a release is a run, not an ending counted here
    taken = tally.take()
    assert taken == {
        ("a", "runs"): 2,
        ("a", "duration_ms"): 12,
        ("a", "failed"): 1,
        ("a", "completed"): 1,
        ("a", "retried"): 1,
        ("b", "failed"): 1,
        ("b", "dead"): 1,
        ("b", "runs"): 1,
        ("b", "duration_ms"): 500,
    }
    assert tally.take() == {}  # taken once
    tally.add(out("c", "completed", 0.0001))  # under a millisecond: still a duration
    assert tally.take() == {("c", "runs"): 1, ("c", "duration_ms"): 0, ("c", "completed"): 1}
    tally.add(out("a", "completed", 0.001))
    tally.put_back(taken)  # the flush failed: counted again, with what came meanwhile
    again = tally.take()
    assert again[("a", "completed")] == 2
    assert again[("a", "runs")] == 3
    assert again[("b", "dead")] == 1
