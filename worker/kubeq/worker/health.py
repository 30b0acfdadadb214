"""The worker's HTTP endpoints on metrics_port: /metrics, /healthz, /readyz.

/healthz answers "is the event loop alive": a monitor measures how late a short sleep
wakes up; a loop blocked by a CPU-bound handler shows as lag (and the probe itself times
out while it is blocked). /readyz answers "should this pod count as serving": Redis
answered recently, the circuit breaker is not open, and the worker is not draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from kubeq.metrics import WorkerMetrics

TICK = 0.5


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


class HealthServer:
    def __init__(
        self,
        metrics: WorkerMetrics,
        ready: Callable[[], tuple[bool, str]],
        host: str,
        port: int,
        lag: LoopLag | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.host = host
        self.port = port
        self.lag = lag or LoopLag()
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        self.lag.start()
        self._runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        await self.lag.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.expose(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        ok = self.lag.healthy()
        return _json(200 if ok else 503, {"ok": ok, "loop_lag_seconds": round(self.lag.lag, 4)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self.ready()
        return _json(200 if ok else 503, {"ready": ok, "reason": why})


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
