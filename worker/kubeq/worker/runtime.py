"""The asyncio worker: claims into free slots, runs handlers, heartbeats, settles, drains.

`_running` holds the handlers now running (at most `concurrency`); the ledger holds every
lease this worker still owns (see ledger.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable
from typing import Any

from kubeq.app import App
from kubeq.metrics import WorkerMetrics
from kubeq.middleware import TaskEnd
from kubeq.protocol import (
    AsyncClient,
    Claim,
    ClaimedTask,
    KubeqError,
    MalformedClaim,
    QueueConfig,
    QueueKeys,
    WokenClaim,
    WorkerInfo,
    browse,
    system_clock,
)
from kubeq.protocol.ops import Command, Op, Pipeline
from kubeq.worker import gc_policy
from kubeq.worker.batcher import SettleBatcher
from kubeq.worker.breaker import TRANSIENT, CircuitBreaker
from kubeq.worker.execution import Outcome, TaskRunner
from kubeq.worker.fanout import FanOut
from kubeq.worker.health import HealthInputs, Verdict, verdict
from kubeq.worker.jobs import Job, cancel_all, new_worker_id
from kubeq.worker.ledger import Ledger
from kubeq.worker.maintenance import Maintenance
from kubeq.worker.progress import PROGRESS_INTERVAL, ProgressBuffer
from kubeq.worker.settings import WorkerSettings, idle_wait_cap
from kubeq.worker.tally import TypeTally

log = logging.getLogger("kubeq.worker")
tlog = logging.getLogger("kubeq.task")


def task_end(out: Outcome | None) -> TaskEnd:
    if out is None:
        return TaskEnd("lost", "lease lost", None)
    error = None
    if out.failed:
        error = json.loads(out.settlement.outcome).get("error", {}).get("type")
    return TaskEnd(out.event, out.reason, out.duration, error)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_statm: tuple[int, int] | None = None  # (pid, fd of its /proc/<pid>/statm)


def rss_bytes() -> int:
    """This process's resident set size (0 where /proc cannot tell). One pread of a file
    kept open: the GC memory trigger reads it every 32 tasks, and an open() each time
    cost ~1.8% of the worker's samples in a drain. Opened per pid: a forked child reads
    its own."""
    global _statm
    try:
        pid = os.getpid()
        if _statm is None or _statm[0] != pid:
            _statm = (pid, os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def get_op(key: str) -> Op:
    return (yield Command(("GET", key)))


def deregister_op(keys: QueueKeys, worker_id: str) -> Op:
    """Remove one worker from the registry (belongs in QueueOps; see the worker notes)."""
    yield Pipeline(
        (
            Command(("ZREM", keys.workers, worker_id)),
            Command(("HDEL", keys.worker_info, worker_id)),
        )
    )


def new_claim_id() -> str:
    return os.urandom(8).hex()


#: how soon a drain repeats a cancellation of the claimer's wait that was not taken
RECANCEL_SECONDS = 0.05


def _take_interruption(me: asyncio.Task[Any]) -> None:
    """Clear every cancellation of `me` (the drain may have repeated it): later waits in
    this task, under `asyncio.timeout`, must not mistake a stale one for their own."""
    while me.cancelling():
        me.uncancel()


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        app: App,
        client: AsyncClient,
        *,
        worker_id: str | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.client = client
        self.config = client.config
        self.id = worker_id or new_worker_id()
        self.concurrency = settings.concurrency
        self.metrics = metrics or WorkerMetrics(self.config.full_name, app.tasks)
        self.metrics.prime(self.config.level_names)
        self.metrics.concurrency.set(self.concurrency)
        # Read at scrape time: no gauge update on the hot path, and never stale.
        self.metrics.in_flight.set_function(lambda: len(self._running))
        s = settings
        self.breaker = CircuitBreaker(
            s.breaker_failure_threshold,
            s.breaker_backoff_base_seconds,
            s.breaker_backoff_max_seconds,
        )
        self.progress = ProgressBuffer()
        self._progress_failing = False
        self.runner = TaskRunner(
            app,
            client.ops,
            queue=self.config.full_name,
            worker_id=self.id,
            clock=client.clock,
            default_timeout=s.task_timeout,
            thread_pool_size=s.thread_pool_size or s.concurrency,
            process_pool_size=s.process_pool_size or s.concurrency,
            start_method=s.child_start_method,
            child_max_tasks=s.child_max_tasks,
            child_max_rss_bytes=s.child_max_rss_mb * 1024 * 1024,
            fanout=FanOut(client, app),
            progress=self.progress,
            log_config=(s.log_format, s.log_level),
            # A frozen worker's children stop before its lease can expire.
            child_keepalive=self.config.lease_seconds / 2,
        )
        self.ledger = Ledger(self.metrics)
        self.tally = TypeTally()
        self.batcher = SettleBatcher(
            client,
            self.breaker,
            self.ledger.settled,
            max_batch=s.settle_batch,
            flush_delay=s.settle_flush_ms / 1000,
            on_error=self.metrics.redis_errors.inc,
        )
        self.maintenance = Maintenance(
            client, self.id, self.breaker, on_error=self.metrics.redis_errors.inc
        )
        self.draining = False
        self.closed = False  # loops check it too: redis-py may swallow a cancellation
        self.started_at = system_clock()
        self._running: dict[str, Job] = {}
        self._slot_freed = asyncio.Event()
        self._idle_task: asyncio.Task[Any] | None = None  # the claimer, while it idles
        self._progress = time.monotonic()  # a task started (settles: batcher.last_applied)
        #: set when the queue's published config differs from the one served (watched only
        #: without an inline config: an inline config is the pod's for life)
        self.config_changed = asyncio.Event()
        #: set when this process should drain and exit to be replaced (max tasks / RSS)
        self.recycle = asyncio.Event()
        self._finished = 0
        self.work_waiting = False  # the last backlog probe (taken only when stalled)
        timeouts = [h.options.timeout or self.runner.default_timeout for h in app.tasks.values()]
        longest = max((t for t in timeouts if t), default=0.0)
        self.stall_seconds = max(s.liveness_stall_seconds, 2 * longest)
        socket_timeout = getattr(
            getattr(client.redis, "connection_pool", None), "connection_kwargs", {}
        ).get("socket_timeout")
        self.idle_wait = idle_wait_cap(s.idle_wait_seconds, socket_timeout)

    # -- state seen from outside ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            pod=self.settings.pod_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            in_flight=len(self._running),
            concurrency=self.concurrency,
            started_at=self.started_at,
            draining=self.draining,
        )

    def claiming(self) -> bool:
        return not (self.draining or self.closed)

    def health(self, loop_healthy: bool = True) -> Verdict:
        return verdict(
            HealthInputs(
                now=time.monotonic(),
                draining=self.draining,
                breaker_closed=self.breaker.state == "closed",
                last_redis_ok=self.breaker.last_success,
                settle_failing_since=self.batcher.failing_since,
                last_progress=self.last_progress(),
                slots_full=len(self._running) >= self.concurrency,
                work_waiting=self.work_waiting,
                stall_seconds=self.stall_seconds,
                ready_window=self.settings.ready_window_seconds,
                loop_healthy=loop_healthy,
            )
        )

    def readiness(self) -> tuple[bool, str]:
        v = self.health()
        return v.ready, v.ready_reason

    def liveness(self, loop_healthy: bool) -> tuple[bool, str]:
        v = self.health(loop_healthy)
        return v.live, v.live_reason

    def last_progress(self) -> float:
        return max(self._progress, self.batcher.last_applied)

    # -- loops -------------------------------------------------------------------------

    def start(self) -> list[asyncio.Task[None]]:
        self.batcher.start()
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self.claim_loop(), name="kubeq-claim"),
            loop.create_task(self.heartbeat_loop(), name="kubeq-heartbeat"),
            loop.create_task(self.maintenance.run(), name="kubeq-maintenance"),
            loop.create_task(self.progress_loop(), name="kubeq-progress"),
        ]
        if self.settings.queue_config is None:
            tasks.append(loop.create_task(self.watch_config(), name="kubeq-config"))
        tasks.append(loop.create_task(self.keepalive_loop(), name="kubeq-keepalive"))
        return tasks

    async def keepalive_loop(self) -> None:
        """Ping the child processes (no Redis involved): they exit when the pings stop."""
        interval = min(1.0, self.config.lease_seconds / 8)
        while not self.closed:
            self.runner.children.ping()
            await asyncio.sleep(interval)

    async def watch_config(self) -> None:
        interval = min(max(self.config.heartbeat_seconds, 0.2), 2.0)  # one GET per interval
        warned = False
        while not self.closed and not self.config_changed.is_set():
            await asyncio.sleep(interval)
            try:
                raw = await self.client.run(get_op(self.client.ops.keys.config))
                if raw is None:
                    continue
                published = QueueConfig.model_validate_json(raw)
            except Exception as exc:  # unreachable, or an invalid published config
                if not warned:
                    log.warning("cannot read the queue's published config: %s", exc)
                    warned = True
                continue
            if published != self.config and published.full_name == self.config.full_name:
                log.info("queue %s has a new published config", self.config.full_name)
                self.config_changed.set()

    def _redis_failed(self, what: str, exc: BaseException) -> None:
        """Count and log; the breaker already heard of it through `attempt()`."""
        self.metrics.redis_errors.inc()
        if isinstance(exc, TRANSIENT):
            log.warning("%s failed, Redis unavailable: %s", what, exc)
        else:
            log.error("%s failed: %r", what, exc)

    async def claim_loop(self) -> None:
        batch = self.settings.claim_batch
        # A claim whose reply was lost (timeout, dropped connection) may have leased tasks:
        # re-sending its id gets those tasks back instead of leaving them to expire and
        # charging them an attempt they never ran (protocol: claim ids).
        claim_id = new_claim_id()
        # After a claim that found less than it asked for, the next one waits on the wake
        # list first (this long); None: claim straight away.
        wait: float | None = None
        while self.claiming():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if not self.breaker.probe_free():  # waiting out an outage: drain interrupts it
                await self._interruptible(self.breaker.ready())
            if not self.claiming():
                break
            n = min(free, batch) if batch else free
            try:
                if wait is None:
                    async with self.breaker.attempt():
                        claim = await self.client.claim(self.id, n, claim_id=claim_id)
                elif self.breaker.state != "closed":  # a probe must not block for seconds
                    await self._idle(wait, blpop=True)
                    wait = None
                    continue
                else:
                    woken = await self._wait_then_claim(wait, n, claim_id)
                    if woken is None:
                        break  # the drain interrupted the wait
                    claim = woken.claim
                    if self.draining:  # it began as the claim came back: nothing starts
                        self._give_back(claim)
                        break
            except Exception as exc:
                if wait is not None and isinstance(exc, TRANSIENT):
                    self.breaker.record_failure()  # the wait is not gated, so not counted
                self._redis_failed("claim", exc)
                wait = None
                if not isinstance(exc, TRANSIENT):
                    claim_id = new_claim_id()  # refused, not lost: nothing to recover
                    await self._idle(self.idle_wait, blpop=False)
                continue
            if wait is not None:
                self.breaker.record_success()
                wait = None
            claim_id = new_claim_id()
            for m in claim.malformed:
                self._dead_letter_malformed(m)
            now = system_clock()
            for ct in claim.tasks:
                self._start(ct, now)
            if len(claim.tasks) + len(claim.malformed) >= n:
                continue  # a full batch: more is likely waiting
            if claim.rate_wait_ms > 0:
                await self._idle(min(self._idle_timeout(), claim.rate_wait_ms / 1000), blpop=False)
            else:
                wait = self._idle_timeout()

    async def _wait_then_claim(self, wait: float, n: int, claim_id: str) -> WokenClaim | None:
        """Block on the wake list, then claim, in one round trip (the claim runs in Redis
        the moment a wake-up arrives). The drain may interrupt the wait (None): whatever
        the claim behind it leased, now or later, is given back, nothing charged."""
        me = asyncio.current_task()
        self._idle_task = me
        try:
            return await self.client.wait_then_claim(wait, self.id, n, claim_id=claim_id)
        except asyncio.CancelledError:
            if not self.draining or me is None:
                raise
            _take_interruption(me)
        finally:
            self._idle_task = None
        # The connection is gone with the claim queued behind the wait: either it ran (its
        # tasks are ours, to release) or it never will take anything (its id is spent).
        try:
            async with self.breaker.attempt():
                abandoned = await self.client.abandon_claim(self.id, claim_id)
        except Exception as exc:  # whatever it leased expires and is reaped: not lost
            self._redis_failed("abandoning an interrupted claim", exc)
            return None
        self._give_back(abandoned)
        return None

    def _give_back(self, claim: Claim) -> None:
        """Release what a claim leased without running it (the attempt is refunded)."""
        for ct in claim.tasks:
            self.ledger.hold(ct.id, ct.token, ct.level_index)
            self.ledger.settling(ct.id, ct.token)
            self.batcher.add(self.runner.released(ct))
        for m in claim.malformed:  # as any claim would: it cannot run anywhere
            self._dead_letter_malformed(m)

    def _dead_letter_malformed(self, m: MalformedClaim) -> None:
        self.ledger.hold(m.task_id, m.token, m.level_index)
        out = self.runner.malformed(m)
        tlog.warning(
            "task %s has a malformed record: %s",
            m.task_id,
            m.error,
            extra={
                "queue": self.config.full_name,
                "task_id": m.task_id,
                "event": "malformed",
                "attempt": m.attempts,
            },
        )
        self.metrics.series(out.priority, out.task_type).failed.inc()
        self.ledger.settling(m.task_id, m.token)
        self.batcher.add(out)

    def _idle_timeout(self) -> float:
        return self.ledger.idle_timeout(self.idle_wait, system_clock())

    async def _interruptible(self, aw: Awaitable[object]) -> tuple[bool, BaseException | None]:
        """Await `aw` in this (the claimer's) task; `stop_claiming()` may cancel it here and
        only here, where no claim is in flight. Returns (interrupted, the error `aw` raised).

        No task of its own per wait: a wake-up goes straight to the claim."""
        me = asyncio.current_task()
        self._idle_task = me
        try:
            await aw
        except asyncio.CancelledError:
            if not self.draining or me is None:
                raise
            _take_interruption(me)  # the drain's: the claim loop ends by itself
            return True, None
        except Exception as exc:
            return False, exc
        finally:
            self._idle_task = None
        return False, None

    async def _idle(self, timeout: float, *, blpop: bool) -> None:
        """Block until work is signalled or `timeout`; drain interrupts it."""
        aw: Awaitable[object] = (
            self.client.wait_for_work(timeout) if blpop else asyncio.sleep(timeout)
        )
        interrupted, exc = await self._interruptible(aw)
        if interrupted or not blpop:
            return
        if exc is not None:  # not gated by the breaker (it waits, not probes)
            if isinstance(exc, TRANSIENT):
                self.breaker.record_failure()
            self._redis_failed("wait for work", exc)
        else:
            self.breaker.record_success()

    def _start(self, ct: ClaimedTask, now_ms: int) -> None:
        tid = ct.id
        stale = self._running.get(tid)
        if stale is not None:  # re-claimed: our older lease on it must be gone
            stale.halt("lost")
        self.ledger.hold(tid, ct.token, ct.level_index)
        self._progress = time.monotonic()
        job = self._running[tid] = Job(ct)
        series = job.series = self.metrics.series(ct.task.priority, ct.task.type)
        series.claimed.inc()
        series.wait.observe(max(0, now_ms - ct.task.due_at) / 1000)
        job.task = asyncio.get_running_loop().create_task(self._run_job(job))

    async def _run_job(self, job: Job) -> None:
        ct = job.claimed
        out: Outcome | None = None
        try:
            try:
                out = await self.runner.execute(ct, job)
            except asyncio.CancelledError:
                if job.stop is None:  # not ours: cannot happen, execute says; be safe
                    job.stop = "release" if self.draining or self.closed else None
            out = self._settle_as(job, out)
        except BaseException as exc:  # one crashing thing here must not strand the task
            log.exception("task %s: the worker failed finishing it", ct.id)
            out = None
            if job.stop != "lost":
                try:
                    out = self.runner.fallback(ct, exc)
                except Exception:
                    log.exception("task %s: no outcome can be built; its lease will expire", ct.id)
        finally:
            self.progress.forget(ct.id, ct.token)
            if self._running.get(ct.id) is job:
                del self._running[ct.id]
            self._slot_freed.set()
        try:
            self._finish(job, out)
        except Exception:
            # Without a settle the lease must not be kept alive: dropping it lets it expire,
            # and the reaper returns the task (counting the attempt), so nothing is stranded.
            log.exception("task %s: settling failed; its lease will expire", ct.id)
            self.ledger.drop(ct.id, ct.token)

    def _finish(self, job: Job, out: Outcome | None) -> None:
        ct = job.claimed
        if job.ctx is not None and self.app.middleware:
            self.app.middleware.after_task(job.ctx, task_end(out))
        if out is None:
            self.ledger.drop(ct.id, ct.token)  # never settle what we know we lost
            return
        series = job.series  # the outcome's priority and type are the claimed task's
        if series is None:
            series = self.metrics.series(out.priority, out.task_type)
        if out.duration is not None:
            series.duration.observe(out.duration)
        if out.failed:
            series.failed.inc()
        self.tally.add(out)
        self.ledger.settling(ct.id, ct.token)
        self.batcher.add(out)
        gc_policy.task_finished()
        self._count_for_recycling()

    def _count_for_recycling(self) -> None:
        self._finished += 1
        s = self.settings
        if self.recycle.is_set():
            return
        why = ""
        if s.max_tasks and self._finished >= s.max_tasks:
            why = f"{self._finished} tasks run (max_tasks {s.max_tasks})"
        elif s.max_rss_mb and self._finished % 16 == 0:
            rss = rss_bytes() / 2**20
            if rss > s.max_rss_mb:
                why = f"RSS {rss:.0f} MiB above max_rss_mb {s.max_rss_mb}"
        if why:
            log.info("recycling this worker: %s; draining, then exiting", why)
            self.recycle.set()
            self.stop_claiming()

    def _settle_as(self, job: Job, out: Outcome | None) -> Outcome | None:
        """What ends this job: the handler's outcome unless the worker stopped it.

        Only the worker's own stop releases (drain) or cancels; a lost lease is dropped.
        A handler that finished anyway (completed) keeps its result, except after a lost
        lease, whose settle fencing would refuse.
        """
        stop = job.stop
        if stop == "lost":
            return None
        if out is not None and (stop is None or out.event == "completed"):
            return out
        if stop == "cancel":
            return self.runner.cancelled(job.claimed)
        if stop == "release":
            return self.runner.released(job.claimed)
        return out if out is not None else self.runner.fallback(job.claimed, RuntimeError())

    async def heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_seconds
        while not self.closed:
            await self.breaker.ready()
            self.recancel()
            try:
                async with self.breaker.attempt():
                    await self.heartbeat()
                    await self.probe_backlog()
            except Exception as exc:
                self._redis_failed("heartbeat", exc)
                await asyncio.sleep(min(interval, 0.5))
                continue
            await asyncio.sleep(interval)

    async def progress_loop(self) -> None:
        """Write the handlers' latest progress reports, one batch per interval."""
        while not self.closed:
            await asyncio.sleep(PROGRESS_INTERVAL)
            await self.flush_progress()

    async def flush_progress(self) -> None:
        if not len(self.progress):
            return
        await self.breaker.ready()
        reports = self.progress.take()  # after the wait: the latest values
        if not reports:
            return
        try:
            async with self.breaker.attempt():
                await self.client.run(
                    self.client.ops.progress(self.id, reports, self.client.clock())
                )
        except TRANSIENT as exc:
            # Progress is best effort: keep the latest values for the next flush (bounded
            # by the tasks running) and say so once per outage, never stopping the worker.
            self.progress.put_back(reports)
            if not self._progress_failing:
                log.warning("progress not written (kept for the next flush): %s", exc)
            self._progress_failing = True
            return
        except KubeqError as exc:  # refused for good (a bug): these values are dropped
            log.error("progress of %d tasks dropped: %r", len(reports), exc)
        except BaseException:
            self.progress.put_back(reports)
            raise
        self._progress_failing = False

    def recancel(self) -> None:
        """Cancel again every job the worker stopped that still runs: an async handler
        that swallowed one CancelledError gets another at each heartbeat."""
        for job in self._running.values():
            if job.stop is not None and job.task is not None and not job.task.done():
                job.task.cancel()

    async def probe_backlog(self) -> None:
        """Does work wait while every slot is held? Asked only once progress has stalled
        for half the window, so a busy healthy worker never pays for it."""
        full = len(self._running) >= self.concurrency
        if not full or time.monotonic() - self.last_progress() < self.stall_seconds / 2:
            self.work_waiting = False
            return
        self.work_waiting = (await self.client.stats()).ready > 0

    async def heartbeat(self) -> None:
        held = self.ledger.held()
        sent = {tid: token for tid, token, _ in held}
        reply = await self.client.heartbeat(self.id, held, self.info())
        await self.flush_tally()
        for tid in reply.lost:
            if self.ledger.is_settling(tid, sent[tid]):
                # Settled (or being settled) since we read the ledger: the settle's own
                # reply says whether it applied; this is no lost lease.
                continue
            self.ledger.drop(tid, sent[tid])
            self.metrics.leases_lost.inc()
            job = self._running.get(tid)
            if job is not None and job.claimed.token == sent[tid]:
                job.halt("lost")
            tlog.info(
                "task %s: lease lost, abandoning it",
                tid,
                extra={"event": "lease_lost", "queue": self.config.full_name, "task_id": tid},
            )
        for tid in reply.cancelled:
            job = self._running.get(tid)
            if job is not None and job.claimed.token == sent[tid]:
                job.halt("cancel")

    async def flush_tally(self) -> None:
        """Add the per-type counts since the last flush to Redis (kept on failure)."""
        counts = self.tally.take()
        if not counts:
            return
        try:
            await self.client.run(browse.tally(self.client.ops, counts))
        except KubeqError as exc:
            # Counting must never stop heartbeats or a drain: keep the counts (bounded by
            # the registered types) for the next flush, and say why once per failure.
            self.tally.put_back(counts)
            log.warning("per-type counters not flushed (kept for the next heartbeat): %s", exc)
        except BaseException:
            self.tally.put_back(counts)
            raise

    async def deregister(self) -> None:
        """Leave the worker registry on a clean exit (`kubeq workers` shows no ghost)."""
        await self.flush_tally()
        await self.client.run(deregister_op(self.client.ops.keys, self.id))

    def stop_claiming(self) -> None:
        """The first step of a drain: no new claims, not ready, draining in WorkerInfo."""
        self.draining = True
        self.metrics.draining.set(1)
        self._interrupt_wait()
        self._slot_freed.set()

    def _interrupt_wait(self) -> None:
        """Cancel the claimer's wait, and again until it took the interruption: on Python
        3.11 `asyncio.wait_for` (redis-py sends under it) loses a cancellation that arrives
        as the send completes, and the wait would then run on to its end."""
        task = self._idle_task
        if task is not None and not task.done():
            task.cancel()
            asyncio.get_running_loop().call_later(RECANCEL_SECONDS, self._interrupt_wait)

    def running(self) -> list[Job]:
        return list(self._running.values())

    async def close(self, tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
        """Stop every loop, each wait within `timeout` (the drain's budget)."""
        self.closed = self.maintenance.stopped = True
        await cancel_all(tasks, timeout=timeout)
        await self.batcher.stop(timeout=timeout)
        self.runner.shutdown()
