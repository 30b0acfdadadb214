"""Every error kubeq raises to its callers. One base class; each failure a distinct type."""

from __future__ import annotations


class KubeqError(Exception):
    """Base of every kubeq error.

    When `submit_many` fails after some chunks were written, the error it raises (whatever
    its type) carries `accepted`: the ids earlier chunks certainly enqueued, and
    `uncertain`: the ids of the chunk whose reply was lost (a connection failure), which
    may or may not have been enqueued (resubmit them with idempotency keys to be sure).
    """

    accepted: list[str] = []
    uncertain: list[str] = []


class ConfigError(KubeqError):
    """A setting, URL or queue configuration is invalid."""


class InvalidURL(ConfigError):
    """The Redis URL cannot be used."""


class ConnectionFailed(KubeqError):
    """Redis cannot be reached (refused, timed out, DNS, TLS)."""


class AuthenticationFailed(ConnectionFailed):
    """Redis refused the credentials (wrong password or ACL user)."""


class PermissionDenied(KubeqError):
    """Redis refused a command or key to this ACL user (NOPERM): see docs/security.md."""


class InvalidTask(KubeqError):
    """A task cannot be accepted as submitted (never reaches Redis)."""


class PayloadNotJSON(InvalidTask):
    """The payload cannot be encoded as JSON."""


class PayloadTooLarge(InvalidTask):
    """The encoded payload is larger than the queue's limit."""


class UnknownPriority(InvalidTask):
    """The priority names no level of the queue."""


class PayloadTooDeep(InvalidTask):
    """The payload nests lists/objects deeper than the documented limit."""


class InvalidText(InvalidTask):
    """A string cannot be encoded as UTF-8 (e.g. a lone surrogate)."""


class TaskExists(InvalidTask):
    """A caller-chosen task id is already in use (pending, running, dead or finished)."""


class ResultNotStorable(InvalidTask):
    """A handler's result cannot be stored; that task fails with this error."""


class ResultNotJSON(ResultNotStorable, PayloadNotJSON):
    """The result cannot be encoded as JSON (or as UTF-8)."""


class ResultTooLarge(ResultNotStorable):
    """The encoded result is larger than the queue's maxResultBytes."""


class ProgressNotStorable(InvalidTask):
    """A `ctx.progress` value is not JSON, or larger than MAX_PROGRESS_BYTES encoded."""


class QueueFull(KubeqError):
    """The queue's maxBacklog would be exceeded; nothing of the refused chunk was enqueued."""

    def __init__(self, message: str, accepted: list[str] | None = None) -> None:
        super().__init__(message)
        #: ids enqueued by earlier chunks of the same submit_many call, before the refusal
        self.accepted = accepted or []


class TaskNotFound(KubeqError):
    """No task with that id (never existed, or its record expired)."""


class ResultTimeout(KubeqError):
    """`result(..., timeout=...)` gave up waiting."""


class TaskFailed(KubeqError):
    """`result()` of a task that ended dead-lettered or cancelled."""

    def __init__(self, message: str, status: str, error: object | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class ProtocolError(KubeqError):
    """Redis answered something the protocol does not allow (a bug or a foreign writer)."""


class ScriptError(ProtocolError):
    """A protocol script refused its arguments or met state it cannot act on."""


class RedisOutOfMemory(KubeqError):
    """Redis refused a write: maxmemory reached (a transient condition for a worker).

    A refused script wrote nothing: Redis 7 refuses a script that may write as a whole.
    """
