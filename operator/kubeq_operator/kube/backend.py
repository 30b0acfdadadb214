"""The Kubernetes backend: a TaskQueue's worker pool is a Deployment (plus its Service, PDB
and ConfigMap), and its workers are that Deployment's pods.

The API client is a small aiohttp one (`KubeApi`): kopf depends on aiohttp already, and the
generated `kubernetes` client is synchronous (it would need a thread per call). Only the
configuration comes from the `kubernetes` package, so credentials are found exactly as kopf
finds them: in-cluster service account first, then kubeconfig.

Writes are JSON merge patches of the full desired manifest, so a hand-edited field is put
back on the next apply. A merge patch cannot remove a field by omitting it, so the manifest
applied last is kept in an annotation, and fields it had that the new one lacks are sent as
null (what `kubectl apply` does with its last-applied annotation). `spec.replicas` is left
out of both while the autoscaler owns it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kubernetes.client
import kubernetes.config

from kubeq.protocol import QueueConfig
from kubeq_operator.core.manifests import (
    DELETION_COST_ANNOTATION,
    Manifest,
    OwnerRef,
    build_config_map,
    build_deployment,
    build_metrics_service,
    build_pdb,
    config_map_name,
    deployment_name,
    managed_replicas,
    selector_labels,
    selector_string,
)
from kubeq_operator.core.preflight import Kind as RefKind
from kubeq_operator.core.preflight import problems, references
from kubeq_operator.core.spec import TaskQueueSpec
from kubeq_operator.engine.backend import PoolView, QueueRef

LAST_APPLIED_ANNOTATION = "kubeq.io/last-applied"
# Counts the scale decisions applied to a Deployment: each one tests it (see `scale`).
SCALE_DECISION_ANNOTATION = "kubeq.io/scale-decision"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """A failed API request: HTTP status and the API server's own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        path = (
            f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"
        )
        if name:
            path += f"/{name}"
        return f"{path}/{sub}" if sub else path


DEPLOYMENTS = Kind("apps/v1", "deployments")
SERVICES = Kind("v1", "services")
CONFIG_MAPS = Kind("v1", "configmaps")
PDBS = Kind("policy/v1", "poddisruptionbudgets")
PODS = Kind("v1", "pods")
SECRETS = Kind("v1", "secrets")
TASK_QUEUES = Kind("kubeq.io/v1alpha1", "taskqueues")


# --- pure helpers ----------------------------------------------------------------------------


