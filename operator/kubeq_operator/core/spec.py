"""Pydantic models of the TaskQueue resource, mirroring crds/taskqueue.yaml field by field.

The CRD is the source of truth; tests/unit/operator/test_spec.py walks both schemas and
fails on any drift (fields, types, defaults, enums, ranges). The models exist because the
operator must not trust its input: `kubeq up` reads YAML without an API server, and even
a real API server does not evaluate CEL rules on clusters older than the CRD expects.
Every CEL rule of the CRD has a validator here with the same meaning.

Models are strict (no "5" for 5, as the API server) and frozen (a spec is an input).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from kubeq.protocol.config import (
    NAME_PATTERN,
    Backoff,
    PriorityLevel,
    QueueConfig,
    RateLimit,
)
from kubeq_operator.core.errors import InvalidSpec

SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
REDIS_URL_PATTERN = r"^(redis|rediss|unix)://.+$"

# Environment variables the operator sets on the worker container; users may not override
# them through spec.worker.env (the CRD's CEL rule lists the same names).
OPERATOR_ENV = (
    "KUBEQ_REDIS_URL",
    "KUBEQ_REDIS_USERNAME",
    "KUBEQ_REDIS_PASSWORD",
    "KUBEQ_REDIS_TLS",
    "KUBEQ_REDIS_TLS_INSECURE_SKIP_VERIFY",
    "KUBEQ_REDIS_TLS_CA_FILE",
    "KUBEQ_REDIS_TLS_CERT_FILE",
    "KUBEQ_REDIS_TLS_KEY_FILE",
    "KUBEQ_CONCURRENCY",
    "KUBEQ_POD_NAME",
    "KUBEQ_POD_NAMESPACE",
    "KUBEQ_METRICS_PORT",
    "KUBEQ_QUEUE_CONFIG",
)


def _cross_field(field: str, message: str, **context: Any) -> PydanticCustomError:
    """An error about one sibling field, raised from a model validator.

    Pydantic locates model-validator errors at the model; `field` lets `parse_spec`
    point at the field itself, as the CEL rule's fieldPath does.
    """
    return PydanticCustomError("cross_field", message, {"field": field, **context})


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
    )


class _Open(_Model):
    """An object the CRD marks x-kubernetes-preserve-unknown-fields (a Kubernetes type)."""

    model_config = ConfigDict(extra="allow")


# --- redis -------------------------------------------------------------------------------


class _SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)


class RedisUrlSecretRef(_SecretKeyRef):
    key: str = Field(default="url", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)


class CaSecretRef(_SecretKeyRef):
    key: str = Field(default="ca.crt", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)


class PasswordSecretRef(_SecretKeyRef):
    key: str = Field(default="password", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)


class ClientCertSecretRef(_SecretKeyRef):
    """A kubernetes.io/tls Secret: the client certificate and its key, for mutual TLS."""

    cert_key: str = Field(
        default="tls.crt", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN
    )
    key_key: str = Field(
        default="tls.key", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN
    )


class RedisTls(_Model):
    enabled: bool = False
    insecure_skip_verify: bool = False
    ca_secret_ref: CaSecretRef | None = None
    client_cert_secret_ref: ClientCertSecretRef | None = None

    @model_validator(mode="after")
    def _options_need_tls(self) -> RedisTls:
        # A CA or a client certificate on a plain connection was a TypeError in every worker.
        if not self.enabled and (
            self.insecure_skip_verify or self.ca_secret_ref or self.client_cert_secret_ref
        ):
            raise _cross_field(
                "enabled",
                "must be true when insecureSkipVerify, caSecretRef or clientCertSecretRef is set",
            )
        return self


class RedisSpec(_Model):
    url: str | None = Field(default=None, max_length=2048, pattern=REDIS_URL_PATTERN)
    secret_ref: RedisUrlSecretRef | None = None
    tls: RedisTls = RedisTls()
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_secret_ref: PasswordSecretRef | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> RedisSpec:
        if (self.url is None) == (self.secret_ref is None):
            raise _cross_field("url", "exactly one of url and secretRef must be set")
        return self


# --- queue semantics -----------------------------------------------------------------------


class Level(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    weight: int = Field(default=1, ge=1, le=1000)


DEFAULT_LEVELS = [Level(name="high"), Level(name="default"), Level(name="low")]


class Priorities(_Model):
    mode: Literal["strict", "weighted"] = "strict"
    levels: list[Level] = Field(default=DEFAULT_LEVELS, min_length=1, max_length=16)
    default_level: str | None = Field(default=None, alias="default", min_length=1, max_length=63)

    @model_validator(mode="after")
    def _consistent(self) -> Priorities:
        names = [level.name for level in self.levels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:  # the CRD's list-map key enforces this on the API server
            raise _cross_field("levels", "duplicate level names: {names}", names=duplicates)
        if self.default_level is not None and self.default_level not in names:
            raise _cross_field(
                "default",
                "must name one of the levels ('{value}' is not in {names})",
                value=self.default_level,
                names=names,
            )
        return self


class BackoffSpec(_Model):
    base_seconds: float = Field(default=1, gt=0, le=86400)
    factor: float = Field(default=2, ge=1, le=100)
    max_seconds: float = Field(default=300, gt=0, le=604800)

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSpec:
        if self.base_seconds > self.max_seconds:
            raise _cross_field(
                "baseSeconds",
                "must be <= maxSeconds ({base} > {max})",
                base=f"{self.base_seconds:g}",
                max=f"{self.max_seconds:g}",
            )
        return self


class Retry(_Model):
    max_attempts: int = Field(default=5, ge=1, le=1000)
    backoff: BackoffSpec = BackoffSpec()


class DeadLetter(_Model):
    retention_seconds: int = Field(default=604800, ge=1, le=31536000)


class Results(_Model):
    ttl_seconds: int = Field(default=86400, ge=1, le=31536000)
    idempotency_ttl_seconds: int | None = Field(default=None, ge=1, le=31536000)

    @model_validator(mode="after")
    def _idempotency_within_results(self) -> Results:
        if (
            self.idempotency_ttl_seconds is not None
            and self.idempotency_ttl_seconds > self.ttl_seconds
        ):
            raise _cross_field(
                "idempotencyTtlSeconds",
                "must be <= ttlSeconds ({idem} > {ttl})",
                idem=self.idempotency_ttl_seconds,
                ttl=self.ttl_seconds,
            )
        return self


class Lease(_Model):
    duration_seconds: float = Field(default=30, ge=1, le=3600)
    heartbeat_seconds: float = Field(default=10, gt=0, le=3600)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Lease:
        if self.heartbeat_seconds >= self.duration_seconds:
            raise _cross_field(
                "heartbeatSeconds",
                "must be < durationSeconds ({hb} >= {d})",
                hb=f"{self.heartbeat_seconds:g}",
                d=f"{self.duration_seconds:g}",
            )
        return self


class RateLimitSpec(_Model):
    per_second: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


# --- schedules ---------------------------------------------------------------------------------


class Schedule(_Model):
    """One entry of spec.schedules: a task submitted on every tick (core/schedules.py)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    interval_seconds: int | None = Field(default=None, ge=1, le=31536000)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    task: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,199}$")
    payload: dict[str, Any] | None = None
    priority: str | None = Field(default=None, min_length=1, max_length=63)
    missed_runs: Literal["Skip", "RunOnce"] = "Skip"
    starting_deadline_seconds: int = Field(default=60, ge=1, le=31536000)
    catch_up_limit_seconds: int = Field(default=86400, ge=1, le=31536000)
    suspend: bool = False

    @model_validator(mode="after")
    def _valid_timing(self) -> Schedule:
        if (self.cron is None) == (self.interval_seconds is None):
            raise _cross_field("cron", "set exactly one of cron and intervalSeconds")
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _cross_field(
                "timezone",
                "unknown time zone '{tz}' (an IANA name such as Europe/Berlin)",
                tz=self.timezone,
            ) from None
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as exc:
                raise _cross_field(
                    "cron", "invalid cron expression '{expr}': {why}", expr=self.cron, why=str(exc)
                ) from None
        return self


