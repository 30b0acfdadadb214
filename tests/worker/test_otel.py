"""Issue 10: the OpenTelemetry integration, end to end through a real worker and Redis.

A span active at submit becomes the parent of the handler's span; the handler's own spans
nest under it; attributes say queue, type, attempt and outcome; a failure is an error
span. Tested with the SDK's InMemorySpanExporter. The stock install never imports OTel.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from worker_support import REPO, queue_config, serving, until

from kubeq import App, Permanent, TaskContext
from kubeq.otel import TracingMiddleware
from kubeq.protocol import Client, InvalidTask, QueueConfig

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")

app = App("otel-tests", middleware=[TracingMiddleware(tracer_provider=PROVIDER)])


@app.task("traced.ok")
async def traced_ok(payload: Any, ctx: TaskContext) -> str:
    with TRACER.start_as_current_span("inside the handler"):
        await ctx.submit("traced.child", None)  # carries the handler span's context on
    return "ok"


@app.task("traced.child")
async def traced_child(payload: Any, ctx: TaskContext) -> None:
    return None


@app.task("traced.fails")
async def traced_fails(payload: Any, ctx: TaskContext) -> None:
    raise Permanent("no such thing")


@app.task("traced.sync")
def traced_sync(payload: Any, ctx: TaskContext) -> dict[str, str]:
    return ctx.headers  # a child process sees the headers too


# A real worker on this loop for the block (worker_support.serving), running app.
worker = functools.partial(serving, app=app)


@pytest.fixture
def config() -> QueueConfig:
    return queue_config(max_attempts=1)


@pytest.fixture
def client(redis_url: str, config: QueueConfig) -> Any:
    with Client.from_url(redis_url, config.name, config=config) as c:
        yield c


def spans(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


async def test_the_trace_context_travels_from_submit_to_the_handlers_span(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    EXPORTER.clear()
    with TRACER.start_as_current_span("request") as request:
        ok = app.tasks["traced.ok"].submit(None, client=client)
        bad = app.tasks["traced.fails"].submit(None, client=client)
        sync = app.tasks["traced.sync"].submit(None, client=client)
    trace_id = request.get_span_context().trace_id
    stored = client.status(ok).headers
    assert stored is not None
    assert stored["traceparent"].split("-")[1] == f"{trace_id:032x}"
    async with worker(redis_url, config):
        await until(
            lambda: len(spans("kubeq.task traced.child")) == 1,
            what="the span of the follow-up task",
        )
        await until(lambda: len(spans("kubeq.task traced.sync")) == 1, what="the sync span")
        await until(lambda: len(spans("kubeq.task traced.fails")) == 1, what="the failed span")
    (handler,) = spans("kubeq.task traced.ok")
    (inner,) = spans("inside the handler")
    (child,) = spans("kubeq.task traced.child")
    (failed,) = spans("kubeq.task traced.fails")
    (synced,) = spans("kubeq.task traced.sync")
    # One trace: request -> handler -> (inner -> child task), and request -> the others.
    for s in (handler, inner, child, failed, synced):
        assert s.context.trace_id == trace_id
    assert handler.parent is not None
    assert handler.parent.span_id == request.get_span_context().span_id
    assert inner.parent is not None
    assert inner.parent.span_id == handler.context.span_id
    assert child.parent is not None
    assert child.parent.span_id == inner.context.span_id
    assert handler.kind == SpanKind.CONSUMER
    attrs = dict(handler.attributes or {})
    assert attrs["kubeq.queue"] == config.full_name
    assert attrs["kubeq.task.type"] == "traced.ok"
    assert attrs["kubeq.task.id"] == ok
    assert attrs["kubeq.task.attempt"] == 1
    assert attrs["kubeq.task.outcome"] == "completed"
    assert handler.status.status_code == StatusCode.UNSET
    fattrs = dict(failed.attributes or {})
    assert (fattrs["kubeq.task.outcome"], fattrs["kubeq.task.reason"]) == (
        "dead",
        "permanent_error",
    )
    assert failed.status.status_code == StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    # A child process's handler gets the headers (to continue the trace itself).
    assert client.result(sync) == client.status(sync).headers
    assert client.result(sync)["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert client.status(bad).status == "dead"


async def test_without_an_active_span_nothing_is_carried(
    redis_url: str, config: QueueConfig, client: Client
) -> None:
    EXPORTER.clear()
    tid = app.tasks["traced.child"].submit(None, client=client)
    assert client.status(tid).headers is None
    async with worker(redis_url, config):
        await until(lambda: len(spans("kubeq.task traced.child")) == 1, what="the span")
    (span,) = spans("kubeq.task traced.child")
    assert span.parent is None  # a root span of its own trace


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({f"h{i}": "v" for i in range(17)}, "at most 16"),
        ({"bad name": "v"}, "must be 1-64"),
        ({"n": 1}, "must be a string"),
        ({"n": "v" * 3000}, "limit is 2048 bytes"),
        (["traceparent"], "must be a mapping"),
    ],
)
def test_headers_are_bounded_and_validated_at_submit(
    client: Client, headers: Any, message: str
) -> None:
    with pytest.raises(InvalidTask, match=message):
        client.submit("t", headers=headers)
    assert client.stats().backlog == 0


def test_the_stock_install_never_imports_opentelemetry() -> None:
    """Without the extra (OpenTelemetry made unimportable) every kubeq module but kubeq.otel
    imports and a task runs; kubeq.otel says which extra it needs. (redis-py itself uses
    OpenTelemetry when it happens to be installed: that is why the extra is not imported
    by kubeq, not proved by sys.modules.)"""
    code = """
import importlib, pkgutil, sys
sys.modules["opentelemetry"] = None  # as if not installed
import kubeq
names = [m.name for m in pkgutil.walk_packages(kubeq.__path__, "kubeq.")]
for name in names:
    if name != "kubeq.otel" and not name.endswith("__main__"):
        importlib.import_module(name)
from kubeq.testing import run_task
app = kubeq.App("x")
@app.task("t")
async def t(payload, ctx):
    ctx.progress(1)
    return payload
assert run_task(app, "t", 5).result == 5
try:
    import kubeq.otel
except ImportError as exc:
    print(exc)
    sys.exit(0 if "kubeq[otel]" in str(exc) else 2)
sys.exit(3)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pip install 'kubeq[otel]'" in run.stdout
