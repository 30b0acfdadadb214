"""kopf wiring: TaskQueue reconcile, the per-queue autoscaler daemon, child repair, cleanup.

The decisions live elsewhere (spec/crd_schema: validity; manifests: objects; scaling: the
replica count; status: conditions and fields). `Operator` below is the shell that carries
them out against the API server and Redis; the decorated functions only route to it.

Finalizers: kopf puts its finalizer on every object that has a daemon (it stops the daemon
before the object goes, so no scale patch lands after its owner is gone), so each TaskQueue
carries `kubeq.io/finalizer` while the operator runs. Given that, the Redis cleanup handler
is filtered with `when=` to queues with `retainRedisData: false` (kopf evaluates the filter
on the deleted object, so flipping the flag before deleting works), and the in-memory
cleanup is `optional=True`: it never needs a finalizer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from kubeq.protocol import AsyncClient, KubeqError, QueueConfig, policy_problem
from kubeq_operator.core import status as st
from kubeq_operator.core.crd_schema import GROUP, PLURAL, VERSION, checked_spec
from kubeq_operator.core.errors import InvalidSpec
from kubeq_operator.core.manifests import (
    MANAGED_BY,
    OwnerRef,
    build_deployment,
    deployment_name,
    recorded_spec,
    selector_string,
)
from kubeq_operator.core.pod_security import policy_problems
from kubeq_operator.core.scaling import ScalingPolicy
from kubeq_operator.core.spec import Condition, TaskQueueSpec
from kubeq_operator.engine.autoscaler import QueueAutoscaler
from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.engine.metrics import OperatorMetrics
from kubeq_operator.engine.scheduler import run_schedules
from kubeq_operator.kube.backend import (
    DEPLOYMENTS,
    TASK_QUEUES,
    ApiError,
    DeploymentMissing,
    K8sBackend,
    KubeApi,
    UnresolvedReferences,
)
from kubeq_operator.kube.redis_access import (
    RedisClients,
    inline_password,
    purge,
    resolve_url,
    secret_reader,
)
from kubeq_operator.kube.settings import OperatorSettings, load_settings

log = logging.getLogger("kubeq.operator")

FINALIZER = "kubeq.io/finalizer"
MAX_BACKOFF_SECONDS = 60.0
PURGE_RETRIES = 8  # then the keys are left behind (with a Warning) rather than the object stuck


def configure_kopf(settings: kopf.OperatorSettings, cfg: OperatorSettings) -> None:
    # Peering: only the highest-priority live replica works; equal priorities would pause
    # all of them, hence a random priority per process unless one is configured.
    settings.peering.name = cfg.peering_name
    settings.peering.standalone = cfg.standalone
    # kopf's default is 60 s: a minute without scaling after the leader dies. Replicas
    # heartbeat every max(1, lifetime - 5..10) s, so this bounds the takeover time.
    settings.peering.lifetime = cfg.peering_lifetime_seconds
    settings.peering.mandatory = not cfg.standalone
    settings.peering.priority = (
        cfg.priority if cfg.priority is not None else random.randrange(1, 2**31)
    )
    # kopf posts log lines of handler loggers as Events at this level and above; the
    # operator posts its own Events (scaling, invalid spec), so only warnings go as well.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    # Annotations, not status: the CRD's status schema has no room for kopf's bookkeeping.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubeq.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubeq.io", key="last-handled-configuration"
    )


def queue_ref(body: Mapping[str, Any]) -> QueueRef:
    meta = body["metadata"]
    return QueueRef(str(meta["namespace"]), str(meta["name"]))


def event_target(body: Mapping[str, Any]) -> kopf.Body:
    """What kopf needs to post an Event about an object (a copy: bodies are live views)."""
    meta = body["metadata"]
    keep = ("name", "namespace", "uid")
    raw = {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": {k: meta[k] for k in keep if k in meta},
    }
    return kopf.Body(cast(kopf.RawBody, raw))


def backoff(poll: float, failures: int) -> float:
    return float(min(poll * 2 ** min(failures, 8), max(poll, MAX_BACKOFF_SECONDS)))


def fingerprint(body: Mapping[str, Any]) -> str:
    """What a reconcile depends on: the object's identity and its spec (level-based: the
    daemon compares this with the last settled one, whatever kopf thinks has changed)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec")
    return json.dumps([meta.get("uid"), spec], sort_keys=True, default=_plain)


