"""docs/workflows.md's example runs as written, served by an in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from worker_support import REPO, queue_config

from kubeq import App
from kubeq.protocol import Client
from kubeq.redis_server import free_port
from kubeq.worker import WorkerSettings, serve


async def test_the_workflow_example_runs(redis_url: str) -> None:
    text = (REPO / "docs" / "workflows.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:1]
    app_part, _, client_part = block.partition("with Client.from_url(")
    namespace: dict[str, Any] = {}
    exec(compile(app_part, "docs/workflows.md", "exec"), namespace)
    app: App = namespace["app"]
    config = queue_config(name="images", lease_seconds=5.0, heartbeat_seconds=1.0)
    client_part = "with Client.from_url(" + client_part.replace(
        '"redis://localhost:6379/0", "images"', "URL, QUEUE, config=CONFIG"
    )
    printed: list[Any] = []
    scope = {
        **namespace,
        "URL": redis_url,
        "QUEUE": "images",
        "CONFIG": config,
        "print": printed.append,
    }
    ws = WorkerSettings(
        redis_url=redis_url, queue="images", queue_config=config, metrics_port=free_port()
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(ws, app, stop))
    try:
        await asyncio.to_thread(exec, compile(client_part, "docs/workflows.md", "exec"), scope)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker, 30)
    assert printed == ["running", 3]
    with Client.from_url(redis_url, "images", config=config) as q:
        workflows = [k for k in q.redis.hkeys(q.keys.flows) if "/" not in k]
        assert [q.workflow(wf).state for wf in workflows] == ["completed"]
