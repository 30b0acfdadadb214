"""Process lifecycle: logging, the app, the Redis connection, signals, the HTTP server."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable

from kubeq.app import App, load_app
from kubeq.metrics import Families, WorkerMetrics
from kubeq.protocol import AsyncClient, KubeqError, policy_problem
from kubeq.protocol.connection import redacted
from kubeq.worker import gc_policy
from kubeq.worker.breaker import TRANSIENT
from kubeq.worker.drain import serve as serve_worker
from kubeq.worker.health import HealthServer
from kubeq.worker.logs import configure_logging
from kubeq.worker.loop import LoopUnavailable, loop_factory
from kubeq.worker.runtime import Worker, rss_bytes
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
    """Run the worker on the current loop until `stop` is set (then drain); an exit code.

    Several queues (`queue="a,b"`): one Worker per queue in this process, each with its
    own share of the slots (`split_slots`), so a busy queue never starves another; one
    HTTP server and one metrics registry for all. Ready and live only if every queue's
    worker is.
    """
    stop = stop or asyncio.Event()
    hurry = hurry or asyncio.Event()
    names = settings.queue_names()
    families = Families()
    current: dict[str, Worker] = {}

    def ready() -> tuple[bool, str]:
        return _all(current, lambda w: w.readiness())

    def live(loop_ok: bool) -> tuple[bool, str]:
        if not current:  # still connecting (e.g. Redis not up yet): a restart cannot help
            return loop_ok, "starting"
        return _all(current, lambda w: w.liveness(loop_ok))

    health: HealthServer | None = None
    if settings.metrics_port:
        health = HealthServer(
            families, ready, settings.metrics_host, settings.metrics_port, live=live
        )
        await health.start()
    try:
        shares = [
            settings.model_copy(update={"queue": name, "concurrency": n})
            for name, n in zip(names, split_slots(settings.concurrency, len(names)), strict=True)
        ]
        codes = await asyncio.gather(
            *(_serve_queue(s, app, stop, hurry, families, current) for s in shares)
        )
        return max(codes, default=0)
    finally:
        if health is not None:
            await health.stop()


def split_slots(concurrency: int, queues: int) -> list[int]:
    """The fairness rule: the slots divided evenly, the remainder to the first queues, at
    least one each."""
    base, extra = divmod(concurrency, queues)
    return [max(1, base + (1 if i < extra else 0)) for i in range(queues)]


def _all(
    current: dict[str, Worker], check: Callable[[Worker], tuple[bool, str]]
) -> tuple[bool, str]:
    if not current:
        return False, "starting"
    verdicts = {name: check(w) for name, w in current.items()}
    bad = {name: why for name, (ok, why) in verdicts.items() if not ok}
    if not bad:
        return True, "ok"
    if len(current) == 1:
        return False, next(iter(bad.values()))
    return False, "; ".join(f"{name}: {why}" for name, why in bad.items())


async def _serve_queue(
    settings: WorkerSettings,
    app: App,
    stop: asyncio.Event,
    hurry: asyncio.Event,
    families: Families,
    current: dict[str, Worker],
) -> int:
    """One queue: serve until stopped; again on a newly published config. A worker that
    recycles (max tasks / RSS) stops the whole process, so all its queues drain."""
    try:
        while not stop.is_set():
            client = await connect(settings, stop)
            if client is None:
                return 0
            try:
                metrics = WorkerMetrics(client.config.full_name, app.tasks, families=families)
                await check_eviction_policy(client, metrics)
                worker = Worker(settings, app, client, metrics=metrics)
                current[settings.queue] = worker
                log.info(
                    "worker %s serving %s with %d slots (lease %.1fs)",
                    worker.id,
                    worker.config.full_name,
                    worker.concurrency,
                    worker.config.lease_seconds,
                )
                changed = await _serve_until_changed(worker, stop, hurry)
                log.info("worker %s stopped", worker.id)
                if worker.recycle.is_set():
                    stop.set()
            finally:
                await client.close()
            if not changed:
                return 0
            log.info("the queue's published config changed: serving it now")
        return 0
    except BaseException:
        stop.set()  # the other queues drain too
        raise


async def check_eviction_policy(client: AsyncClient, metrics: WorkerMetrics) -> str | None:
    """Warn loudly (ERROR log, kubeq_redis_eviction_policy_safe 0) when Redis may evict
    accepted tasks. Serving goes on: the operator's condition and the alert tell the
    owner of Redis, and refusing to run would stop the tasks that are still there.
    Returns the problem, None when the policy is safe or cannot be read."""
    try:
        policy = await client.eviction_policy()
    except KubeqError as exc:  # INFO may be refused to this ACL user
        log.warning("cannot read Redis's maxmemory-policy (%s): it is not checked", exc)
        return None
    problem = policy_problem(policy)
    metrics.eviction_policy_safe.set(0 if problem else 1)
    if problem is not None:
        log.error("%s", problem)
    return problem


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
    try:
        loop_name, factory = loop_factory(settings.event_loop)
    except LoopUnavailable as exc:
        log.error("%s", exc)
        return 2
    log.debug("event loop: %s", loop_name)
    if gc_policy.apply(settings.gc_gen0_threshold, read_rss=rss_bytes):
        log.debug("garbage collector: thresholds %s, start-up frozen", gc.get_threshold())
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(_main(settings, app))
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