# --- worker pool -------------------------------------------------------------------------------


class EnvVar(_Open):
    name: str = Field(min_length=1)


class ImagePullSecret(_Model):
    name: str = Field(min_length=1, max_length=253)


class PodTemplate(_Model):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    affinity: dict[str, Any] | None = None
    topology_spread_constraints: list[dict[str, Any]] | None = None
    service_account_name: str | None = Field(default=None, min_length=1, max_length=253)
    automount_service_account_token: bool = False
    priority_class_name: str | None = Field(default=None, min_length=1, max_length=253)
    runtime_class_name: str | None = Field(default=None, min_length=1, max_length=253)
    image_pull_secrets: list[ImagePullSecret] | None = None
    security_context: dict[str, Any] | None = None
    container_security_context: dict[str, Any] | None = None
    volumes: list[dict[str, Any]] | None = None
    volume_mounts: list[dict[str, Any]] | None = None


class Worker(_Model):
    image: str = Field(min_length=1, max_length=1024)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    app: str = Field(min_length=3, max_length=256, pattern=APP_PATTERN)
    concurrency: int = Field(default=16, ge=1, le=10000)
    resources: dict[str, Any] | None = None
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    pod_template: PodTemplate | None = None
    termination_grace_period_seconds: int = Field(default=60, ge=1, le=86400)
    metrics_port: int = Field(default=9100, ge=1024, le=65535)

    @model_validator(mode="after")
    def _no_operator_env(self) -> Worker:
        taken = [e.name for e in self.env or () if e.name in OPERATOR_ENV]
        if taken:
            raise _cross_field(
                "env",
                "must not set variables that the operator sets: {names}",
                names=taken,
            )
        return self


