"""Pure builders of a TaskQueue's status: conditions and the autoscaler's observations.

The handlers write what these return with a merge patch of `.status`; a merge patch replaces
a list whole, so conditions are always computed as the complete list.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from kubeq_operator.core.scaling import Tick
from kubeq_operator.core.spec import Condition

READY = "Ready"
REDIS_REACHABLE = "RedisReachable"
SCALING = "Scaling"
#: present only while spec.redis.url carries a password (status False, reason InlinePassword)
CREDENTIALS_SAFE = "CredentialsSafe"
#: present only while Redis runs a maxmemory-policy that may evict accepted tasks
EVICTION_POLICY_SAFE = "EvictionPolicySafe"
ORDER = (READY, REDIS_REACHABLE, SCALING, CREDENTIALS_SAFE, EVICTION_POLICY_SAFE)
INLINE_PASSWORD_MESSAGE = (
    "spec.redis.url carries a password: anyone who can read this TaskQueue, and the "
    "operator's debug log, can read it. Move it to a Secret (redis.passwordSecretRef, or "
    "redis.secretRef for the whole URL); see docs/security.md"
)

MAX_MESSAGE = 32768  # the CRD's limits
MAX_SCALE_REASON = 1024


def timestamp(now: datetime.datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_conditions(raw: object) -> list[Condition]:
    """Conditions from a live status; entries that do not parse are dropped, not fatal."""
    out: list[Condition] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            out.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return out


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """The conditions with `type` set; lastTransitionTime moves only when the status does."""
    value: Literal["True", "False"] = "True" if status else "False"
    old = next((c for c in conditions if c.type == type), None)
    since = old.last_transition_time if old is not None and old.status == value else None
    new = Condition(
        type=type,
        status=value,
        reason=reason,
        message=_clip(message, MAX_MESSAGE),
        last_transition_time=since or now,
        observed_generation=generation,
    )
    rest = [c for c in conditions if c.type != type]
    rank = {t: i for i, t in enumerate(ORDER)}
    return sorted([*rest, new], key=lambda c: rank.get(c.type, len(ORDER)))


def without_condition(conditions: Sequence[Condition], type: str) -> list[Condition]:
    return [c for c in conditions if c.type != type]


# False by the user's choice, not a failure: announced, but not as a Warning.
CHOSEN_FALSE = frozenset({"AutoscalingDisabled"})
# The Normal Event's reason when a condition recovers (False → True).
RECOVERED = {READY: "Reconciled", REDIS_REACHABLE: "RedisReachable", SCALING: "ScalingResumed"}


def transition_event(
    before: Condition | None, after: Condition
) -> tuple[Literal["Normal", "Warning"], str, str] | None:
    """The Event (type, reason, message) a condition change deserves, None for none.

    A condition turning False, or staying False for a new reason or message, is a Warning
    with that reason; a recovery (False → True) is Normal. A condition first seen True,
    or unchanged, says nothing new.
    """
    same = before is not None and (before.status, before.reason, before.message) == (
        after.status,
        after.reason,
        after.message,
    )
    if after.status == "False" and not same:
        kind: Literal["Normal", "Warning"] = "Normal" if after.reason in CHOSEN_FALSE else "Warning"
        return kind, after.reason or after.type, after.message or ""
    if after.status == "True" and before is not None and before.status == "False":
        return "Normal", RECOVERED.get(after.type, after.type), after.message or ""
    return None


def find(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def condition_status(conditions: Sequence[Condition], type: str) -> str | None:
    return next((c.status for c in conditions if c.type == type), None)


def dump_conditions(conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    return [c.model_dump(by_alias=True, exclude_none=True) for c in conditions]


def invalid_spec_message(problems: Sequence[str]) -> str:
    """Every problem, so a user fixes them all at once."""
    return "; ".join(problems)


def redis_condition(error: str | None) -> tuple[bool, str, str]:
    """(status, reason, message) of RedisReachable, from the last Redis error (None: fine)."""
    if error is None:
        return True, "Connected", "the queue's Redis answers"
    lowered = error.lower()
    if lowered.startswith("secret ") or "redis secret" in lowered:
        reason = "SecretUnavailable"
    elif "denied this acl user" in lowered:
        reason = "PermissionDenied"
    elif "credentials" in lowered or "auth" in lowered:
        reason = "AuthenticationFailed"
    elif "redis url" in lowered:
        reason = "InvalidURL"
    else:
        reason = "ConnectionFailed"
    return False, reason, error


def scaling_condition(tick: Tick, *, enabled: bool) -> tuple[bool, str, str]:
    """(status, reason, message) of Scaling: is the autoscaler acting on fresh readings?"""
    reason = tick.decision.reason
    if not enabled:
        return False, "AutoscalingDisabled", reason
    if tick.stats is None:
        return False, "RedisUnreachable", reason
    if tick.decision.direction == "up":
        return True, "ScaledUp", reason
    if tick.decision.direction == "down":
        return True, "ScaledDown", reason
    return True, "Stable", reason


def observed_fields(tick: Tick, *, now: str) -> dict[str, Any]:
    """Status fields an autoscaler tick determines (backlog fields only when Redis answered)."""
    fields: dict[str, Any] = {
        "replicas": max(0, tick.ready),
        "desiredReplicas": tick.decision.replicas,
    }
    if tick.stats is not None:
        stats = tick.stats
        # One definition everywhere (kubeq.protocol.LevelStats): waiting = ready + due,
        # backlog = waiting + in flight (what the autoscaler scales on).
        fields |= {
            "waiting": stats.waiting,
            "inFlight": stats.in_flight,
            "backlog": stats.backlog,
            "deadLetter": stats.dead,
            "waitingByPriority": {lv.name: lv.waiting for lv in stats.levels},
            "backlogByPriority": {lv.name: lv.backlog for lv in stats.levels},
            "paused": stats.paused,
        }
    if tick.decision.changed:
        fields |= {
            "lastScaleTime": now,
            "lastScaleReason": _clip(tick.decision.reason, MAX_SCALE_REASON),
        }
    return fields


def scale_event(tick: Tick) -> tuple[str, str] | None:
    """(reason, message) of the Event for a replica change, None when nothing changed."""
    if not tick.decision.changed:
        return None
    reason = "ScaledUp" if tick.decision.direction == "up" else "ScaledDown"
    return reason, f"{tick.current} → {tick.decision.replicas}: {tick.decision.reason}"


def changed(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether a status patch would change anything the operator wrote last time."""
    return previous is None or any(previous.get(k) != v for k, v in current.items())
