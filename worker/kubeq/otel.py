"""OpenTelemetry tracing for kubeq (the optional extra: `pip install kubeq[otel]`).

    from kubeq.otel import TracingMiddleware

    app = App("myapp", middleware=[TracingMiddleware()])

At submit (through the App: handles and `ctx.submit`) the current trace context is
injected into the task's `headers` (W3C `traceparent`/`tracestate`, with the global
propagator). In the worker, each attempt gets a CONSUMER span that is a child of that
context, current while an async handler runs (its own spans nest under it), with the
queue, task type, id, attempt and, when the attempt ends, its outcome. A failure records
the exception and sets the span's status to error.

Only this module imports OpenTelemetry: the stock install never does.
"""

from __future__ import annotations

import contextlib
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(f"kubeq.otel needs OpenTelemetry: pip install 'kubeq[otel]' ({exc})") from exc

from kubeq.app import TaskContext
from kubeq.middleware import Middleware, TaskEnd
from kubeq.protocol.ops import encode_headers

_SPAN = "otel.span"
_TOKEN = "otel.token"
#: outcomes that are failures of the attempt (the span's status is error)
_FAILED = frozenset({"retried", "dead"})


class TracingMiddleware(Middleware):
    """Carries the trace context from submit to the handler's span (see the module doc)."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("kubeq", tracer_provider=tracer_provider)
        self.propagator = propagator

    def _propagator(self) -> TextMapPropagator:
        return self.propagator or propagate.get_global_textmap()

    def on_submit(self, task_type: str, payload: Any, options: dict[str, Any]) -> None:
        carrier: dict[str, str] = {}
        self._propagator().inject(carrier)
        if not carrier:
            return  # no active trace: nothing to carry
        headers = {**(options.get("headers") or {}), **carrier}
        try:
            encode_headers(headers)  # within the bounds, or the task goes without
        except Exception:
            return
        options["headers"] = headers

    def before_task(self, ctx: TaskContext, payload: Any) -> None:
        parent = self._propagator().extract(ctx.headers)
        span = self.tracer.start_span(
            f"kubeq.task {ctx.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kubeq",
                "messaging.operation": "process",
                "messaging.destination.name": ctx.queue,
                "messaging.message.id": ctx.task_id,
                "kubeq.queue": ctx.queue,
                "kubeq.task.type": ctx.type,
                "kubeq.task.id": ctx.task_id,
                "kubeq.task.attempt": ctx.attempt,
                "kubeq.task.max_attempts": ctx.max_attempts,
                "kubeq.task.priority": ctx.priority,
            },
        )
        ctx.state[_SPAN] = span
        ctx.state[_TOKEN] = otel_context.attach(trace.set_span_in_context(span, parent))

    def on_failure(self, ctx: TaskContext, exc: BaseException) -> None:
        span: Span | None = ctx.state.get(_SPAN)
        if span is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))

    def after_task(self, ctx: TaskContext, end: TaskEnd) -> None:
        token = ctx.state.pop(_TOKEN, None)
        if token is not None:
            # The attempt ends in the task it started in; if not, the span still ends.
            with contextlib.suppress(Exception):
                otel_context.detach(token)
        span: Span | None = ctx.state.pop(_SPAN, None)
        if span is None:
            return
        span.set_attribute("kubeq.task.outcome", end.event)
        if end.reason:
            span.set_attribute("kubeq.task.reason", end.reason)
        if end.error_type:
            span.set_attribute("kubeq.task.error_type", end.error_type)
        if end.event in _FAILED:
            span.set_status(Status(StatusCode.ERROR, end.error_type or end.reason or end.event))
        span.end()