class Autoscaling(_Model):
    enabled: bool = True
    min_replicas: int = Field(default=0, ge=0, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    target_backlog_per_replica: int = Field(default=100, ge=1)
    activation_backlog: int = Field(default=0, ge=0)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    cooldown_to_zero_seconds: int = Field(default=300, ge=0, le=86400)
    max_step_up: int | None = Field(default=None, ge=1)
    max_step_down: int | None = Field(default=None, ge=1)
    poll_interval_seconds: float = Field(default=10, ge=0.5, le=3600)
    fallback_replicas: int | None = Field(default=None, ge=0, le=1000)
    target_drain_seconds: float | None = Field(default=None, ge=1, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise _cross_field(
                "minReplicas",
                "must be <= maxReplicas ({min} > {max})",
                min=self.min_replicas,
                max=self.max_replicas,
            )
        if self.fallback_replicas is not None and self.fallback_replicas > self.max_replicas:
            raise _cross_field(
                "fallbackReplicas",
                "must be <= maxReplicas ({fallback} > {max})",
                fallback=self.fallback_replicas,
                max=self.max_replicas,
            )
        return self


# --- the resource --------------------------------------------------------------------------


class TaskQueueSpec(_Model):
    redis: RedisSpec
    priorities: Priorities = Priorities()
    retry: Retry = Retry()
    dead_letter: DeadLetter = DeadLetter()
    results: Results = Results()
    lease: Lease = Lease()
    max_backlog: int | None = Field(default=None, ge=1)
    max_payload_bytes: int = Field(default=1048576, ge=1, le=67108864)
    max_result_bytes: int = Field(default=1048576, ge=1, le=67108864)
    worker: Worker
    autoscaling: Autoscaling = Autoscaling()
    replicas: int | None = Field(default=None, ge=0, le=1000)
    rate_limit: RateLimitSpec | None = None
    retain_redis_data: bool = True
    schedules: list[Schedule] | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _schedules_fit_the_queue(self) -> TaskQueueSpec:
        names = [s.name for s in self.schedules or ()]
        for i, sched in enumerate(self.schedules or ()):
            if names.index(sched.name) != i:
                raise _cross_field("schedules", "schedule name '{n}' is used twice", n=sched.name)
            levels = [lv.name for lv in self.priorities.levels]
            if sched.priority is not None and sched.priority not in levels:
                raise _cross_field(
                    "schedules",
                    "schedule '{n}': priority '{p}' is not a level ({levels})",
                    n=sched.name,
                    p=sched.priority,
                    levels=", ".join(levels),
                )
        return self

    @property
    def static_replicas(self) -> int:
        """Worker count when autoscaling is disabled."""
        return 1 if self.replicas is None else self.replicas

    def to_queue_config(self, name: str, namespace: str) -> QueueConfig:
        """What this spec means to the protocol; raises InvalidSpec (e.g. a bad queue name)."""
        try:
            return QueueConfig(
                name=name,
                namespace=namespace,
                priorities=tuple(
                    PriorityLevel(name=lv.name, weight=lv.weight) for lv in self.priorities.levels
                ),
                default_priority=self.priorities.default_level,
                mode=self.priorities.mode,
                max_attempts=self.retry.max_attempts,
                backoff=Backoff(
                    base_seconds=self.retry.backoff.base_seconds,
                    factor=self.retry.backoff.factor,
                    max_seconds=self.retry.backoff.max_seconds,
                ),
                lease_seconds=self.lease.duration_seconds,
                heartbeat_seconds=self.lease.heartbeat_seconds,
                result_ttl_seconds=self.results.ttl_seconds,
                idempotency_ttl_seconds=self.results.idempotency_ttl_seconds,
                dead_letter_retention_seconds=self.dead_letter.retention_seconds,
                max_backlog=self.max_backlog,
                max_payload_bytes=self.max_payload_bytes,
                max_result_bytes=self.max_result_bytes,
                rate_limit=(
                    None
                    if self.rate_limit is None
                    else RateLimit(
                        per_second=self.rate_limit.per_second, burst=self.rate_limit.burst
                    )
                ),
            )
        except ValidationError as exc:
            # Only the identity can fail here: everything else was checked by the spec model.
            where = {"name": "metadata.name", "namespace": "metadata.namespace"}
            raise InvalidSpec(
                f"{where.get(str(e['loc'][0]), 'spec') if e['loc'] else 'spec'}: {_message(e)}"
                for e in exc.errors()
            ) from exc


class Condition(_Model):
    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str | None = Field(default=None, max_length=1024)
    message: str | None = Field(default=None, max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = Field(default=None, ge=0)


class ScheduleStatus(_Model):
    name: str
    last_run: str | None = None  # RFC 3339: the tick last fired
    next_run: str | None = None
    last_task_id: str | None = None
    suspended: bool | None = None


class TaskQueueStatus(_Model):
    """The status the operator writes; dump with `model_dump(by_alias=True, exclude_none=True)`."""

    conditions: list[Condition] | None = None
    observed_generation: int | None = Field(default=None, ge=0)
    replicas: int | None = Field(default=None, ge=0)
    desired_replicas: int | None = Field(default=None, ge=0)
    waiting: int | None = Field(default=None, ge=0)
    in_flight: int | None = Field(default=None, ge=0)
    backlog: int | None = Field(default=None, ge=0)
    dead_letter: int | None = Field(default=None, ge=0)
    waiting_by_priority: dict[str, int] | None = None
    backlog_by_priority: dict[str, int] | None = None
    paused: bool | None = None
    last_scale_time: str | None = None
    last_scale_reason: str | None = Field(default=None, max_length=1024)
    selector: str | None = None
    schedules: list[ScheduleStatus] | None = None


# --- parsing -------------------------------------------------------------------------------


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    msg = error["msg"].removeprefix("Value error, ")
    if kind == "cross_field":
        return msg
    value = error.get("input")
    if isinstance(value, dict | list):
        return msg[:1].lower() + msg[1:]
    return f"{msg[:1].lower()}{msg[1:]} (got {value!r})"


def format_errors(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """One "path: message" line per pydantic error, with camelCase paths as in the CRD."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "cross_field":
            loc = (*loc, ctx["field"])
        problems.append(f"{prefix}{_path(loc)}: {_message(error)}")
    return problems


def parse_spec(body_spec: object) -> TaskQueueSpec:
    """Validate a TaskQueue's `.spec` (a plain dict); raises InvalidSpec naming every bad field."""
    if not isinstance(body_spec, dict):
        raise InvalidSpec([f"spec: must be an object (got {type(body_spec).__name__})"])
    try:
        return TaskQueueSpec.model_validate(body_spec)
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc)) from exc


def parse_status(body_status: object) -> TaskQueueStatus:
    """Validate a TaskQueue's `.status`; raises InvalidSpec (e.g. for a hand-edited status)."""
    try:
        return TaskQueueStatus.model_validate(body_status or {})
    except ValidationError as exc:
        raise InvalidSpec(format_errors(exc, prefix="status")) from exc
