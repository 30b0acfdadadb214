"""`App`: the registry of task handlers a worker runs, and the producer shortcuts.

app = App("telemetry")

@app.task("telemetry.ingest", max_attempts=3, timeout=30, payload_model=Reading)
async def ingest(reading: Reading, ctx: TaskContext) -> dict: ...

app.connect("redis://redis:6379/0", "telemetry")
ingest.submit({"sensor": "a", "value": 1.5})
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from pydantic import BaseModel

from kubeq.middleware import Chain, Middleware
from kubeq.protocol import AsyncClient, Client, QueueConfig
from kubeq.protocol.ops import TASK_TYPE_PATTERN, TASK_TYPE_RE, encode_progress
from kubeq.protocol.workflow import FEED, Step

ExecutorKind = Literal["auto", "thread", "process"]
P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("kubeq.task")


@dataclass(slots=True)
class TaskContext:
    """What a handler knows about the attempt it runs."""

    task_id: str
    attempt: int
    max_attempts: int
    queue: str
    priority: str
    type: str
    logger: logging.Logger = field(default=log, repr=False)
    last_progress: Any = None
    #: shared by the middleware hooks of this attempt (e.g. a tracer's span)
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the task's headers from submit (e.g. the trace context kubeq.otel carries)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    # A plain flag, not a threading.Event: the worker sets it once and a thread handler
    # only reads it (one attribute store, atomic), and a flag costs nothing per task.
    _stopped: bool = field(default=False, repr=False)
    _fanout: Any = field(default=None, repr=False)  # the worker's, for async handlers
    #: where progress goes (the worker's buffer, or a child's pipe); None: kept only here
    _report: Callable[[str], None] | None = field(default=None, repr=False)

    async def submit(
        self, task_type: str, payload: Any = None, *, queue: str | None = None, **opts: Any
    ) -> str:
        """Submit a task from an async handler, on the worker's own connection: to this
        queue (with its config) or to another by name ("name" or "namespace/name")."""
        return str(await self._fanout_or_fail().submit(task_type, payload, queue=queue, **opts))

    async def submit_many(self, tasks: Any, *, queue: str | None = None) -> list[str]:
        """`submit` for many tasks (TaskRequest or dicts of its fields)."""
        return list(await self._fanout_or_fail().submit_many(tasks, queue=queue))

    def _fanout_or_fail(self) -> Any:
        if self._fanout is None:
            raise RuntimeError(
                "ctx.submit is available to async handlers run by a worker; from a sync "
                "handler (a child process or thread) use a Client of your own"
            )
        return self._fanout

    def stopped(self) -> bool:
        """True once the worker stopped this attempt (timeout, cancel, lost lease, drain).

        Only `executor="thread"` handlers need it: a thread cannot be killed, so a thread
        handler checks this between steps and returns. Async handlers are cancelled and
        process handlers killed instead.
        """
        return self._stopped

    def stop(self) -> None:
        """Mark this attempt stopped (the worker calls it; `stopped()` then says True)."""
        self._stopped = True

    def fields(self) -> dict[str, Any]:
        """What a child process needs to rebuild this context."""
        return {
            "task_id": self.task_id,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "queue": self.queue,
            "priority": self.priority,
            "type": self.type,
            "headers": self.headers,
        }

    def progress(self, value: Any) -> None:
        """Report progress that clients see in `Client.status(id).progress` while the task
        runs (JSON, pydantic models in JSON form, at most MAX_PROGRESS_BYTES encoded;
        ProgressNotStorable otherwise). Cheap to call often: the worker writes the latest
        value at most once a second per task; it is removed when the attempt ends."""
        encoded = encode_progress(value)
        self.last_progress = value
        if self._report is not None:
            self._report(encoded)
        self.logger.debug(
            "task %s progress %r",
            self.task_id,
            value,
            extra={
                "queue": self.queue,
                "task_id": self.task_id,
                "type": self.type,
                "attempt": self.attempt,
            },
        )


@dataclass(frozen=True, slots=True)
class TaskOptions:
    name: str
    max_attempts: int | None
    timeout: float | None
    retry_on: tuple[type[BaseException], ...]
    permanent: tuple[type[BaseException], ...]
    payload_model: type[BaseModel] | None
    executor: Literal["loop", "thread", "process"]


class TaskHandle(Generic[P, R]):
    """The decorated handler: still callable as before, plus `submit`/`asubmit`."""

    def __init__(self, app: App, fn: Callable[P, R], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.__name__ = getattr(fn, "__name__", options.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<kubeq task {self.name!r} of app {self.app.name!r}>"

    def _submit_args(self, payload: Any, opts: dict[str, Any]) -> dict[str, Any]:
        # The worker applies the handler's max_attempts whatever the submit path; through
        # the handle the record carries it too, so the reaper (which judges tasks whose
        # worker died, without the app) applies the same number.
        if opts.get("max_attempts") is None and self.options.max_attempts is not None:
            opts["max_attempts"] = self.options.max_attempts
        payload = json_payload(payload)
        self.app.middleware.on_submit(self.name, payload, opts)
        return {"payload": payload, **opts}

    def submit(self, payload: Any = None, *, client: Client | None = None, **opts: Any) -> str:
        """Enqueue one task; options as `Client.submit` (priority, delay, eta_ms, ...)."""
        c = client or self.app.client()
        return c.submit(self.name, **self._submit_args(payload, opts))

    async def asubmit(
        self, payload: Any = None, *, client: AsyncClient | None = None, **opts: Any
    ) -> str:
        """Enqueue one task through the app's AsyncClient; its id."""
        c = client or await self.app.aclient()
        return await c.submit(self.name, **self._submit_args(payload, opts))

    def step(
        self, payload: Any = FEED, *, priority: str | None = None, max_attempts: int | None = None
    ) -> Step:
        """A workflow step of this task type (for chain, group, chord, on_failure); without
        a payload it receives its inputs' results (see kubeq.protocol.workflow.Step)."""
        if max_attempts is None:
            max_attempts = self.options.max_attempts
        if payload is not FEED:
            payload = json_payload(payload)
        return Step(self.name, payload, priority, max_attempts)


