"""Per-queue settings shared by producers, workers, the operator and `kubeq up`.

A `QueueConfig` is what a TaskQueue's spec means to the protocol. Producers and workers
of one queue must agree on it (priority levels above all), so the operator and
`kubeq up` publish it to Redis and clients that were not given one read it from there.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Queue and namespace names go into key names inside a hash tag: no braces, no colons.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 24 * 3600
MAX_ATTEMPTS_CAP = 1000


def check_name(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{kind} {value!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PriorityLevel(_Frozen):
    """One named level; `weight` matters only in weighted mode."""

    name: str
    weight: int = Field(default=1, ge=1, le=1000)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name("priority level", v)


class Backoff(_Frozen):
    """Exponential backoff with full jitter: delay = uniform(0, min(max, base * factor**n))."""

    base_seconds: float = Field(default=1.0, gt=0)
    factor: float = Field(default=2.0, ge=1)
    max_seconds: float = Field(default=300.0, gt=0)


class RateLimit(_Frozen):
    """One token bucket per queue, shared by every worker of the pool."""

    per_second: float = Field(gt=0)
    burst: int = Field(default=1, ge=1)


DEFAULT_LEVELS = (
    PriorityLevel(name="high"),
    PriorityLevel(name="default"),
    PriorityLevel(name="low"),
)


class QueueConfig(_Frozen):
    name: str
    namespace: str = "default"
    # Highest priority first.
    priorities: tuple[PriorityLevel, ...] = DEFAULT_LEVELS
    default_priority: str | None = None
    mode: Literal["strict", "weighted"] = "strict"
    max_attempts: int = Field(default=5, ge=1, le=MAX_ATTEMPTS_CAP)
    backoff: Backoff = Backoff()
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    result_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    dead_letter_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    #: None: the result TTL, capped at 24 h. Never longer than the result TTL: an
    #: idempotent resubmit returns the first task's id, whose result must still be there.
    idempotency_ttl_seconds: int | None = Field(default=None, ge=1)
    max_backlog: int | None = Field(default=None, ge=1)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1)
    max_result_bytes: int = Field(default=DEFAULT_MAX_RESULT_BYTES, ge=1)
    rate_limit: RateLimit | None = None

    @field_validator("name")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        return check_name("queue name", v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return check_name("namespace", v)

    @model_validator(mode="after")
    def _consistent(self) -> QueueConfig:
        names = [p.name for p in self.priorities]
        if not names:
            raise ValueError("at least one priority level is required")
        if len(set(names)) != len(names):
            raise ValueError(f"priority level names must be unique, got {names}")
        if self.default_priority is not None and self.default_priority not in names:
            raise ValueError(
                f"default_priority {self.default_priority!r} is not one of the levels {names}"
            )
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than "
                f"lease_seconds ({self.lease_seconds})"
            )
        if (
            self.idempotency_ttl_seconds is not None
            and self.idempotency_ttl_seconds > self.result_ttl_seconds
        ):
            raise ValueError(
                f"idempotency_ttl_seconds ({self.idempotency_ttl_seconds}) must not exceed "
                f"result_ttl_seconds ({self.result_ttl_seconds}): a resubmit within the key's "
                "TTL returns the first task's id, whose result would already be gone"
            )
        return self

    @property
    def idempotency_ttl(self) -> int:
        """Seconds an idempotency key lives: as set, else the result TTL capped at 24 h."""
        if self.idempotency_ttl_seconds is not None:
            return self.idempotency_ttl_seconds
        return min(DEFAULT_IDEMPOTENCY_TTL_SECONDS, self.result_ttl_seconds)

    @property
    def full_name(self) -> str:
        """`namespace/name`: the queue's identity in keys, metrics labels and logs."""
        return f"{self.namespace}/{self.name}"

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.priorities)

    @property
    def default_level(self) -> str:
        if self.default_priority is not None:
            return self.default_priority
        names = self.level_names
        return "default" if "default" in names else names[len(names) // 2]
