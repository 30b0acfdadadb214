"""`Client` (blocking) and `AsyncClient` (asyncio): thin drivers over `QueueOps`.

Both run the same operation generators; only the way a request reaches Redis differs.
"""

from __future__ import annotations

import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import hiredis
import redis.asyncio
import redis.exceptions
from pydantic import ValidationError

import redis
from kubeq.protocol import browse, errors
from kubeq.protocol.config import QueueConfig
from kubeq.protocol.connection import connect, connect_async, redacted, translate
from kubeq.protocol.keys import QueueKeys
from kubeq.protocol.models import (
    DeadLetter,
    HeartbeatReply,
    QueueStats,
    ReapReport,
    Task,
    TaskPage,
    WorkerInfo,
)
from kubeq.protocol.ops import (
    DEFAULT_CHUNK,
    MAX_SCRIPT_BATCH,
    Claim,
    Command,
    MappedRequest,
    Op,
    QueueOps,
    Request,
    RequestFields,
    ScriptCall,
    Settlement,
    TaskRequest,
    WokenClaim,
    result_of,
)
from kubeq.protocol.scripts import SCRIPTS, Script
from kubeq.protocol.workflow import (
    Node,
    Step,
    WorkflowStatus,
    cancel_workflow,
    submit_workflow,
    workflow_status,
)

Clock = Callable[[], int]
RECHECK = 5.0  # seconds between status checks while waiting on the done channel
#: most leases `lease_holders` reads by default (about 40 bytes each): 20 scan pages
MAX_LEASES_READ = 20_000


def _left(deadline: float | None, task_id: str, task: Task) -> float:
    """Seconds left to wait for a result; ResultTimeout when none are."""
    if deadline is None:
        return RECHECK
    left = deadline - time.monotonic()
    if left <= 0:
        raise errors.ResultTimeout(f"task {task_id} still {task.status.value} when the wait ended")
    return left


def system_clock() -> int:
    """Wall-clock epoch milliseconds: what producers, workers and the operator share."""
    return time.time_ns() // 1_000_000


def _as_request(item: TaskRequest | Mapping[str, Any]) -> RequestFields:
    if isinstance(item, TaskRequest):
        return item
    try:
        return MappedRequest(**item)
    except TypeError as exc:
        raise errors.InvalidTask(f"bad task request {dict(item)!r}: {exc}") from None


def _requests_for_submit(
    type: str,
    payload: Any,
    priority: str | None,
    delay: float | None,
    eta_ms: int | None,
    idempotency_key: str | None,
    max_attempts: int | None,
    headers: Mapping[str, str] | None = None,
) -> list[TaskRequest]:
    return [
        TaskRequest(
            type=type,
            payload=payload,
            priority=priority,
            delay=delay,
            eta_ms=eta_ms,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            headers=headers,
        )
    ]


def _parse_config(raw: str | None, queue: str, namespace: str) -> QueueConfig:
    if not raw:
        return QueueConfig(name=queue, namespace=namespace)
    try:
        return QueueConfig.model_validate_json(raw)
    except ValidationError as exc:
        raise errors.ConfigError(
            f"published config of {namespace}/{queue} is invalid: {exc}"
        ) from None