def removed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch (nulls) deleting what `old` had and `new` lacks, recursing into mappings."""
    patch: dict[str, Any] = {}
    for key, value in old.items():
        if key not in new:
            patch[key] = None
        elif isinstance(value, Mapping) and isinstance(new[key], Mapping):
            sub = removed_fields(value, new[key])
            if sub:
                patch[key] = sub
    return patch


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        elif key not in out:
            out[key] = value
    return out


def _tracked(manifest: Mapping[str, Any]) -> Manifest:
    """The part of a manifest the last-applied annotation records (not the replica count)."""
    tracked = copy.deepcopy(dict(manifest))
    tracked.get("spec", {}).pop("replicas", None)
    tracked.get("metadata", {}).get("annotations", {}).pop(LAST_APPLIED_ANNOTATION, None)
    return tracked


def with_last_applied(manifest: Mapping[str, Any]) -> Manifest:
    """The manifest carrying its own last-applied annotation (canonical JSON)."""
    out = copy.deepcopy(dict(manifest))
    record = json.dumps(_tracked(manifest), sort_keys=True, separators=(",", ":"))
    out["metadata"].setdefault("annotations", {})[LAST_APPLIED_ANNOTATION] = record
    return out


def apply_patch(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> Manifest:
    """The merge patch that turns `live` into `desired`: all of desired, plus nulls for the
    fields that the previous apply set and this one no longer does."""
    patch = with_last_applied(desired)
    raw = ((live or {}).get("metadata") or {}).get("annotations", {}).get(LAST_APPLIED_ANNOTATION)
    try:
        previous = json.loads(raw) if raw else {}
    except ValueError:  # a hand-mangled annotation: nothing to remove
        previous = {}
    if not isinstance(previous, Mapping):
        previous = {}
    return _deep_merge(patch, removed_fields(previous, _tracked(desired)))


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` has every field of `desired` with the same value (lists item by item).

    Extra fields in `live` are fine: the API server adds defaults everywhere.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and contains(live[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def owned_pods(pods: list[Manifest], name: str) -> list[Manifest]:
    """The pods of one queue's Deployment (filtered here too: selectors are only a hint)."""
    wanted = selector_labels(name)
    return [
        p
        for p in pods
        if all(
            ((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in wanted.items()
        )
    ]


# --- the API client --------------------------------------------------------------------------


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account first, then kubeconfig (as kopf's own login does)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return config


class KubeApi:
    """Just the JSON requests the operator makes; auth and TLS from a kubernetes Configuration."""

    def __init__(self, config: kubernetes.client.Configuration, timeout: float = 30.0) -> None:
        self.config = config
        self.base = str(config.host).rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def from_environment(cls) -> KubeApi:
        return cls(await asyncio.to_thread(load_configuration))

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.base.startswith("https"):
            return False
        c = self.config
        context = ssl.create_default_context(cafile=c.ssl_ca_cert or None)
        if c.cert_file:
            context.load_cert_chain(c.cert_file, c.key_file or None)
        if not c.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _headers(self) -> dict[str, str]:
        # auth_settings() runs the token refresh hook (service account rotation, exec
        # plugins), which may read files or run a command: off the event loop.
        auth = await asyncio.to_thread(self.config.auth_settings)
        token = auth.get("BearerToken", {}).get("value")
        return {"Authorization": str(token)} if token else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> Any:
        headers = {**await self._headers(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        extra: dict[str, Any] = {}
        if self.config.tls_server_name:
            extra["server_hostname"] = self.config.tls_server_name
        if self.config.proxy:
            extra["proxy"] = self.config.proxy
        async with self._client().request(
            method, self.base + path, data=data, headers=headers, **extra
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message") or text
                except (ValueError, AttributeError):
                    message = text
                raise ApiError(resp.status, str(message)[:2000])
            return json.loads(text) if text else None

    async def get(self, path: str) -> Any:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Manifest) -> Any:
        return await self.request("POST", path, body)

    async def patch(self, path: str, body: Manifest) -> Any:
        return await self.request("PATCH", path, body, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        return await self.request("PATCH", path, ops, content_type=JSON_PATCH)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# --- the backend -----------------------------------------------------------------------------


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def scale_basis(meta: Mapping[str, Any]) -> str:
    """What a scale decision tests: the decision counter annotation, or (before the first
    decision) the object's resourceVersion."""
    seq = (meta.get("annotations") or {}).get(SCALE_DECISION_ANNOTATION)
    return f"seq:{seq}" if seq is not None else f"rv:{meta.get('resourceVersion', '')}"


def scale_patch(basis: str, replicas: int) -> list[dict[str, Any]]:
    """A JSON patch that sets replicas only if no decision came since `basis`, and counts
    this decision (compare-and-swap: the API server refuses a failed `test` whole)."""
    kind, _, value = basis.partition(":")
    key = "/metadata/annotations/" + _pointer(SCALE_DECISION_ANNOTATION)
    if kind == "seq":
        nxt = str(int(value) + 1) if value.isdigit() else "1"
        return [
            {"op": "test", "path": key, "value": value},
            {"op": "replace", "path": "/spec/replicas", "value": replicas},
            {"op": "replace", "path": key, "value": nxt},
        ]
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": value},
        {"op": "add", "path": "/spec/replicas", "value": replicas},
        {"op": "add", "path": key, "value": "1"},
    ]


class UnresolvedReferences(Exception):
    """The pod template refers to Secrets/ConfigMaps (keys) that do not exist: its pods
    could not start, so it is not rolled out."""

    def __init__(self, found: list[str]) -> None:
        super().__init__("pods could not start: " + "; ".join(found))
        self.problems = found


class DeploymentMissing(ApiError):
    def __init__(self, ref: QueueRef) -> None:
        super().__init__(404, f"Deployment {ref.namespace}/{deployment_name(ref.name)} not found")


class K8sBackend:
    """`Backend` over a Deployment; owner references do the deleting (see `delete`)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._owners: dict[QueueRef, OwnerRef] = {}
        self._scaled: dict[QueueRef, int] = {}  # the autoscaler's last count, for re-creation

    def own(self, ref: QueueRef, owner: OwnerRef) -> None:
        """The TaskQueue the objects of `ref` belong to (its uid goes in owner references)."""
        self._owners[ref] = owner

    def forget(self, ref: QueueRef) -> None:
        self._owners.pop(ref, None)
        self._scaled.pop(ref, None)

    def desired_deployment(self, ref: QueueRef, spec: TaskQueueSpec) -> Manifest:
        owner = self._owners.get(ref)
        return build_deployment(
            ref.name, ref.namespace, spec, replicas=managed_replicas(spec), owner=owner
        )

    def is_current(self, ref: QueueRef, spec: TaskQueueSpec, live: Mapping[str, Any]) -> bool:
        """Whether a live Deployment still has everything the spec asks of it."""
        return contains(live, with_last_applied(self.desired_deployment(ref, spec)))

    async def _owner(self, ref: QueueRef) -> OwnerRef:
        if ref not in self._owners:
            body = await self.api.get(TASK_QUEUES.path(ref.namespace, ref.name))
            if body is None:
                raise ApiError(404, f"TaskQueue {ref} not found")
            self._owners[ref] = OwnerRef.from_body(body)
        return self._owners[ref]

    async def _apply_one(self, kind: Kind, manifest: Manifest, create_extra: Manifest) -> None:
        meta = manifest["metadata"]
        path = kind.path(meta["namespace"], meta["name"])
        live = await self.api.get(path)
        if live is not None:
            try:
                await self.api.patch(path, apply_patch(manifest, live))
                return
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # Deleted between the read and the patch: create it instead.
        try:
            await self.api.create(
                kind.path(meta["namespace"]), _deep_merge(with_last_applied(manifest), create_extra)
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (another replica, or a restore racing a reconcile): patch it.
            await self.api.patch(path, apply_patch(manifest, await self.api.get(path)))

    async def check_references(self, ref: QueueRef, deployment: Manifest) -> None:
        """Raise UnresolvedReferences when the pods of `deployment` could not start."""
        own = ("ConfigMap", config_map_name(ref.name))  # applied together with the Deployment
        refs = [r for r in references(deployment) if (r.kind, r.name) != own]
        kinds = {"Secret": SECRETS, "ConfigMap": CONFIG_MAPS}
        objects: dict[tuple[RefKind, str], Mapping[str, Any] | None] = {}
        for kind, name in sorted({(r.kind, r.name) for r in refs}):
            objects[(kind, name)] = await self.api.get(kinds[kind].path(ref.namespace, name))
        found = problems(refs, objects)
        if found:
            raise UnresolvedReferences(found)

    async def apply(self, ref: QueueRef, spec: TaskQueueSpec, config: QueueConfig) -> None:
        del config  # the builders derive it from the spec; the Protocol passes it for others
        owner = await self._owner(ref)
        # Before any write: a template whose pods cannot start is not rolled out at all.
        await self.check_references(ref, self.desired_deployment(ref, spec))
        name, ns = ref.name, ref.namespace
        # A new Deployment starts at the autoscaler's last count (a restored one keeps its
        # size) or minReplicas; the API server would default a missing count to 1.
        first = managed_replicas(spec)
        if first is None:
            first = self._scaled.get(ref, spec.autoscaling.min_replicas)
        await self._apply_one(CONFIG_MAPS, build_config_map(name, ns, spec, owner=owner), {})
        await self._apply_one(
            DEPLOYMENTS, self.desired_deployment(ref, spec), {"spec": {"replicas": first}}
        )
        await self._apply_one(SERVICES, build_metrics_service(name, ns, spec, owner=owner), {})
        await self._apply_one(PDBS, build_pdb(name, ns, spec, owner=owner), {})

    async def deployment(self, ref: QueueRef) -> Manifest:
        body = await self.api.get(DEPLOYMENTS.path(ref.namespace, deployment_name(ref.name)))
        if body is None:
            raise DeploymentMissing(ref)
        return dict(body)

    async def view(self, ref: QueueRef) -> PoolView:
        body = await self.deployment(ref)
        meta = body.get("metadata") or {}
        return PoolView(
            replicas=int((body.get("spec") or {}).get("replicas", 1)),  # the server's default
            ready=int((body.get("status") or {}).get("readyReplicas") or 0),
            basis=scale_basis(meta),
        )

    async def scale(self, ref: QueueRef, replicas: int, basis: str | None = None) -> bool:
        path = DEPLOYMENTS.path(ref.namespace, deployment_name(ref.name))
        if basis is None:
            await self.api.patch(path, {"spec": {"replicas": replicas}})
        else:
            try:
                await self.api.json_patch(path, scale_patch(basis, replicas))
            except ApiError as exc:
                # A failed `test` (422) or a stale resourceVersion (409): another decision
                # was made since our view. Not an error: the next round sees it.
                if exc.status in (409, 422):
                    return False
                raise
        self._scaled[ref] = replicas
        return True

    async def replicas(self, ref: QueueRef) -> int:
        spec = (await self.deployment(ref)).get("spec") or {}
        return int(spec.get("replicas", 1))  # the API server's default

    async def ready_replicas(self, ref: QueueRef) -> int:
        status = (await self.deployment(ref)).get("status") or {}
        return int(status.get("readyReplicas") or 0)

    async def set_deletion_costs(self, ref: QueueRef, costs: dict[str, int]) -> None:
        query = urlencode({"labelSelector": selector_string(ref.name)})
        listing = await self.api.request("GET", f"{PODS.path(ref.namespace)}?{query}")
        pods = owned_pods(list((listing or {}).get("items") or []), ref.name)
        patches = []
        for pod in pods:
            name = pod["metadata"]["name"]
            if name not in costs:
                continue  # not heartbeating yet: starting, so no cost either way
            value = str(costs[name])
            if (pod["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION) != value:
                patch = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: value}}}
                patches.append(self.api.patch(PODS.path(ref.namespace, name), patch))
        for result in await asyncio.gather(*patches, return_exceptions=True):
            # A pod may go away between the listing and the patch: that is fine.
            if isinstance(result, ApiError) and result.status != 404:
                raise result
            if isinstance(result, BaseException) and not isinstance(result, ApiError):
                raise result

    async def delete(self, ref: QueueRef) -> None:
        """Nothing to delete: every object has an owner reference (controller, blocking
        deletion) to the TaskQueue, so the garbage collector removes them with it."""
        self.forget(ref)
