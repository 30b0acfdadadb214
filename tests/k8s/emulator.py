"""kmock's Kubernetes emulator, with what kopf needs and kmock 0.8 lacks, and kopf runners.

The four gaps (see KUBERNETES-TESTING.md): a resourceVersion that changes on every write
(plus uid, creationTimestamp and a generation bumped on spec changes), generateName,
201 on POST, and 422 for a failed JSON-patch `test`. The TaskQueue resource is registered
from crds/ (kmock ignores CRD objects) and the built-in kinds from kmock's bundle, kopf's
peering kinds from the chart's CRDs.

Beyond those, it answers as an API server where the operator has a path for it: 422 for
an invalid Deployment (an env var name with `=`, a probe without a handler or with a bad
port), 400 for an unparseable quantity, 409 for a stale resourceVersion, `/status`
writing only `.status` (and the main resource ignoring it), owner-reference garbage
collection, and injected failures (`faults`) for any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import gzip
import importlib.resources
import itertools
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kopf
import kubernetes.client
import kubernetes.config.kube_config
import yaml

from kubeq_operator.core.crd_schema import resource_names
from kubeq_operator.kube.backend import KubeApi
from kubeq_operator.kube.settings import OperatorSettings

T = TypeVar("T")
PEERING_CRDS = Path(__file__).resolve().parents[2] / "charts" / "kubeq" / "crds"


def _merge(value: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386), as kmock applies it."""
    out = dict(value)
    for key, new in patch.items():
        if new is None:
            out.pop(key, None)
        elif isinstance(new, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], new)
        else:
            out[key] = new
    return out


# A resource quantity as the API server parses it ("cannot be handled as a Deployment").
_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([eE][+-]?[0-9]+)|[KMGTPE]i|[numkMGTPE])?$"
)

# A request the test wants refused: the error to answer with, or None to serve it normally.
Fault = Callable[[kmock.Request], "kmock.KubernetesError | None"]


def _invalid(message: str, kind: str = "Deployment") -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=422, reason="Invalid", message=f"{kind} is invalid: {message}"
    )


def validate_deployment(obj: Mapping[str, Any]) -> None:
    """The checks of a real API server that the operator has error paths for: an env var
    name the kubelet cannot set (422), an unparseable resource quantity (400)."""
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    for i, container in enumerate(pod.get("containers") or []):
        where = f"spec.template.spec.containers[{i}]"
        for j, env in enumerate(container.get("env") or []):
            name = str((env or {}).get("name", ""))
            if not name or "=" in name or not name.isprintable() or not name.isascii():
                raise _invalid(
                    f'{where}.env[{j}].name: Invalid value: "{name}": a valid environment'
                    " variable name must consist only of printable ASCII characters other"
                    " than '='"
                )
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe]
            if len(handlers) != 1:
                raise _invalid(f"{where}.{kind}: Required value: must specify a handler type")
            port = (probe.get(handlers[0]) or {}).get("port")
            names = {p.get("name") for p in container.get("ports") or []}
            if handlers[0] in ("httpGet", "tcpSocket") and not (
                (isinstance(port, int) and 1 <= port <= 65535) or port in names
            ):
                raise _invalid(f"{where}.{kind}.{handlers[0]}.port: Invalid value: {port!r}")
        resources = container.get("resources") or {}
        for part in ("limits", "requests"):
            for resource, value in (resources.get(part) or {}).items():
                if not _QUANTITY.match(str(value)):
                    raise kmock.KubernetesError(
                        status=400,
                        reason="BadRequest",
                        message=f'Deployment in version "v1" cannot be handled as a Deployment:'
                        f" quantities must match the regular expression (resources.{part}."
                        f"{resource}: {value!r})",
                    )