class _Base:
    """`clock=None` (the default): every decision about time (lease deadlines, reaping,
    promotion, retry due times, the rate limit, result expiry) uses Redis's own clock, so
    pods whose clocks disagree still agree on it; `self.clock` then only stamps
    informational fields. A `clock` given (tests) drives those decisions exactly."""

    def __init__(
        self,
        redis_client: Any,
        config: QueueConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        where: str = "Redis",
    ) -> None:
        self.redis = redis_client
        self.config = config
        self.ops = QueueOps(config, server_clock=clock is None)
        self.clock: Clock = clock or system_clock
        self.rng = rng or random.Random()
        self._where = where

    @property
    def keys(self) -> Any:
        """The queue's key schema (QueueKeys): every key under one hash tag."""
        return self.ops.keys

    def _fail(self, exc: redis.exceptions.RedisError) -> BaseException:
        return translate(exc, self._where) or exc

    def _idle_timeout(self, timeout: float) -> float:
        """A blocking wait shorter than the socket timeout, so an idle wait never looks
        like an unreachable Redis."""
        pool = getattr(self.redis, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", {}) or {}
        limit = kwargs.get("socket_timeout")
        if isinstance(limit, int | float) and limit > 0:
            timeout = min(timeout, max(limit * 0.8, limit - 1.0))
        return max(timeout, 0.01)


class Client(_Base):
    """Producer, worker and operator access to one queue, with blocking I/O."""

    @classmethod
    def from_url(
        cls,
        url: str,
        queue: str,
        namespace: str = "default",
        config: QueueConfig | None = None,
        *,
        clock: Clock | None = None,
        **options: Any,
    ) -> Client:
        """Connect; without `config`, use the one published for the queue (or defaults)."""
        r = connect(url, **options)
        where = f"Redis at {redacted(url)}"
        if config is None:
            try:
                raw = r.get(QueueKeys(namespace, queue).config)
            except redis.exceptions.RedisError as exc:
                raise (translate(exc, where) or exc) from exc
            config = _parse_config(raw, queue, namespace)
        return cls(r, config, clock=clock, where=where)

    def close(self) -> None:
        """Close the connections (also on leaving a `with` block)."""
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driver --------------------------------------------------------------------------

    def _execute(self, req: Request) -> Any:
        r = self.redis
        if isinstance(req, ScriptCall):
            script = SCRIPTS[req.script]
            args = (_eval_command(script), script.sha, len(req.keys), *req.keys, *req.args)
            call = _packed_call_sync if _packs_fast_sync(r) else _plain_call_sync
            try:
                return call(r, args)
            except redis.exceptions.NoScriptError:
                r.script_load(script.source)
                return call(r, args)
        if isinstance(req, Command):
            return r.execute_command(*req.args)
        pipe = r.pipeline(transaction=False)
        for cmd in req.commands:
            pipe.execute_command(*cmd.args)
        return pipe.execute()

    def run(self, op: Op) -> Any:
        """Run one protocol operation (a QueueOps generator) against Redis."""
        try:
            req = next(op)
            while True:
                try:
                    reply = self._execute(req)
                except redis.exceptions.RedisError as exc:
                    req = op.throw(self._fail(exc))
                except UnicodeError as exc:
                    req = op.throw(_not_utf8(exc))
                else:
                    req = op.send(reply)
        except StopIteration as stop:
            return stop.value

    # -- producer ------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        priority: str | None = None,
        delay: float | None = None,
        eta_ms: int | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Enqueue one task and return its id (see docs/reference.md for the options)."""
        reqs = _requests_for_submit(
            type, payload, priority, delay, eta_ms, idempotency_key, max_attempts, headers
        )
        ids: list[str] = self.run(self.ops.submit_many(reqs, self.clock()))
        return ids[0]

    def submit_many(
        self, tasks: Iterable[TaskRequest | Mapping[str, Any]], chunk_size: int = DEFAULT_CHUNK
    ) -> list[str]:
        """Enqueue many tasks, one round trip per chunk; their ids, in order."""
        reqs = [_as_request(t) for t in tasks]
        return list(self.run(self.ops.submit_many(reqs, self.clock(), chunk_size)))

    def submit_workflow(
        self,
        workflow: Node,
        *,
        on_failure: Step | None = None,
        workflow_id: str | None = None,
    ) -> str:
        """Submit a workflow (a Step, chain, group or chord) atomically; its id. Steps are
        `<workflow id>.<n>` in declaration order; `on_failure` runs once if a step fails."""
        op = submit_workflow(
            self.ops, workflow, self.clock(), on_failure=on_failure, workflow_id=workflow_id
        )
        return str(self.run(op))

    def workflow(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's state and each step's; TaskNotFound if there is none."""
        status: WorkflowStatus = self.run(workflow_status(self.ops, workflow_id, self.clock()))
        return status

    def cancel_workflow(self, workflow_id: str) -> str:
        """Cancel a running workflow's pending steps and stop its running ones; the state
        it had ('running', 'completed', 'failed', 'cancelled' or 'unknown')."""
        return str(self.run(cancel_workflow(self.ops, workflow_id, self.clock())))

    def status(self, task_id: str) -> Task:
        """The task's record; TaskNotFound if there is none."""
        task: Task = self.run(self.ops.status(task_id, self.clock()))
        return task

    def cancel(self, task_id: str) -> str:
        """Cancel a task: 'cancelled', 'requested' (running), 'finished', 'dead' or 'unknown'."""
        return str(self.run(self.ops.cancel(task_id, self.clock())))

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait (without polling) until the task ends; its result, or TaskFailed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.done_channel)
            while True:
                # Subscribed before looking, so an ending between the two is not missed.
                task = self.status(task_id)
                if task.status.terminal:
                    return result_of(task)
                # Re-check every RECHECK seconds at most: a safety net, not the mechanism.
                recheck = time.monotonic() + RECHECK
                while time.monotonic() < recheck:
                    left = _left(deadline, task_id, task)
                    msg = pubsub.get_message(timeout=min(left, recheck - time.monotonic()))
                    if msg is not None and task_id in str(msg["data"]).split():
                        break
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        finally:
            pubsub.close()

    # -- worker --------------------------------------------------------------------------

    def claim(
        self, worker: str, n: int, lease_ms: int | None = None, *, claim_id: str | None = None
    ) -> Claim:
        """Lease up to `n` tasks. Re-send the same `claim_id` after a failed call: the tasks
        that call leased come back instead of new ones (no attempt is charged twice)."""
        order = self.ops.serving_order(self.rng)
        claim: Claim = self.run(self.ops.claim(worker, n, self.clock(), order, lease_ms, claim_id))
        return claim

    def abandon_claim(self, worker: str, claim_id: str) -> Claim:
        """After a claim whose reply was lost, when the caller wants no tasks after all: the
        tasks that claim leased (to release), and its id spent so it takes nothing later."""
        order = self.ops.serving_order(self.rng)
        claim: Claim = self.run(self.ops.abandon_claim(worker, claim_id, self.clock(), order))
        return claim

    def heartbeat(
        self,
        worker: str,
        held: Sequence[tuple[str, int, int]],
        info: WorkerInfo,
        lease_ms: int | None = None,
    ) -> HeartbeatReply:
        """Extend all of a worker's leases in one call; the leases lost and cancelled."""
        reply: HeartbeatReply = self.run(
            self.ops.heartbeat(worker, held, self.clock(), info, lease_ms)
        )
        return reply

    def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Complete, retry, dead-letter or release leased tasks (fenced by token)."""
        return list(self.run(self.ops.settle(settlements, self.clock())))

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a submit signals work or `timeout` seconds pass."""
        try:
            wait = self._idle_timeout(timeout)
            return self.redis.blpop([self.keys.wake], timeout=wait) is not None
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    # -- maintenance and admin ---------------------------------------------------------------

    def reap(self, limit: int = MAX_SCRIPT_BATCH) -> ReapReport:
        """Return expired leases to their queues, expire results, drop silent workers."""
        report: ReapReport = self.run(self.ops.reap(self.clock(), limit))
        return report

    def expire_dead_letters(self, limit: int = 1000) -> int:
        """Drop dead letters past the queue's retention; how many."""
        return int(self.run(self.ops.expire_dead_letters(self.clock(), limit)))

    def acquire_maintenance(self, owner: str, ttl_ms: int) -> bool:
        """Take the short maintenance lock for `owner`; True if taken."""
        return bool(self.run(self.ops.acquire_lock(owner, ttl_ms)))

    def stats(self) -> QueueStats:
        """Backlog per level, dead letters, workers and counters, in one round trip."""
        stats: QueueStats = self.run(self.ops.stats(self.clock()))
        return stats

    def workers(self) -> list[WorkerInfo]:
        """The registered workers of the queue."""
        return list(self.run(self.ops.workers()))

    def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """Dead-lettered tasks, oldest first, with their errors."""
        return list(self.run(self.ops.dead_letters(offset, limit)))

    def requeue_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> list[str]:
        """Put dead-lettered tasks (these, or the oldest `limit`) back; their ids."""
        return list(self.run(self.ops.requeue_dead(ids, limit)))

    def purge_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> int:
        """Delete dead-lettered tasks for good; how many."""
        return int(self.run(self.ops.purge_dead(ids, limit)))

    def finished(self, page_size: int = 1000) -> Iterator[Task]:
        """Every finished task still within its result TTL, page by page (HSCAN)."""
        cursor = 0
        while True:
            cursor, tasks = self.run(self.ops.finished_page(cursor, page_size))
            yield from tasks
            if cursor == 0:
                return

    def lease_holders(self, limit: int = MAX_LEASES_READ) -> dict[str, int] | None:
        """Tasks leased now per worker id, from the fencing state alone (never a task's
        record, whatever its payload); None when more than `limit` are leased."""
        held: dict[str, int] | None = self.run(self.ops.lease_holders(limit))
        return held

    # -- seeing and steering (issue 13) -------------------------------------------------

    def list_tasks(
        self,
        state: str,
        *,
        task_type: str | None = None,
        level: str | None = None,
        reason: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks in `state` (pending, scheduled, running, retrying, completed, dead), at most
        `limit`, filtered by type, level and (dead) reason; pass `page.cursor` back for more.

        Reads bounded ranges of the queue's own lists and sets, never the keyspace.
        """
        page: TaskPage = self.run(
            browse.list_tasks(
                self.ops,
                state,
                task_type=task_type,
                level=level,
                reason=reason,
                limit=limit,
                cursor=cursor,
            )
        )
        return page

    def run_now(self, task_id: str) -> bool:
        """Make a scheduled or retrying task due now; False if it is in neither state."""
        return bool(self.run(browse.run_now(self.ops, task_id)))

    def pause(self, reason: str | None = None) -> bool:
        """Stop workers claiming from the queue (running tasks finish); True if it changed."""
        return bool(self.run(browse.set_paused(self.ops, True, self.clock(), reason)))

    def resume(self) -> bool:
        """Let workers claim again after `pause`; True if the queue was paused."""
        return bool(self.run(browse.set_paused(self.ops, False, self.clock())))

    def requeue_dead_where(
        self, *, reason: str | None = None, task_type: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Requeue the dead letters with this reason and/or type; their ids."""
        return list(
            self.run(
                browse.act_on_dead(
                    self.ops, "requeue", reason=reason, task_type=task_type, limit=limit
                )
            )
        )

    def purge_dead_where(
        self, *, reason: str | None = None, task_type: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Delete for good the dead letters with this reason and/or type; their ids."""
        return list(
            self.run(
                browse.act_on_dead(
                    self.ops, "purge", reason=reason, task_type=task_type, limit=limit
                )
            )
        )

    def record_scale(self, event: dict[str, Any]) -> None:
        """Append a scale decision to the queue's capped log (the operator calls this)."""
        self.run(browse.record_scale(self.ops, event))

    def scale_log(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest recorded scale decisions, newest first."""
        return list(self.run(browse.scale_log(self.ops, limit)))

    def type_stats(self) -> dict[str, dict[str, int]]:
        """Per task type: submitted, completed, failed, retried, dead, cancelled, runs and
        duration_ms totals."""
        return dict(self.run(browse.type_stats(self.ops)))

    def publish_config(self) -> None:
        """Publish this client's queue config to Redis for producers and workers."""
        self.run(_single(self.ops.publish_config()))

    def eviction_policy(self) -> str:
        """Redis's maxmemory-policy (see `policy_problem` for what it means to kubeq)."""
        return str(self.run(self.ops.eviction_policy()))

    def ping(self) -> None:
        """Check that Redis answers; ConnectionFailed otherwise."""
        try:
            self.redis.ping()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc


def _plain_call_sync(r: Any, args: tuple[Any, ...]) -> Any:
    return r.execute_command(*args)


def _packs_fast_sync(r: Any) -> bool:
    return type(r) is redis.Redis and r.connection is None


def _pack(args: tuple[Any, ...]) -> bytes:
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError as exc:  # an argument of no Redis type (None): as redis-py reports it
        raise redis.exceptions.DataError(str(exc)) from None
    return packed


def _packed_call_sync(r: Any, args: tuple[Any, ...]) -> Any:
    """`_packed_call` for the blocking client: redis-py checks every argument's type in
    Python before hiredis packs them (~1 us per submitted task)."""
    packed = _pack(args)
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed])
        return conn.read_response()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


async def _plain_call(r: Any, args: tuple[Any, ...]) -> Any:
    return await r.execute_command(*args)


def _packs_fast(r: Any) -> bool:
    """A plain (or Sentinel-managed) asyncio client: one connection pool, no cluster."""
    return type(r) is redis.asyncio.Redis and r.connection is None


async def _packed_call(r: Any, args: tuple[Any, ...]) -> Any:
    """A script call packed by hiredis in C: redis-py's asyncio client packs arguments in
    Python, at ~4 us per settlement of a settle call (7 arguments each) against ~0.6 us.
    Same connection handling as `execute_command` without retries (kubeq sets none):
    a connection that failed is dropped, never returned with a reply unread."""
    packed = _pack(args)
    pool = r.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command([packed])
        return await conn.read_response()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _two_replies(r: Any, first: bytes, second: bytes) -> tuple[Any, Any]:
    """Send two packed commands in one write on one connection; both replies, an error
    reply returned (not raised) so the second is always read. A connection that failed,
    timed out or was cancelled with a reply unread is dropped (redis-py does so), never
    returned to the pool."""
    pool = r.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command([first, second])
        return await _reply(conn), await _reply(conn)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _reply(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except redis.exceptions.ResponseError as exc:
        return exc


class AsyncClient(_Base):
    """The asyncio twin of `Client`; same operations, same keys, same scripts."""

    @classmethod
    async def from_url(
        cls,
        url: str,
        queue: str,
        namespace: str = "default",
        config: QueueConfig | None = None,
        *,
        clock: Clock | None = None,
        **options: Any,
    ) -> AsyncClient:
        r = connect_async(url, **options)
        where = f"Redis at {redacted(url)}"
        if config is None:
            try:
                raw = await r.get(QueueKeys(namespace, queue).config)
            except redis.exceptions.RedisError as exc:
                await r.aclose()
                raise (translate(exc, where) or exc) from exc
            config = _parse_config(raw, queue, namespace)
        return cls(r, config, clock=clock, where=where)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _execute(self, req: Request) -> Any:
        r = self.redis
        if isinstance(req, ScriptCall):
            script = SCRIPTS[req.script]
            args = (_eval_command(script), script.sha, len(req.keys), *req.keys, *req.args)
            call = _packed_call if _packs_fast(r) else _plain_call
            try:
                return await call(r, args)
            except redis.exceptions.NoScriptError:
                await r.script_load(script.source)
                return await call(r, args)
        if isinstance(req, Command):
            return await r.execute_command(*req.args)
        pipe = r.pipeline(transaction=False)
        for cmd in req.commands:
            pipe.execute_command(*cmd.args)
        return await pipe.execute()

    async def run(self, op: Op, first: Callable[[Request], Awaitable[Any]] | None = None) -> Any:
        """Drive `op`, each request through `_execute` (the first through `first` when
        given), Redis's errors and undecodable replies thrown back into it."""
        try:
            req = next(op)
            execute = first or self._execute
            while True:
                call, execute = execute, self._execute
                try:
                    reply = await call(req)
                except redis.exceptions.RedisError as exc:
                    req = op.throw(self._fail(exc))
                except UnicodeError as exc:
                    req = op.throw(_not_utf8(exc))
                else:
                    req = op.send(reply)
        except StopIteration as stop:
            return stop.value

    async def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        priority: str | None = None,
        delay: float | None = None,
        eta_ms: int | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        reqs = _requests_for_submit(
            type, payload, priority, delay, eta_ms, idempotency_key, max_attempts, headers
        )
        ids: list[str] = await self.run(self.ops.submit_many(reqs, self.clock()))
        return ids[0]

    async def submit_many(
        self, tasks: Iterable[TaskRequest | Mapping[str, Any]], chunk_size: int = DEFAULT_CHUNK
    ) -> list[str]:
        reqs = [_as_request(t) for t in tasks]
        return list(await self.run(self.ops.submit_many(reqs, self.clock(), chunk_size)))

    async def submit_workflow(
        self,
        workflow: Node,
        *,
        on_failure: Step | None = None,
        workflow_id: str | None = None,
    ) -> str:
        """`Client.submit_workflow`, for asyncio."""
        op = submit_workflow(
            self.ops, workflow, self.clock(), on_failure=on_failure, workflow_id=workflow_id
        )
        return str(await self.run(op))

    async def workflow(self, workflow_id: str) -> WorkflowStatus:
        """`Client.workflow`, for asyncio."""
        op = workflow_status(self.ops, workflow_id, self.clock())
        status: WorkflowStatus = await self.run(op)
        return status

    async def cancel_workflow(self, workflow_id: str) -> str:
        """`Client.cancel_workflow`, for asyncio."""
        return str(await self.run(cancel_workflow(self.ops, workflow_id, self.clock())))

    async def status(self, task_id: str) -> Task:
        task: Task = await self.run(self.ops.status(task_id, self.clock()))
        return task

    async def cancel(self, task_id: str) -> str:
        return str(await self.run(self.ops.cancel(task_id, self.clock())))

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.keys.done_channel)
            while True:
                task = await self.status(task_id)
                if task.status.terminal:
                    return result_of(task)
                recheck = time.monotonic() + RECHECK
                while time.monotonic() < recheck:
                    left = _left(deadline, task_id, task)
                    msg = await pubsub.get_message(timeout=min(left, recheck - time.monotonic()))
                    if msg is not None and task_id in str(msg["data"]).split():
                        break
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc
        finally:
            await pubsub.aclose()

    async def claim(
        self, worker: str, n: int, lease_ms: int | None = None, *, claim_id: str | None = None
    ) -> Claim:
        order = self.ops.serving_order(self.rng)
        claim: Claim = await self.run(
            self.ops.claim(worker, n, self.clock(), order, lease_ms, claim_id)
        )
        return claim

    async def abandon_claim(self, worker: str, claim_id: str) -> Claim:
        order = self.ops.serving_order(self.rng)
        claim: Claim = await self.run(self.ops.abandon_claim(worker, claim_id, self.clock(), order))
        return claim

    async def wait_then_claim(
        self, timeout: float, worker: str, n: int, *, claim_id: str
    ) -> WokenClaim:
        """Block on the wake list for up to `timeout`, then claim up to `n` (at most
        MAX_SCRIPT_BATCH) tasks: one round trip where a client that can pipeline (not a
        cluster client) sends both at once, so Redis runs the claim the moment the wait
        ends, without a reply and a request crossing the network in between.

        A wait that fails (or is cancelled) may leave the claim run or not: re-send
        `claim_id` (`claim` to take the tasks, `abandon_claim` to give them back)."""
        r = self.redis
        if not _packs_fast(r):
            woke = await self.wait_for_work(timeout)
            return WokenClaim(woke, await self.claim(worker, n, claim_id=claim_id))
        woken = False

        async def wait_then_send(req: Request) -> Any:
            nonlocal woken
            assert isinstance(req, ScriptCall)  # a claim is script calls only
            script = SCRIPTS[req.script]
            block = _pack(("BLPOP", self.keys.wake, self._idle_timeout(timeout)))
            call = _pack((_eval_command(script), script.sha, len(req.keys), *req.keys, *req.args))
            woke, reply = await _two_replies(r, block, call)
            # A refused wait (an ACL, say) still let the claim run: its tasks count either way.
            woken = woke is not None and not isinstance(woke, redis.exceptions.ResponseError)
            if isinstance(reply, redis.exceptions.NoScriptError):  # the claim did not run
                return await self._execute(req)  # loads the script and claims
            if isinstance(reply, redis.exceptions.ResponseError):
                raise reply
            return reply

        # At most one script batch: one call, so only the first request is the pipelined one.
        want = min(n, MAX_SCRIPT_BATCH)
        order = self.ops.serving_order(self.rng)
        op = self.ops.claim(worker, want, self.clock(), order, None, claim_id)
        claim: Claim = await self.run(op, wait_then_send)
        return WokenClaim(woken, claim)

    async def heartbeat(
        self,
        worker: str,
        held: Sequence[tuple[str, int, int]],
        info: WorkerInfo,
        lease_ms: int | None = None,
    ) -> HeartbeatReply:
        reply: HeartbeatReply = await self.run(
            self.ops.heartbeat(worker, held, self.clock(), info, lease_ms)
        )
        return reply

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        return list(await self.run(self.ops.settle(settlements, self.clock())))

    async def wait_for_work(self, timeout: float) -> bool:
        try:
            wait = self._idle_timeout(timeout)
            return await self.redis.blpop([self.keys.wake], timeout=wait) is not None
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc

    async def reap(self, limit: int = MAX_SCRIPT_BATCH) -> ReapReport:
        report: ReapReport = await self.run(self.ops.reap(self.clock(), limit))
        return report

    async def expire_dead_letters(self, limit: int = 1000) -> int:
        return int(await self.run(self.ops.expire_dead_letters(self.clock(), limit)))

    async def acquire_maintenance(self, owner: str, ttl_ms: int) -> bool:
        return bool(await self.run(self.ops.acquire_lock(owner, ttl_ms)))

    async def stats(self) -> QueueStats:
        stats: QueueStats = await self.run(self.ops.stats(self.clock()))
        return stats

    async def workers(self) -> list[WorkerInfo]:
        return list(await self.run(self.ops.workers()))

    async def dead_letters(self, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        return list(await self.run(self.ops.dead_letters(offset, limit)))

    async def requeue_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> list[str]:
        return list(await self.run(self.ops.requeue_dead(ids, limit)))

    async def purge_dead(self, ids: Sequence[str] | None = None, limit: int = 1000) -> int:
        return int(await self.run(self.ops.purge_dead(ids, limit)))

    async def finished(self, page_size: int = 1000) -> AsyncIterator[Task]:
        cursor = 0
        while True:
            cursor, tasks = await self.run(self.ops.finished_page(cursor, page_size))
            for task in tasks:
                yield task
            if cursor == 0:
                return

    async def lease_holders(self, limit: int = MAX_LEASES_READ) -> dict[str, int] | None:
        """Tasks leased now per worker id, from the fencing state alone (never a task's
        record, whatever its payload); None when more than `limit` are leased."""
        held: dict[str, int] | None = await self.run(self.ops.lease_holders(limit))
        return held

    # -- seeing and steering (issue 13) -------------------------------------------------

    async def list_tasks(
        self,
        state: str,
        *,
        task_type: str | None = None,
        level: str | None = None,
        reason: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks in `state` (pending, scheduled, running, retrying, completed, dead), at most
        `limit`, filtered by type, level and (dead) reason; pass `page.cursor` back for more.

        Reads bounded ranges of the queue's own lists and sets, never the keyspace.
        """
        page: TaskPage = await self.run(
            browse.list_tasks(
                self.ops,
                state,
                task_type=task_type,
                level=level,
                reason=reason,
                limit=limit,
                cursor=cursor,
            )
        )
        return page

    async def run_now(self, task_id: str) -> bool:
        """Make a scheduled or retrying task due now; False if it is in neither state."""
        return bool(await self.run(browse.run_now(self.ops, task_id)))

    async def pause(self, reason: str | None = None) -> bool:
        """Stop workers claiming from the queue (running tasks finish); True if it changed."""
        return bool(await self.run(browse.set_paused(self.ops, True, self.clock(), reason)))

    async def resume(self) -> bool:
        """Let workers claim again after `pause`; True if the queue was paused."""
        return bool(await self.run(browse.set_paused(self.ops, False, self.clock())))

    async def requeue_dead_where(
        self, *, reason: str | None = None, task_type: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Requeue the dead letters with this reason and/or type; their ids."""
        return list(
            await self.run(
                browse.act_on_dead(
                    self.ops, "requeue", reason=reason, task_type=task_type, limit=limit
                )
            )
        )

    async def purge_dead_where(
        self, *, reason: str | None = None, task_type: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Delete for good the dead letters with this reason and/or type; their ids."""
        return list(
            await self.run(
                browse.act_on_dead(
                    self.ops, "purge", reason=reason, task_type=task_type, limit=limit
                )
            )
        )

    async def record_scale(self, event: dict[str, Any]) -> None:
        """Append a scale decision to the queue's capped log (the operator calls this)."""
        await self.run(browse.record_scale(self.ops, event))

    async def scale_log(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest recorded scale decisions, newest first."""
        return list(await self.run(browse.scale_log(self.ops, limit)))

    async def type_stats(self) -> dict[str, dict[str, int]]:
        """Per task type: submitted, completed, failed, retried, dead, cancelled, runs and
        duration_ms totals."""
        return dict(await self.run(browse.type_stats(self.ops)))

    async def publish_config(self) -> None:
        await self.run(_single(self.ops.publish_config()))

    async def eviction_policy(self) -> str:
        return str(await self.run(self.ops.eviction_policy()))

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except redis.exceptions.RedisError as exc:
            raise self._fail(exc) from exc


def _single(cmd: Command) -> Op:
    return (yield cmd)


def _not_utf8(exc: UnicodeError) -> errors.KubeqError:
    return errors.InvalidText(f"an argument is not valid UTF-8: {exc}")


def _eval_command(script: Script) -> str:
    """EVALSHA_RO for a `no-writes` script: a read-only user and a replica can run it."""
    return "EVALSHA_RO" if script.read_only else "EVALSHA"
