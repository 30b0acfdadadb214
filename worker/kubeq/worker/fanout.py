"""`ctx.submit` / `ctx.submit_many`: fan-out from a handler on the worker's own connection.

The worker's queue is used with the worker's config; another queue is named "name" (same
namespace) or "namespace/name" and used with its published config (defaults when none is
published), read once per worker. Payloads may be pydantic models; the App's middleware
sees every submit (`on_submit`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kubeq.app import App, json_payload
from kubeq.protocol import AsyncClient, QueueConfig, QueueKeys, TaskRequest
from kubeq.protocol.ops import Command, Op


def _get(key: str) -> Op:
    return (yield Command(("GET", key)))


class FanOut:
    def __init__(self, client: AsyncClient, app: App) -> None:
        self.client = client
        self.app = app
        self._others: dict[str, AsyncClient] = {}

    async def _client_for(self, queue: str | None) -> AsyncClient:
        own = self.client.config
        if queue is None or queue in (own.name, own.full_name):
            return self.client
        namespace, _, name = queue.rpartition("/")
        namespace = namespace or own.namespace
        full = f"{namespace}/{name}"
        c = self._others.get(full)
        if c is None:
            raw = await self.client.run(_get(QueueKeys(namespace, name).config))
            config = (
                QueueConfig.model_validate_json(raw)
                if raw
                else QueueConfig(name=name, namespace=namespace)
            )
            # Same connection pool, another queue's keys: AsyncClient owns no connection.
            c = self._others[full] = AsyncClient(self.client.redis, config)
        return c

    async def submit(
        self, task_type: str, payload: Any = None, *, queue: str | None = None, **opts: Any
    ) -> str:
        payload = json_payload(payload)
        self.app.middleware.on_submit(task_type, payload, opts)
        c = await self._client_for(queue)
        return await c.submit(task_type, payload, **opts)

    async def submit_many(
        self, tasks: Iterable[TaskRequest | Mapping[str, Any]], *, queue: str | None = None
    ) -> list[str]:
        reqs: list[TaskRequest | Mapping[str, Any]] = []
        for t in tasks:
            fields = dict(t) if isinstance(t, Mapping) else dict(vars(t))
            fields["payload"] = json_payload(fields.get("payload"))
            self.app.middleware.on_submit(fields["type"], fields["payload"], fields)
            reqs.append(fields)
        c = await self._client_for(queue)
        return await c.submit_many(reqs)
