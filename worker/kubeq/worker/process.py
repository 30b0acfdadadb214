"""Process lifecycle: logging, the app, the Redis connection, signals, the HTTP server."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import threading

from kubeq.app import App, load_app
from kubeq.protocol import AsyncClient, KubeqError
from kubeq.protocol.connection import redacted
from kubeq.worker.batcher import TRANSIENT
from kubeq.worker.drain import serve as serve_worker
from kubeq.worker.health import HealthServer
from kubeq.worker.logs import configure_logging
from kubeq.worker.runtime import Worker
from kubeq.worker.settings import WorkerSettings

log = logging.getLogger("kubeq.worker")


async def connect(settings: WorkerSettings, stop: asyncio.Event) -> AsyncClient | None:
    """The queue client; waits out a Redis that is not up yet. None when stopped first."""
    delay = 0.1
    url, options = settings.redis_connection()
    while not stop.is_set():
        try:
            return await AsyncClient.from_url(
                url, settings.queue, settings.namespace, settings.queue_config, **options
            )
        except TRANSIENT as exc:
            log.warning(
                "Redis at %s unavailable, retrying in %.1fs: %s",
                redacted(settings.redis_url),
                delay,
                exc,
            )
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass
        delay = min(delay * 2, 5.0) * random.uniform(0.75, 1.0)
    return None


async def serve(
    settings: WorkerSettings,
    app: App,
    stop: asyncio.Event | None = None,
    hurry: asyncio.Event | None = None,
) -> int:
    """Run a worker on the current loop until `stop` is set (then drain); an exit code.

    Without an inline queue config the worker serves the published one (or the defaults
    while none is published) and, when a config is published or changed later, drains and
    serves again on the new one, in the same process.
    """
    stop = stop or asyncio.Event()
    hurry = hurry or asyncio.Event()
    current: list[Worker] = []
    health: HealthServer | None = None
    try:
        while not stop.is_set():
            client = await connect(settings, stop)
            if client is None:
                return 0
            try:
                worker = Worker(settings, app, client)
                current[:] = [worker]
                if health is None and settings.metrics_port:
                    health = HealthServer(
                        worker.metrics,
                        lambda: current[0].readiness(),
                        settings.metrics_host,
                        settings.metrics_port,
                        live=lambda loop_ok: current[0].liveness(loop_ok),
                    )
                    await health.start()
                elif health is not None:
                    health.metrics = worker.metrics
                log.info(
                    "worker %s serving %s with %d slots (lease %.1fs)",
                    worker.id,
                    worker.config.full_name,
                    worker.concurrency,
                    worker.config.lease_seconds,
                )
                changed = await _serve_until_changed(worker, stop, hurry)
                log.info("worker %s stopped", worker.id)
            finally:
                await client.close()
            if not changed:
                return 0
            log.info("the queue's published config changed: serving it now")
        return 0
    finally:
        if health is not None:
            await health.stop()


async def _serve_until_changed(worker: Worker, stop: asyncio.Event, hurry: asyncio.Event) -> bool:
    """Serve until `stop` or a newly published config; True for the latter."""
    until = asyncio.Event()

    async def watch() -> None:
        await asyncio.wait(
            [
                asyncio.ensure_future(e.wait())
                for e in (stop, worker.config_changed, worker.recycle)
            ],
            return_when=asyncio.FIRST_COMPLETED,
        )
        until.set()

    watcher = asyncio.create_task(watch())
    try:
        await serve_worker(worker, until, hurry)
    finally:
        watcher.cancel()
    return worker.config_changed.is_set() and not (stop.is_set() or worker.recycle.is_set())


def run_worker(settings: WorkerSettings) -> int:
    """The worker process's main: configure logging, load the app, serve until signalled."""
    configure_logging(settings.log_format, settings.log_level)
    if not settings.app:
        log.error("no app to run: set KUBEQ_APP (or --app) to 'package.module:attribute'")
        return 2
    # Like celery and rq: the directory the worker starts in is importable (`python -m`
    # does this by itself; the `kubeq` script does not). Child processes inherit sys.path.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        app = load_app(settings.app)
    except (ImportError, AttributeError, TypeError) as exc:
        log.error("cannot load app %s: %s", settings.app, exc)
        return 2
    code = asyncio.run(_main(settings, app))
    stuck = [t for t in threading.enumerate() if t.name.startswith("kubeq-task") and t.is_alive()]
    if stuck:
        # An executor="thread" handler that ignored ctx.stopped(): the interpreter would
        # join its thread at exit and hang there. Nothing of ours is left to finish.
        log.warning("%d handler threads still running at exit; exiting without them", len(stuck))
        logging.shutdown()
        os._exit(code)
    return code


async def _main(settings: WorkerSettings, app: App) -> int:
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: releasing everything now", signal.Signals(signum).name)
            hurry.set()
        else:
            log.info("%s: draining", signal.Signals(signum).name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await serve(settings, app, stop, hurry)
    except KubeqError as exc:
        log.error("worker failed: %s", exc)
        return 1
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("worker failed: %s", exc)
        return 1