@attrs.define(kw_only=True)
class KubeqEmulator(kmock.KubernetesEmulator):
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    # Injected failures, consulted for every request (tests append and remove them).
    faults: list[Fault] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # = resources.load_bundled(), without its deprecated importlib call (warnings fail tests)
        bundle = importlib.resources.files("kmock._internal") / "resources.json.gz"
        self.resources.load_data(gzip.decompress(bundle.read_bytes()))
        names = resource_names()
        self.resources[f"{names.group}/{names.version}/{names.plural}"] = kmock.ResourceInfo(
            kind=names.kind,
            singular=names.singular,
            shortnames=set(names.short_names),
            namespaced=names.namespaced,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources=set(names.subresources),
        )
        # kopf's peering resources, from the CRDs the chart ships (for operator replicas).
        for path in sorted(PEERING_CRDS.glob("kopf-*.yaml")):
            crd = yaml.safe_load(path.read_text())
            spec, crd_names = crd["spec"], crd["spec"]["names"]
            for version in spec["versions"]:
                key = f"{spec['group']}/{version['name']}/{crd_names['plural']}"
                self.resources[key] = kmock.ResourceInfo(
                    kind=crd_names["kind"],
                    singular=crd_names["singular"],
                    shortnames=set(crd_names.get("shortNames", [])),
                    namespaced=spec["scope"] == "Namespaced",
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                    subresources=set(),
                )

    def _version(self) -> str:
        return str(next(self._versions))

    def _live(self, request: kmock.Request) -> dict[str, Any] | None:
        key: Any = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.objects[key].raw))

    def _created(self, request: kmock.Request) -> Any:
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        meta["resourceVersion"] = self._version()
        meta["generation"] = 1
        return data

    def _patched(self, request: kmock.Request) -> Any:
        live = self._live(request)
        data = request.data
        if live is None:
            return data  # kmock answers 404
        meta = live.get("metadata") or {}
        version = self._version()
        if isinstance(data, list):
            try:
                result = jsonpatch.apply_patch(live, data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
            extra: list[dict[str, Any]] = [
                {"op": "add", "path": "/metadata/resourceVersion", "value": version}
            ]
            if result.get("spec") != live.get("spec"):
                value = int(meta.get("generation", 1)) + 1
                extra.append({"op": "add", "path": "/metadata/generation", "value": value})
            return [*data, *extra]
        if isinstance(data, Mapping):
            expected = (data.get("metadata") or {}).get("resourceVersion")
            if expected and expected != meta.get("resourceVersion"):
                raise kmock.KubernetesError(status=409, reason="Conflict", message="stale object")
            result = _merge(live, data)
            stamped = copy.deepcopy(dict(data))
            stamped_meta = stamped.setdefault("metadata", {}) or {}
            stamped["metadata"] = stamped_meta
            stamped_meta["resourceVersion"] = version
            if result.get("spec") != live.get("spec"):
                stamped_meta["generation"] = int(meta.get("generation", 1)) + 1
            return stamped
        return data

    def _selected(self, request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (request.namespace is None or meta.get("namespace") == request.namespace) and (
            request.name is None or meta.get("name") == request.name
        )

    def _stored(self, request: kmock.Request) -> list[dict[str, Any]]:
        return [
            dict(obj.raw)
            for (resource, _, _), obj in self.objects.items()
            if resource == request.resource and not obj.deleted
        ]

    def _latest_version(self) -> int:
        versions = [
            int(str(obj.last.raw.get("metadata", {}).get("resourceVersion", "0")) or 0)
            for _, obj in self.objects.items()
            if obj.history
        ]
        return max(versions, default=0)

    async def _serve_list(self, request: kmock.Request) -> Any:
        # A real resourceVersion for the listing, so that the watch after it can continue
        # from there instead of replaying everything (kopf would see each object twice).
        payload: Any = await super()._serve_list(request)
        async with self._lock:
            payload["metadata"]["resourceVersion"] = str(self._latest_version())
        return payload

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # kmock marks its event bus only after replaying the objects, so a write in between
        # is lost to the watcher; and it replays everything regardless of resourceVersion.
        # Here the snapshot and the mark are taken together, and a watch from a version
        # replays only the objects written after it (a real API server sends those changes).
        yield b""
        assert request.resource is not None
        since = str(request.params.get("resourceVersion", ""))
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            stored = [o for o in self._stored(request) if self._selected(request, o)]
        if since.isdigit():
            replay = [
                {"type": "MODIFIED", "object": o}
                for o in stored
                if int(o.get("metadata", {}).get("resourceVersion", "0")) > int(since)
            ]
        else:
            replay = [{"type": "ADDED", "object": o} for o in stored]
        stream = bus.stream(since=marker).__aiter__()
        pending: asyncio.Future[Any] | None = None
        try:
            for event in replay:
                yield event
            while True:
                # Notice a closed connection: aiohttp does not cancel the handler, and kopf
                # waits for such leftover tasks for 5 s at exit.
                pending = pending or asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait({pending}, timeout=0.2)
                if not done:
                    raw = request._raw_request
                    if raw is None or raw.transport is None or raw.transport.is_closing():
                        return
                    continue
                event, pending = pending.result(), None
                if self._selected(request, event.get("object") or {}):
                    yield event
        finally:
            if pending is not None:
                pending.cancel()
            await bus.unmark(marker)

    def _check(self, request: kmock.Request) -> None:
        """Refuse what a real API server refuses (after a patch: the object it would store)."""
        for fault in self.faults:
            error = fault(request)
            if error is not None:
                raise error
        resource = request.resource
        if resource is None or getattr(resource, "plural", None) != "deployments":
            return
        if request.action == kmock.action.CREATE and isinstance(request.data, Mapping):
            validate_deployment(request.data)
        elif request.action == kmock.action.UPDATE and isinstance(request.data, Mapping):
            live = self._live(request)
            if live is not None:
                validate_deployment(_merge(live, request.data))

    def _status_only(self, request: kmock.Request) -> None:
        """The status subresource writes `.status` only; the main resource of a kind with a
        status subresource ignores `.status` (as a real API server does)."""
        if request.action != kmock.action.UPDATE or not isinstance(request.data, Mapping):
            return
        resource = request.resource
        # `in` first: indexing a missing resource creates it (kmock's defaultdict style).
        if resource is None or resource not in self.resources:
            return
        if "status" not in self.resources[resource].subresources:
            return
        data = dict(request.data)
        if request.subresource == "status":
            keep = {"status": data.get("status") or {}}
            meta = data.get("metadata") or {}
            if "resourceVersion" in meta:
                keep["metadata"] = {"resourceVersion": meta["resourceVersion"]}
            object.__setattr__(request, "data", keep)
        elif "status" in data:
            data.pop("status")
            object.__setattr__(request, "data", data)

    async def _collect_garbage(self) -> None:
        """Owner-reference garbage collection: delete every object all of whose owners are
        gone (foreground cascades are not emulated; dependents go right after)."""
        while True:
            async with self._lock:
                live = {
                    (obj.raw.get("metadata") or {}).get("uid")
                    for _, obj in self.objects.items()
                    if not obj.deleted
                }
                orphans = [
                    (key, obj)
                    for key, obj in self.objects.items()
                    if not obj.deleted
                    and (refs := (obj.raw.get("metadata") or {}).get("ownerReferences"))
                    and all(r.get("uid") not in live for r in refs)
                ]
                for key, obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[key[0]].put({"type": "DELETED", "object": raw})
            if not orphans:
                return

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        action = request.action
        self._check(request)
        self._status_only(request)
        if request.resource is not None and isinstance(request.data, Mapping | list):
            # In place: kmock's filters recognise a request by its identity.
            if action == kmock.action.CREATE and isinstance(request.data, Mapping):
                object.__setattr__(request, "data", self._created(request))
            elif action == kmock.action.UPDATE and request.name is not None:
                object.__setattr__(request, "data", self._patched(request))
        if action == kmock.action.DELETE and request.name is not None:
            live = self._live(request)
            meta = (live or {}).get("metadata") or {}
            if meta.get("finalizers") and not meta.get("deletionTimestamp"):
                # Marking for deletion is a write too.
                key: Any = (request.resource, request.namespace, request.name)
                self.objects[key].patch({"metadata": {"resourceVersion": self._version()}})
        response = await super()._handle(request)
        if action == kmock.action.CREATE and response.status == 200 and not response.prepared:
            response.set_status(201)
        if action in (kmock.action.DELETE, kmock.action.UPDATE):
            await self._collect_garbage()
        return response


# --- running kopf against it ---------------------------------------------------------------


def write_kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def kubeconfig_for(server: str, directory: Path) -> Iterator[Path]:
    """Point `kubernetes` (kopf's login and the operator's client) at `server`.

    The library reads $KUBECONFIG at import time, so its default location is patched too.
    """
    import os

    path = write_kubeconfig(directory / "kubeconfig", server)
    saved_env = os.environ.get("KUBECONFIG")
    saved_default = kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    os.environ["KUBECONFIG"] = str(path)
    kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    try:
        yield path
    finally:
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_default
        if saved_env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved_env


def operator_settings(**overrides: Any) -> OperatorSettings:
    return OperatorSettings(
        **{"standalone": True, "metrics_port": 0, "health_port": 0, **overrides}
    )


@contextlib.asynccontextmanager
async def running_operator(
    settings: OperatorSettings | None = None,
    *,
    clients: Sequence[KubeApi] = (),
    startup_timeout: float = 10.0,
) -> AsyncIterator[kopf.Memo]:
    """kopf with the kubeq handlers, as a task of the calling test (never of a fixture: on
    shutdown kopf cancels the tasks created after it started). Yields the operator's memo."""
    import kubeq_operator.kube.handlers  # noqa: F401  (registers the handlers)

    memo = kopf.Memo(settings=settings or operator_settings())
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        kopf.operator(
            standalone=True, clusterwide=True, stop_flag=stop, ready_flag=ready, memo=memo
        )
    )
    try:
        done, _ = await asyncio.wait(
            {task, ready}, timeout=startup_timeout, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()  # raises what stopped it
        if ready not in done:
            raise TimeoutError("kopf did not start")
        yield memo
    finally:
        for client in clients:
            # Its keep-alive connections have server-side tasks, which kopf would wait for.
            await client.close()
        if not stop.done():
            stop.set_result(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)


def api_for(server: str) -> KubeApi:
    config = kubernetes.client.Configuration()
    config.host = server
    return KubeApi(config)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Poll `probe` until `check` accepts its value; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.1)
