"""`kubeq status` of a workflow and `kubeq schedules`, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubeq.protocol import AsyncClient, Client
from kubeq.protocol.workflow import Step, chain, chord
from kubeq_operator.core.spec import Schedule
from kubeq_operator.engine.scheduler import run_schedules

Kubeq = Any


def test_status_of_a_workflow_shows_each_step(kubeq: Kubeq, queue_client: Client) -> None:
    wf = queue_client.submit_workflow(
        chain(chord([Step("a"), Step("b")], Step("sum")), Step("report")),
        on_failure=Step("alert"),
        workflow_id="nightly",
    )
    (first,) = queue_client.claim("w", 1).tasks
    queue_client.settle([queue_client.ops.completion(first, 1, 0)])
    out = kubeq("status", wf).stdout
    lines = out.splitlines()
    assert lines[0] == "workflow nightly: running"
    assert [line.split()[-1] for line in lines[1:4]] == ["completed", "pending", "waiting"]
    assert lines[5].split()[-3:] == ["waiting", "(on", "failure)"]
    data = json.loads(kubeq("-o", "json", "status", wf).stdout)
    assert data["state"] == "running"
    assert [s["status"] for s in data["steps"]] == [
        "completed",
        "pending",
        "waiting",
        "waiting",
        "waiting",
    ]
    assert "no task nope" in kubeq("status", "nope", code=3).stderr


def test_schedules_lists_last_and_next_run_and_counts(
    kubeq: Kubeq, queue_client: Client, redis_url: str
) -> None:
    assert "no schedules have run" in kubeq("schedules").stdout
    minute = 60_000
    t0 = 1_800_000_000_000

    async def rounds() -> None:
        client = await AsyncClient.from_url(redis_url, "default")
        try:
            s = [
                Schedule.model_validate(
                    {"name": "rollup", "task": "r", "intervalSeconds": 60, "payload": {"k": 1}}
                ),
                Schedule.model_validate(
                    {
                        "name": "off",
                        "task": "r",
                        "cron": "0 3 * * *",
                        "suspend": True,
                        "timezone": "Europe/Berlin",
                    }
                ),
            ]
            for now in (t0 + 1, t0 + minute + 5, t0 + 4 * minute + 5):
                await run_schedules(client, s, now)
        finally:
            await client.close()

    asyncio.run(rounds())
    data = {e["name"]: e for e in json.loads(kubeq("-o", "json", "schedules").stdout)}
    rollup = data["rollup"]
    # Round 2 fires t0+1m; round 3 fires t0+4m (on time) and skips t0+2m and t0+3m.
    assert (rollup["fired"], rollup["skipped"]) == (2, 2)
    assert rollup["last_run"] == t0 + 4 * minute
    assert queue_client.status(rollup["last_task"]).payload == {"k": 1}
    out = kubeq("schedules").stdout
    assert "rollup" in out
    assert "0 3 * * * (Europe/Berlin), suspended" in out
