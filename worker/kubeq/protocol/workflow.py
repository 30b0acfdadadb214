"""Workflows: chains, groups, chords and on-failure callbacks, as one atomic submission.

A workflow is compiled (pure) into steps, each a task with a deterministic id
`<workflow id>.<n>`, the number of inputs it waits for and the steps it feeds. Roots go to
their ready list at once; the others wait in `flow_wait`. The settle, reap and cancel
scripts move a workflow on in the same atomic call that ends a step (`flow_plan` in
`_lib.lua`), so a step's completion is counted exactly once, however often it ran, and a
callback is released exactly once: fencing lets only one settle of a task apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel

from kubeq.protocol import errors
from kubeq.protocol.models import Task, TaskStatus
from kubeq.protocol.ops import (
    WAKE_CAP,
    Command,
    Op,
    Pipeline,
    QueueOps,
    ScriptCall,
    TaskRequest,
    new_task_id,
)

#: A step declared without a payload receives its inputs instead (see `Step`).
FEED: Any = type("Feed", (), {"__repr__": lambda self: "FEED"})()
MAX_WORKFLOW_STEPS = 1000
MAX_WORKFLOW_EDGES = 10_000
FeedMode: TypeAlias = Literal["result", "results", "outcome"]


@dataclass(frozen=True)
class Step:
    """One task of a workflow. Without a payload, a step that follows another gets that
    step's result as its payload; one that follows a group gets the list of the group's
    results (in declaration order); an on-failure step gets the failed step's outcome
    (status, error, reason)."""

    type: str
    payload: Any = FEED
    priority: str | None = None
    max_attempts: int | None = None


@dataclass(frozen=True)
class Chain:
    """Steps (or groups, or chains) run one after the other."""

    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Group:
    """Steps (or chains, or groups) run in parallel."""

    parts: tuple[Node, ...]


Node: TypeAlias = Step | Chain | Group


def chain(*parts: Node) -> Chain:
    return Chain(tuple(parts))


def group(*parts: Node) -> Group:
    return Group(tuple(parts))


def chord(header: Group | Sequence[Node], callback: Node) -> Chain:
    """A group, then `callback` once every member completed (with their results)."""
    g = header if isinstance(header, Group) else Group(tuple(header))
    return Chain((g, callback))


@dataclass
class PlannedStep:
    id: str
    step: Step
    inputs: int
    feed: FeedMode | None
    succs: list[tuple[str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    workflow: str
    steps: list[PlannedStep]
    on_failure: PlannedStep | None


def compile_workflow(root: Node, workflow_id: str, on_failure: Step | None = None) -> Plan:
    """Flatten a workflow into steps and edges. Pure; raises InvalidTask on a bad shape."""
    steps: list[PlannedStep] = []

    def visit(node: Node, preds: list[PlannedStep], many: bool) -> tuple[list[PlannedStep], bool]:
        if isinstance(node, Step):
            feed: FeedMode | None = None
            if node.payload is FEED and preds:
                feed = "results" if many else "result"
            s = PlannedStep(f"{workflow_id}.{len(steps) + 1}", node, len(preds), feed)
            steps.append(s)
            for i, p in enumerate(preds, 1):
                p.succs.append((s.id, i))
            return [s], False
        if isinstance(node, Chain):
            if not node.parts:
                raise errors.InvalidTask("a chain needs at least one step")
            exits, fan = preds, many
            for part in node.parts:
                exits, fan = visit(part, exits, fan)
            return exits, fan
        if isinstance(node, Group):
            if not node.parts:
                raise errors.InvalidTask("a group needs at least one step")
            out: list[PlannedStep] = []
            for part in node.parts:
                out += visit(part, preds, many)[0]
            return out, True
        raise errors.InvalidTask(f"a workflow is made of Step, Chain and Group, got {node!r}")

    visit(root, [], False)
    fail = None
    if on_failure is not None:
        if not isinstance(on_failure, Step):
            raise errors.InvalidTask(f"on_failure must be a Step, got {on_failure!r}")
        fail = PlannedStep(
            f"{workflow_id}.{len(steps) + 1}",
            on_failure,
            1,
            "outcome" if on_failure.payload is FEED else None,
        )
    total = len(steps) + (fail is not None)
    if total > MAX_WORKFLOW_STEPS:
        raise errors.InvalidTask(
            f"workflow has {total} steps; at most {MAX_WORKFLOW_STEPS} are allowed"
        )
    edges = sum(len(s.succs) for s in steps)
    if edges > MAX_WORKFLOW_EDGES:
        raise errors.InvalidTask(
            f"workflow has {edges} edges (a group followed by a group links every pair); "
            f"at most {MAX_WORKFLOW_EDGES} are allowed"
        )
    return Plan(workflow_id, steps, fail)


def step_payload(task: Task) -> Any:
    """The payload a workflow step's handler receives: its own, or its inputs' results."""
    if task.feed is None:
        return task.payload
    outcomes = [x if isinstance(x, dict) else {} for x in (task.inputs or [])]
    if task.feed == "outcome":
        return outcomes[0] if outcomes else None
    results = [o.get("result") for o in outcomes]
    if task.feed == "results":
        return results
    return results[0] if results else None


class StepState(BaseModel):
    id: str
    type: str
    status: str  # a TaskStatus value, or "waiting" (for its inputs), or "gone" (expired)
    on_failure: bool = False
    result: Any = None


class WorkflowStatus(BaseModel):
    """`Client.workflow(id)`: the workflow's state and each step's."""

    id: str
    state: str  # running | completed | failed | cancelled
    steps: list[StepState]

    @property
    def done(self) -> bool:
        return self.state != "running"


def parse_flow_state(raw: str) -> tuple[str, int, str]:
    state, left, fail = raw.split("|", 2)
    return state, int(left), fail


def step_state(step_id: str, task: Task | None, waiting: bool, fail: str) -> StepState:
    if task is None:
        return StepState(id=step_id, type="?", status="gone", on_failure=step_id == fail)
    status = "waiting" if waiting and task.status == TaskStatus.PENDING else task.status.value
    return StepState(
        id=step_id,
        type=task.type,
        status=status,
        on_failure=step_id == fail,
        result=task.result if task.status == TaskStatus.COMPLETED else None,
    )


def flow_entry(s: PlannedStep, workflow_id: str, level: int) -> str:
    succs = " ".join(f"{sid}/{i}" for sid, i in s.succs)
    return f"{workflow_id}|{level}|{s.inputs}|{succs}"


def splice(record: str, **fields: Any) -> str:
    """Adds fields to an encoded task record (a JSON object kubeq built itself)."""
    extra = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields.items())
    return f"{record[:-1]},{extra}}}"


# -- operations (generators run by Client and AsyncClient) ------------------------------


def new_workflow_id() -> str:
    return f"wf-{new_task_id()}"


def submit_workflow(
    qops: QueueOps,
    root: Node,
    now: int,
    *,
    on_failure: Step | None = None,
    workflow_id: str | None = None,
) -> Op:
    """Validate every step, then submit the whole workflow in one script call."""
    wf = new_workflow_id() if workflow_id is None else workflow_id
    if not isinstance(wf, str) or not _WF_ID_RE.match(wf):
        raise errors.InvalidTask(f"workflow id {wf!r} must be 1-120 of [A-Za-z0-9_:-]")
    plan = compile_workflow(root, wf, on_failure)
    every = [*plan.steps, *([plan.on_failure] if plan.on_failure else [])]
    args: list[str | int | float] = [
        len(qops.levels),
        wf,
        len(every),
        plan.on_failure.id if plan.on_failure else "",
        len(plan.steps),
        WAKE_CAP,
        qops.config.max_backlog or 0,
    ]
    for s in every:
        payload = None if s.step.payload is FEED else s.step.payload
        req = TaskRequest(
            s.step.type, payload, s.step.priority, max_attempts=s.step.max_attempts, id=s.id
        )
        task_id, level, _, _, _, meta_head, record, _ = qops.encode_task(req, now)
        fields: dict[str, Any] = {"workflow": wf}
        if s.feed is not None:
            fields["feed"] = s.feed
        args += [task_id, level, meta_head, splice(record, **fields)]
        args += [flow_entry(s, wf, level), s.inputs]
    k = qops.keys
    keys = [
        k.tasks,
        k.meta,
        k.counters,
        k.results,
        k.wake,
        k.flow,
        k.flow_wait,
        k.flows,
        *[k.ready(lv) for lv in qops.levels],
        *[k.delayed(lv) for lv in qops.levels],
    ]
    yield ScriptCall("workflow", keys, args)
    return wf


def workflow_status(qops: QueueOps, workflow_id: str, now: int) -> Op:
    """The workflow's state and each step's (one read of the workflow, one per step)."""
    k = qops.keys
    raw, steps = yield Pipeline(
        (
            Command(("HGET", k.flows, workflow_id)),
            Command(("HGET", k.flows, f"{workflow_id}/steps")),
        )
    )
    if not raw:
        raise errors.TaskNotFound(
            f"no workflow {workflow_id} (never submitted, or ended more than a result TTL ago)"
        )
    state, _, fail = parse_flow_state(raw)
    ids = (steps or "").split()
    waiting = (yield Command(("HMGET", k.flow_wait, *ids))) if ids else []
    out: list[StepState] = []
    for step_id, wait in zip(ids, waiting, strict=True):
        try:
            task: Task | None = yield from qops.status(step_id, now)
        except errors.TaskNotFound:
            task = None
        out.append(step_state(step_id, task, bool(wait), fail))
    return WorkflowStatus(id=workflow_id, state=state, steps=out)


def cancel_workflow(qops: QueueOps, workflow_id: str, now: int) -> Op:
    """Cancel the workflow's waiting and pending steps, ask its running ones to stop.

    Returns the state it had: "running" (now cancelled), "completed", "failed",
    "cancelled" or "unknown"."""
    k = qops.keys
    keys = [
        k.tasks,
        k.attempts,
        k.holders,
        k.cancelled,
        k.counters,
        k.results,
        k.results_expiry,
        k.meta,
        *k.flow_keys,
        *[x for lv in qops.levels for x in (k.ready(lv), k.delayed(lv))],
    ]
    args: list[str | int | float] = [
        qops._now_arg(now),
        workflow_id,
        qops.config.result_ttl_seconds * 1000,
        k.done_channel,
        len(qops.levels),
    ]
    state, _cancelled, _flagged = yield ScriptCall("workflow_cancel", keys, args)
    return str(state)


_WF_ID_RE = re.compile(r"^[A-Za-z0-9_:-]{1,120}$")