def _plain(value: object) -> object:
    """JSON for the views kopf may hand out instead of dicts and lists."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


@dataclass
class Queue:
    """What the operator holds in memory for one TaskQueue."""

    ref: QueueRef
    conditions: list[Condition]
    target: kopf.Body | None = None  # for Events
    generation: int | None = None
    spec: TaskQueueSpec | None = None  # the current spec, when valid: what is wanted
    config: QueueConfig | None = None
    # The spec the live objects were last built from: what the autoscaler and the
    # Deployment repair use. A spec the API server refused never gets here.
    applied: TaskQueueSpec | None = None
    applied_config: QueueConfig | None = None
    # The config this process last published to the queue's Redis: the autoscaler round
    # publishes the applied one whenever they differ (e.g. Redis was down at the apply).
    published: QueueConfig | None = None
    settled: str | None = None  # fingerprint of the spec last reconciled to an end
    retry_at: float = 0.0  # a failed reconcile is retried (by the daemon) from then on
    reconcile_failures: int = 0
    autoscaler: QueueAutoscaler | None = None
    written: dict[str, Any] | None = None  # the status as last written
    failures: int = 0  # consecutive failed autoscaler rounds
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Operator:
    def __init__(
        self,
        settings: OperatorSettings,
        api: KubeApi,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.backend = K8sBackend(api)
        self.policy = settings.pod_policy()
        self.clients = RedisClients(secret_reader(api))
        self.clock = clock
        self.wall = wall
        self.queues: dict[QueueRef, Queue] = {}
        self.metrics_port: int | None = None
        self._http: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def serve_metrics(self) -> None:
        self._http = start_http_server(self.settings.metrics_port, registry=self.metrics.registry)
        self.metrics_port = int(self._http[0].server_port)

    async def close(self) -> None:
        await self.clients.close_all()
        await self.api.close()
        if self._http is not None:
            self._http[0].shutdown()
            self._http[0].server_close()

    # -- bookkeeping ----------------------------------------------------------------------

    def queue(self, body: Mapping[str, Any]) -> Queue:
        ref = queue_ref(body)
        q = self.queues.get(ref)
        if q is None:
            live = (body.get("status") or {}).get("conditions")
            q = self.queues[ref] = Queue(ref, st.parse_conditions(live))
        q.target = event_target(body)
        return q

    def _set(self, q: Queue, type: str, ok: bool, reason: str, message: str) -> None:
        """Set a condition and post the Event its change deserves (`st.transition_event`):
        every condition change goes through here, so none goes unannounced."""
        before = st.find(q.conditions, type)
        q.conditions = st.set_condition(
            q.conditions,
            type,
            ok,
            reason,
            message,
            generation=q.generation,
            now=st.timestamp(self.wall()),
        )
        after = st.find(q.conditions, type)
        assert after is not None
        event = st.transition_event(before, after)
        if event is not None and q.target is not None:
            kopf.event(q.target, type=event[0], reason=event[1], message=event[2])

    def _redis(self, q: Queue, error: str | None) -> None:
        ok, reason, message = st.redis_condition(error)
        self._set(q, st.REDIS_REACHABLE, ok, reason, message)

    def _credentials(self, q: Queue, spec: TaskQueueSpec) -> None:
        """The CredentialsSafe condition (and a Warning) while spec.redis.url has a password."""
        if not inline_password(spec.redis):
            q.conditions = st.without_condition(q.conditions, st.CREDENTIALS_SAFE)
            return
        message = st.INLINE_PASSWORD_MESSAGE
        self._set(q, st.CREDENTIALS_SAFE, False, "InlinePassword", message)

    async def _publish(self, q: Queue, client: AsyncClient, config: QueueConfig) -> str | None:
        """Publish `config` to the queue's Redis; the error, or None once published."""
        try:
            await client.publish_config()
        except KubeqError as exc:
            return str(exc)
        q.published = config
        await self._eviction_policy(q, client)
        return None

    async def _eviction_policy(self, q: Queue, client: AsyncClient) -> None:
        """The EvictionPolicySafe condition (a Warning Event, a metric at 0) while Redis runs
        a maxmemory-policy that may silently evict accepted tasks; gone once it is safe."""
        try:
            policy = await client.eviction_policy()
        except KubeqError as exc:  # INFO refused to this ACL user: not checked, said once
            log.warning("%s: cannot read Redis's maxmemory-policy (%s)", q.ref, exc)
            return
        problem = policy_problem(policy)
        self.metrics.eviction_policy_safe.labels(str(q.ref)).set(0 if problem else 1)
        if problem is None:
            q.conditions = st.without_condition(q.conditions, st.EVICTION_POLICY_SAFE)
        else:
            self._set(q, st.EVICTION_POLICY_SAFE, False, "EvictionPolicy", problem)

    async def write_status(self, q: Queue, fields: Mapping[str, Any]) -> None:
        """Merge-patch .status, skipped when nothing would change."""
        update = {**fields, "conditions": st.dump_conditions(q.conditions)}
        if not st.changed(q.written, update):
            return
        path = TASK_QUEUES.path(q.ref.namespace, q.ref.name, "status")
        try:
            await self.api.patch(path, {"status": update})
        except ApiError as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise
        q.written = {**(q.written or {}), **update}

    async def _connect(
        self, q: Queue, spec: TaskQueueSpec, config: QueueConfig
    ) -> tuple[AsyncClient | None, str | None]:
        try:
            return await self.clients.client(q.ref, spec.redis, config), None
        except KubeqError as exc:
            return None, str(exc)
        except ApiError as exc:
            return None, f"cannot read the Redis Secret: {exc}"

    def _track(self, q: Queue, client: AsyncClient | None) -> None:
        """Create the queue's autoscaler, or hand it the new policy and client (its history,
        the stabilization windows' memory, survives spec changes)."""
        assert q.applied is not None
        policy = ScalingPolicy.from_spec(q.applied)
        if q.autoscaler is None:
            if client is not None:
                q.autoscaler = QueueAutoscaler(
                    q.ref, policy, client, self.backend, self.metrics, clock=self.clock
                )
            return
        q.autoscaler.policy = policy
        if client is not None:
            q.autoscaler.client = client

    def _poll(self, q: Queue) -> float:
        spec = q.applied or q.spec
        return spec.autoscaling.poll_interval_seconds if spec is not None else 1.0

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], logger: kopf.Logger) -> None:
        """Make the objects match the *current* spec (level-based), and never raise.

        Called by kopf's change handlers and by the queue's daemon whenever the spec differs
        from the one last settled, or a failed attempt is due for a retry. Every failure
        ends on the status (Ready=False with the reason, a Warning Event, a metric), never
        as an exception: kopf would otherwise keep the change "unhandled" and compare the
        next spec against the old one ("the essence is the same") instead of the current.
        """
        q = self.queue(body)
        async with q.lock:
            try:
                await self._reconcile(q, body, logger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a status write failed, or a surprise: retry later
                self._reconcile_failed(q, "ReconcileFailed", f"{type(exc).__name__}: {exc}")
                logger.warning(f"reconcile failed (retrying): {exc!r}")

    def _reconcile_failed(self, q: Queue, reason: str, message: str) -> None:
        self.metrics.reconcile_errors.labels(str(q.ref)).inc()
        q.reconcile_failures += 1
        q.retry_at = self.clock() + backoff(self._poll(q), q.reconcile_failures - 1)
        self._set(q, st.READY, False, reason, message)

    async def _reconcile(self, q: Queue, body: Mapping[str, Any], logger: kopf.Logger) -> None:
        key = fingerprint(body)
        q.generation = body["metadata"].get("generation")
        # Only what an API server admits: status is the operator's own and not checked.
        admitted = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        try:
            spec = checked_spec(admitted)
            config = spec.to_queue_config(q.ref.name, q.ref.namespace)
        except InvalidSpec as exc:
            message = st.invalid_spec_message(exc.problems)
            self.metrics.reconcile_errors.labels(str(q.ref)).inc()
            self._set(q, st.READY, False, "InvalidSpec", message)
            q.settled = key  # retrying cannot help: the next spec change is reconciled afresh
            await self.write_status(q, {"observedGeneration": q.generation})
            return

        refused = policy_problems(
            build_deployment(q.ref.name, q.ref.namespace, spec, replicas=None),
            q.ref.namespace,
            self.policy,
        )
        if refused:
            message = st.invalid_spec_message(refused)
            self.metrics.reconcile_errors.labels(str(q.ref)).inc()
            self._set(q, st.READY, False, "PolicyViolation", message)
            q.settled = key  # retrying cannot help: the next spec change is reconciled afresh
            await self.write_status(q, {"observedGeneration": q.generation})
            return
        self._credentials(q, spec)

        self.backend.own(q.ref, OwnerRef.from_body(body))
        q.spec, q.config = spec, config
        client, error = await self._connect(q, spec, config)
        self._redis(q, error)
        try:
            await self.backend.apply(q.ref, spec, config)
        except UnresolvedReferences as exc:
            self._reconcile_failed(q, "MissingReference", str(exc))
            await self.write_status(q, {})
            return
        except ApiError as exc:
            self._reconcile_failed(q, "ApplyFailed", str(exc))
            await self.write_status(q, {})
            return
        # Published only once the Deployment carries it: producers and tools read the
        # published config, and a refused spec's config (a new priority, say) would send
        # them where the running workers, still on the last good template, never look.
        if client is not None:
            published = await self._publish(q, client, config)
            if published is not None:
                error = published
                self._redis(q, error)
        if error is not None:
            logger.info(f"config not published yet (the autoscaler retries), Redis: {error}")
        q.applied, q.applied_config = spec, config
        q.settled, q.reconcile_failures, q.retry_at = key, 0, 0.0
        self._track(q, client)
        name = deployment_name(q.ref.name)
        self._set(q, st.READY, True, "Reconciled", f"Deployment {name} matches the spec")
        if not spec.autoscaling.enabled:
            message = f"autoscaling disabled: spec.replicas {spec.static_replicas}"
            self._set(q, st.SCALING, False, "AutoscalingDisabled", message)
        fields = {"observedGeneration": q.generation, "selector": selector_string(q.ref.name)}
        await self.write_status(q, fields)

    # -- autoscaling ----------------------------------------------------------------------

    async def tick(self, body: Mapping[str, Any], logger: kopf.Logger) -> float:
        """One round for a queue: reconcile if the spec is unsettled, then autoscale.
        Returns the seconds until the next round. Nothing raises out of here: an error of
        this queue, from Kubernetes or Redis, is reported on its status (Scaling=False,
        reason AutoscalerError), as a Warning Event and in kubeq_reconcile_errors_total,
        and retried with backoff; the other queues' daemons are not involved."""
        q = self.queue(body)
        try:
            if q.settled != fingerprint(body) and self.clock() >= q.retry_at:
                await self.reconcile(body, logger)
            if q.applied is None:
                await self._adopt(q, body, logger)
            return await self._autoscale(q, logger)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.reconcile_errors.labels(str(q.ref)).inc()
            q.failures += 1
            message = f"{type(exc).__name__}: {exc}"
            logger.warning(f"autoscaler round failed (retrying): {message}")
            self._set(q, st.SCALING, False, "AutoscalerError", message)
            with contextlib.suppress(Exception):
                await self.write_status(q, {})
            return backoff(self._poll(q), q.failures)

    async def _adopt(self, q: Queue, body: Mapping[str, Any], logger: kopf.Logger) -> None:
        """Nothing applied by this process (it restarted) and the current spec not applied:
        take the live Deployment over with the spec it was built from, recorded on it
        (`recorded_spec`), so its pool keeps scaling and being repaired as before the
        restart. The record is checked as any spec (schema, CEL rules, pod policy); Ready
        stays as the reconcile left it (the current spec is refused), and the first
        reconcile that succeeds replaces the adopted spec."""
        async with q.lock:
            if q.applied is not None:  # a reconcile got there first
                return
            name = deployment_name(q.ref.name)
            live = await self.api.get(DEPLOYMENTS.path(q.ref.namespace, name))
            raw = recorded_spec(live, str(body["metadata"].get("uid"))) if live else None
            if raw is None:
                return  # none, someone else's, or built before specs were recorded
            recorded = {"apiVersion": body["apiVersion"], "kind": body["kind"]}
            recorded |= {"metadata": body["metadata"], "spec": raw}
            try:
                spec = checked_spec(recorded)
                config = spec.to_queue_config(q.ref.name, q.ref.namespace)
            except InvalidSpec as exc:
                logger.info(f"the spec recorded on {name} is not usable: {exc}")
                return
            built = build_deployment(q.ref.name, q.ref.namespace, spec, replicas=None)
            if policy_problems(built, q.ref.namespace, self.policy):
                logger.info(f"the spec recorded on {name} violates the pod policy: not used")
                return
            q.applied, q.applied_config = spec, config
        message = (
            f"current spec not applied: Deployment {name} keeps scaling by the spec it was "
            "built from"
        )
        logger.info(message)
        if q.target is not None:
            kopf.event(q.target, type="Normal", reason="Adopted", message=message)

    async def _autoscale(self, q: Queue, logger: kopf.Logger) -> float:
        spec, config = q.applied, q.applied_config
        if spec is None or config is None:
            return self._poll(q)  # nothing applied yet: nothing to scale
        poll = spec.autoscaling.poll_interval_seconds
        client, error = await self._connect(q, spec, config)
        self._track(q, client)
        if q.autoscaler is None:
            self._redis(q, error)
            await self.write_status(q, {})
            q.failures += 1
            return backoff(poll, q.failures)
        try:
            tick = await q.autoscaler.tick()
        except DeploymentMissing:
            # Deleted and not (yet) restored by the Deployment handler: the next round
            # reconciles (re-creates) it, with the usual reporting and backoff.
            logger.info(f"Deployment {deployment_name(q.ref.name)} is missing: re-creating it")
            q.settled = None
            return min(poll, 1.0)

        self._redis(q, tick.error)
        if client is not None and not tick.error and q.published != config:
            # Applied while Redis could not take it (level-based: whatever missed it).
            failed = await self._publish(q, client, config)
            logger.info("queue config published" if failed is None else f"not published: {failed}")
        ok, reason, message = st.scaling_condition(tick, enabled=spec.autoscaling.enabled)
        if reason == "Stable" and tick.decision.recommendation in (None, tick.decision.replicas):
            message = f"{tick.decision.replicas} replicas match the backlog"  # no churn
        self._set(q, st.SCALING, ok, reason, message)
        event = st.scale_event(tick)
        if event is not None and q.target is not None:
            kopf.event(q.target, type="Normal", reason=event[0], message=event[1])
        fields = st.observed_fields(tick, now=st.timestamp(self.wall()))
        # The schedules of the applied spec, like the rest of the round.
        if spec.schedules and client is not None and not tick.error:
            try:
                done = await run_schedules(client, spec.schedules)
            except Exception as exc:  # a schedule round never stops the autoscaler
                self.metrics.reconcile_errors.labels(str(q.ref)).inc()
                logger.info(f"schedule round failed (retrying next tick): {exc!r}")
            else:
                self.metrics.observe_schedules(str(q.ref), done.fired, done.skipped)
                fields["schedules"] = [
                    s.model_dump(by_alias=True, exclude_none=True) for s in done.statuses
                ]
        await self.write_status(q, fields)
        q.failures = q.failures + 1 if tick.error else 0
        return backoff(poll, q.failures) if tick.error else poll

    def release(self, body: Mapping[str, Any]) -> None:
        """The queue's daemon stopped (peering paused this replica, the object is going, or
        the operator exits): export nothing stale, and start afresh if it comes back, since
        another replica may have changed everything meanwhile."""
        ref = queue_ref(body)
        self.metrics.clear_queue(str(ref))
        q = self.queues.get(ref)
        if q is not None:
            q.autoscaler = None  # its history is of a time another replica may have acted in
            q.written = None
            q.settled = None
            q.published = None

    # -- the child Deployment -------------------------------------------------------------

    async def restore(
        self, event_type: str | None, deployment: Mapping[str, Any], logger: kopf.Logger
    ) -> None:
        """Put back a worker Deployment that someone edited or deleted by hand."""
        meta = deployment.get("metadata") or {}
        owner = next(
            (
                o
                for o in meta.get("ownerReferences") or []
                if o.get("kind") == "TaskQueue" and str(o.get("apiVersion", "")).startswith(GROUP)
            ),
            None,
        )
        if owner is None:
            return
        ref = QueueRef(str(meta.get("namespace")), str(owner["name"]))
        q = self.queues.get(ref)
        if q is None:
            return  # not ours to judge (yet)
        async with q.lock:
            try:
                await self._restore(q, event_type, deployment, owner, logger)
            except ApiError as exc:  # never out of an event handler: the daemon retries
                self.metrics.reconcile_errors.labels(str(ref)).inc()
                logger.info(f"checking Deployment {meta.get('name')} failed: {exc}")
                q.settled = None

    async def _restore(
        self,
        q: Queue,
        event_type: str | None,
        deployment: Mapping[str, Any],
        owner: Mapping[str, Any],
        logger: kopf.Logger,
    ) -> None:
        # What was applied last, never a spec the API server refused: that stays refused.
        spec, config, ref = q.applied, q.applied_config, q.ref
        meta = deployment.get("metadata") or {}
        if spec is None or config is None:
            return  # nothing applied yet: the reconcile creates it
        if event_type == "DELETED":
            tq = await self.api.get(TASK_QUEUES.path(ref.namespace, ref.name))
            tq_meta = (tq or {}).get("metadata") or {}
            if (
                tq is None
                or tq_meta.get("deletionTimestamp")
                or tq_meta.get("uid") != owner.get("uid")
            ):
                return  # deleted with its owner (garbage collection): that is no drift
            what = "was deleted"
        elif self.backend.is_current(ref, spec, deployment):
            return
        else:
            what = "differs from the spec"
        message = f"Deployment {meta.get('name')} {what}: restored"
        try:
            await self.backend.apply(ref, spec, config)
        except (ApiError, UnresolvedReferences) as exc:
            # The daemon's next round reconciles the current spec (reporting, backoff).
            self.metrics.reconcile_errors.labels(str(ref)).inc()
            logger.info(f"restoring Deployment {meta.get('name')} failed: {exc}")
            q.settled = None
            return
        logger.info(message)
        if q.target is not None:
            kopf.event(q.target, type="Normal", reason="Restored", message=message)

    # -- deletion -------------------------------------------------------------------------

    async def forget(self, body: Mapping[str, Any]) -> None:
        ref = queue_ref(body)
        q = self.queues.pop(ref, None)
        await self.clients.close(ref)
        await self.backend.delete(ref)
        levels = [lv.name for lv in q.spec.priorities.levels] if q and q.spec else []
        queue = str(ref)
        self.metrics.forget(queue, tuple(levels))

    async def purge_redis(self, body: Mapping[str, Any], logger: kopf.Logger, retry: int) -> None:
        """Delete the queue's Redis keys (retainRedisData: false)."""
        ref, target = queue_ref(body), event_target(body)
        admitted = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        try:
            spec = checked_spec(admitted)
            config = spec.to_queue_config(ref.name, ref.namespace)
        except InvalidSpec as exc:
            message = (
                f"Redis keys kept: the spec is invalid ({st.invalid_spec_message(exc.problems)})"
            )
            kopf.event(target, type="Warning", reason="RedisCleanupSkipped", message=message)
            return
        try:
            url = await resolve_url(secret_reader(self.api), ref.namespace, spec.redis)
            client = await AsyncClient.from_url(url, ref.name, ref.namespace, config)
            async with client:
                removed = await purge(client)
        except (KubeqError, ApiError) as exc:
            if retry < PURGE_RETRIES:
                raise kopf.TemporaryError(f"Redis cleanup failed: {exc}", delay=2.0**retry) from exc
            message = f"Redis keys kept after {retry + 1} attempts: {exc}"
            kopf.event(target, type="Warning", reason="RedisCleanupFailed", message=message)
            return
        logger.info(f"deleted {removed} Redis keys of {ref}")


# --- kopf wiring -------------------------------------------------------------------------


def _operator(memo: kopf.Memo) -> Operator:
    return cast(Operator, memo["operator"])


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = memo.get("settings") or load_settings()
    configure_kopf(settings, cfg)
    op = Operator(cfg, await KubeApi.from_environment(), OperatorMetrics())
    op.serve_metrics()
    memo["operator"] = op


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "operator" in memo:
        await _operator(memo).close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    await _operator(memo).reconcile(body, logger)


@kopf.daemon(GROUP, VERSION, PLURAL, id="autoscaler", cancellation_timeout=5.0)
async def autoscaler(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # A daemon per TaskQueue, not a timer: each queue has its own poll interval (and backoff).
    op = _operator(memo)
    try:
        while not stopped:
            delay = await op.tick(body, logger)
            deadline = time.monotonic() + delay
            # Short sleeps checking `stopped`, not `stopped.wait()`: that can raise at shutdown.
            while not stopped and (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(min(left, 0.2))
    finally:
        op.release(body)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGED_BY})
async def worker_deployment(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    # A raw event handler, not on.update/on.delete: those would make kopf write its own
    # annotations (and, for on.delete, a finalizer) onto every worker Deployment.
    if "operator" in memo:
        await _operator(memo).restore(event.get("type"), body, logger)


def _disposable(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("retainRedisData") is False


@kopf.on.delete(GROUP, VERSION, PLURAL, id="purge-redis", when=_disposable)
async def purge_redis(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, retry: int, **_: Any
) -> None:
    await _operator(memo).purge_redis(body, logger, retry)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True)
async def forget(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _operator(memo).forget(body)