class App:
    def __init__(
        self,
        name: str = "kubeq",
        *,
        default_timeout: float | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.name = name
        self.default_timeout = default_timeout
        self.middleware = Chain(middleware)
        self.tasks: dict[str, TaskHandle[..., Any]] = {}
        self._target: tuple[str, str, str, QueueConfig | None] | None = None
        self._client: Client | None = None
        # One AsyncClient per event loop: a client cannot outlive the loop it was made on.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def add_middleware(self, middleware: Middleware) -> None:
        """Append one middleware (see kubeq.middleware for the hooks and their order)."""
        self.middleware.items.append(middleware)

    @overload
    def task(self, name: Callable[P, R]) -> TaskHandle[P, R]: ...

    @overload
    def task(
        self,
        name: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        permanent: tuple[type[BaseException], ...] = (),
        payload_model: type[BaseModel] | None = None,
        executor: ExecutorKind = "auto",
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]: ...

    def task(
        self,
        name: str | Callable[..., Any] | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        permanent: tuple[type[BaseException], ...] = (),
        payload_model: type[BaseModel] | None = None,
        executor: ExecutorKind = "auto",
    ) -> Any:
        """Register a handler `(payload, ctx)`; the name defaults to `module.function`."""
        if callable(name):
            return self.task()(name)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")

        def register(fn: Callable[P, R]) -> TaskHandle[P, R]:
            task_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if not TASK_TYPE_RE.match(task_name):
                # Refused here, at import, rather than at the first submit.
                raise ValueError(
                    f"task type {task_name!r} does not follow the safe pattern "
                    f"{TASK_TYPE_PATTERN} (docs/security.md): pass name=..."
                )
            if task_name in self.tasks:
                raise ValueError(f"task type {task_name!r} is already registered in {self.name}")
            is_async = inspect.iscoroutinefunction(fn)
            if is_async and executor != "auto":
                raise TypeError(
                    f"{task_name}: async handlers run on the event loop; "
                    f"executor={executor!r} needs a plain function"
                )
            # Sync handlers run in child processes the worker can kill; threads only when
            # asked for (a thread cannot be stopped, only told to stop: ctx.stopped()).
            kind: Literal["loop", "thread", "process"] = (
                "loop" if is_async else "process" if executor == "auto" else executor
            )
            if kind == "process" and "<locals>" in getattr(fn, "__qualname__", ""):
                raise TypeError(
                    f"{task_name}: a sync handler runs in a child process that imports it by "
                    "name, so it must be defined at module level (or pass executor='thread')"
                )
            options = TaskOptions(
                task_name,
                max_attempts,
                timeout,
                tuple(retry_on),
                tuple(permanent),
                payload_model,
                kind,
            )
            handle = TaskHandle(self, fn, options)
            self.tasks[task_name] = handle
            return handle

        return register

    # -- producer side -------------------------------------------------------------------

    def connect(
        self, url: str, queue: str, namespace: str = "default", config: QueueConfig | None = None
    ) -> App:
        """Bind the `submit` shortcuts to a queue (connections open on first use)."""
        self._target = (url, queue, namespace, config)
        return self

    def client(self) -> Client:
        """The app's Client for the connected queue (made on first use)."""
        if self._client is None:
            url, queue, namespace, config = self._require_target()
            self._client = Client.from_url(url, queue, namespace, config)
        return self._client

    async def aclient(self) -> AsyncClient:
        """The app's AsyncClient for the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        c = self._aclients.get(loop)
        if c is None:
            url, queue, namespace, config = self._require_target()
            c = self._aclients[loop] = await AsyncClient.from_url(url, queue, namespace, config)
        return c

    def _require_target(self) -> tuple[str, str, str, QueueConfig | None]:
        if self._target is None:
            raise RuntimeError(
                f"app {self.name!r} is not connected: call "
                "app.connect(url, queue) or pass client=..."
            )
        return self._target

    def close(self) -> None:
        """Close the app's Client."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Close the AsyncClient of the running event loop."""
        c = self._aclients.pop(asyncio.get_running_loop(), None)
        if c is not None:
            await c.close()


def json_payload(payload: Any) -> Any:
    """A pydantic model becomes its JSON-mode dump; anything else is left as it is."""
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return payload


def load_app(ref: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) and check it is an App."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise TypeError(f"{ref} is a {type(obj).__name__}, not a kubeq App")
    return obj
