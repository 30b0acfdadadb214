"""The worker's HTTP endpoints on metrics_port: /metrics, /healthz, /readyz.

/healthz (liveness) answers "can this worker still make progress": the event loop is
alive (a monitor measures how late a short sleep wakes up; a loop blocked by a CPU-bound
handler shows as lag) and the worker is not stalled: settles have not kept failing for
`stall_seconds`, and it is not the case that every slot is held while the queue has a
backlog and no task started or settled for `stall_seconds`. A restart is what helps
then. /readyz answers "should this pod count as serving": Redis answered recently, the
circuit breaker is closed, settles are not failing, and the worker is not draining.
`verdict` decides both from plain inputs (pure; time is a parameter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from kubeq.metrics import Families, WorkerMetrics

TICK = 0.5


@dataclass(frozen=True, slots=True)
class HealthInputs:
    now: float  # monotonic seconds
    draining: bool
    breaker_closed: bool
    last_redis_ok: float
    settle_failing_since: float | None  # first failure of the settle being retried
    last_progress: float  # a task started or a settle applied
    slots_full: bool
    work_waiting: bool  # the last backlog probe saw ready tasks
    stall_seconds: float
    ready_window: float
    loop_healthy: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    live: bool
    ready: bool
    live_reason: str  # "ok", or why not live
    ready_reason: str  # "ok", or why not ready


def verdict(h: HealthInputs) -> Verdict:
    live, live_reason = True, "ok"
    stalled_for = h.now - h.last_progress
    if not h.loop_healthy:
        live, live_reason = False, "event loop blocked"
    elif h.settle_failing_since is not None and h.now - h.settle_failing_since > h.stall_seconds:
        live, live_reason = False, f"settles failing for {h.now - h.settle_failing_since:.0f}s"
    elif h.slots_full and h.work_waiting and stalled_for > h.stall_seconds:
        live, live_reason = (
            False,
            (f"no progress for {stalled_for:.0f}s: every slot stuck while work waits"),
        )
    ready, ready_reason = True, "ok"
    silent = h.now - h.last_redis_ok
    if h.draining:
        ready, ready_reason = False, "draining"
    elif not h.breaker_closed:
        ready, ready_reason = False, "redis unavailable"
    elif silent > h.ready_window:
        ready, ready_reason = False, f"no reply from Redis for {silent:.0f}s"
    elif h.settle_failing_since is not None:
        ready, ready_reason = False, f"settles failing for {h.now - h.settle_failing_since:.0f}s"
    return Verdict(live, ready, live_reason, ready_reason)


class LoopLag:
    def __init__(self, threshold: float = 5.0) -> None:
        self.threshold = threshold
        self.lag = 0.0
        self.last_tick = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kubeq-looplag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(TICK)
            self.lag = max(0.0, loop.time() - start - TICK)
            self.last_tick = time.monotonic()

    def healthy(self) -> bool:
        stale = time.monotonic() - self.last_tick > self.threshold + TICK
        return self.lag < self.threshold and not stale


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape never holds the process open
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds
        pass


class HealthServer:
    """/metrics, /healthz and /readyz from a thread of their own.

    Served by the standard library's WSGI server rather than on the event loop: a probe is
    answered even while a handler blocks the loop, and /healthz then reports the stall
    (the loop-lag monitor's heartbeat goes stale) instead of timing out. It also keeps an
    HTTP framework out of the worker's memory.
    """

    def __init__(
        self,
        metrics: WorkerMetrics | Families,
        ready: Callable[[], tuple[bool, str]],
        host: str,
        port: int,
        lag: LoopLag | None = None,
        live: Callable[[bool], tuple[bool, str]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.live = live
        self.host = host
        self.port = port
        self.lag = lag or LoopLag()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def application(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            status, body, ctype = 200, self.metrics.expose(), CONTENT_TYPE_LATEST
        elif path == "/healthz":
            loop_ok = self.lag.healthy()
            ok, why = self.live(loop_ok) if self.live else (loop_ok, "ok")
            body_json = {"ok": ok, "reason": why, "loop_lag_seconds": round(self.lag.lag, 4)}
            status, body, ctype = _json(ok, body_json)
        elif path == "/readyz":
            ok, why = self.ready()
            status, body, ctype = _json(ok, {"ready": ok, "reason": why})
        else:
            status, body, ctype = 404, b"not found\n", "text/plain"
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        start_response(
            f"{status} {reason}", [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        )
        return [body]

    async def start(self) -> None:
        self.lag.start()
        self._server = make_server(
            self.host,
            self.port,
            self.application,
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kubeq-http", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        await self.lag.stop()
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None


def _json(ok: bool, body: dict[str, object]) -> tuple[int, bytes, str]:
    return (200 if ok else 503), json.dumps(body).encode(), "application/json"
