"""Issue 14: randomized model of workflows under worker deaths, retries, stale settles and
simultaneous completions, on a real redis-server with a fake clock.

Each seed builds a random workflow (chains of groups of chains...), then interleaves claims
by several workers, settle batches of random size, retries, workers that die holding leases
(their leases are reaped later), and late settles by the dead workers. Checked against the
plan: every step completes exactly once and ran at least once, every step's inputs are
exactly its predecessors' results, each callback is released once, the on-failure step runs
once exactly when a step failed, and nothing is left behind.
"""

from __future__ import annotations

from random import Random

import pytest
from tests.conftest import FakeClock

from kubeq.protocol import Client, TaskStatus, WorkerInfo
from kubeq.protocol.models import ClaimedTask, TaskError
from kubeq.protocol.workflow import Node, Step, chain, compile_workflow, group

SEEDS = range(40)


def random_node(rng: Random, depth: int, budget: list[int]) -> Node:
    if depth == 0 or budget[0] <= 1 or rng.random() < 0.3:
        budget[0] -= 1
        return Step("s", rng.randrange(100), max_attempts=rng.choice([1, 2, 3]))
    parts = [random_node(rng, depth - 1, budget) for _ in range(rng.randint(1, 3))]
    return chain(*parts) if rng.random() < 0.5 else group(*parts)


def run_model(client: Client, clock: FakeClock, seed: int, failures: bool) -> None:
    rng = Random(seed)
    root = random_node(rng, 4, [12])
    on_failure = Step("alert") if rng.random() < 0.7 else None
    wf = client.submit_workflow(root, on_failure=on_failure, workflow_id=f"m{seed}")
    plan = compile_workflow(root, wf, on_failure)
    preds: dict[str, list[str]] = {s.id: [] for s in plan.steps}
    for s in plan.steps:
        for succ, i in s.succs:
            assert len(preds[succ]) == i - 1
            preds[succ].append(s.id)

    completions: dict[str, int] = {}
    results: dict[str, int] = {}
    claims: dict[str, int] = {}
    held: dict[str, list[ClaimedTask]] = {}
    dead_workers: list[tuple[str, list[ClaimedTask]]] = []
    n_workers = 0
    failed = False
    for _ in range(2_000):
        if rng.random() < 0.3 or not held:
            n_workers += 1
            name = f"w{n_workers}" if rng.random() < 0.5 or not held else rng.choice(list(held))
            got = client.claim(name, rng.randint(1, 4)).tasks
            held.setdefault(name, []).extend(got)
            for c in got:
                claims[c.id] = claims.get(c.id, 0) + 1
                # A released step carries its predecessors' results, in order, once.
                if preds.get(c.id):
                    assert c.task.inputs is not None
                    assert [o["result"] for o in c.task.inputs] == [results[p] for p in preds[c.id]]
        name = rng.choice(list(held))
        tasks = held[name]
        roll = rng.random()
        if roll < 0.1 and tasks:
            # The worker dies holding its leases; it may come back late to settle them.
            dead_workers.append((name, held.pop(name)))
            clock.advance(client.config.lease_seconds + 1)
            for live, mine in held.items():  # the living heartbeat in time
                leases = [(c.id, c.token, c.level_index) for c in mine]
                assert list(client.heartbeat(live, leases, WorkerInfo(id=live)).lost) == []
            client.reap()
            continue
        if roll < 0.15 and dead_workers:
            _ghost, stale = rng.choice(dead_workers)
            applied = client.settle([client.ops.completion(c, -1, 0) for c in stale])
            assert not any(applied), "a reaped lease settled"
            continue
        batch = rng.sample(tasks, rng.randint(0, len(tasks)))
        settle = []
        for c in batch:
            tasks.remove(c)
            r = rng.random()
            if failures and r < 0.08:
                err = TaskError(type="Boom", message=c.id)
                settle.append(client.ops.failure(c, err, 0, rng, permanent=True))
            elif r < 0.25 and c.task.attempts < c.task.max_attempts:
                err = TaskError(type="Flaky", message=c.id)
                settle.append(client.ops.failure(c, err, 0, rng, delay=0))
            else:
                settle.append(client.ops.completion(c, seed * 1000 + claims[c.id], 0))
        for s, ok in zip(settle, client.settle(settle), strict=True):
            assert ok
            if s.action == "complete":
                completions[s.task_id] = completions.get(s.task_id, 0) + 1
                results[s.task_id] = client.status(s.task_id).result
            elif s.action == "dead":
                failed = True
        if client.stats().backlog == 0 and not any(held.values()):
            break
    clock.advance(client.config.lease_seconds + 1)
    client.reap()
    assert client.stats().backlog == 0, "the model did not run the workflow to its end"

    status = client.workflow(wf)
    statuses = {s.id: client.status(s.id).status for s in plan.steps}
    failed = failed or any(st == TaskStatus.DEAD for st in statuses.values())
    assert all(n == 1 for n in completions.values()), completions
    for s in plan.steps:
        if statuses[s.id] == TaskStatus.COMPLETED:
            assert completions.get(s.id) == 1
            assert claims[s.id] >= 1
    if not failed:
        assert status.state == "completed"
        assert set(statuses.values()) == {TaskStatus.COMPLETED}
    else:
        assert status.state == "failed"
        # No step whose inputs were not all complete ever ran.
        for s in plan.steps:
            if any(statuses[p] != TaskStatus.COMPLETED for p in preds[s.id]):
                assert s.id not in claims
                assert statuses[s.id] in (TaskStatus.CANCELLED, TaskStatus.DEAD)
    if plan.on_failure is not None:
        alert = plan.on_failure.id
        if failed:  # released once, ran, ended once (it may fail too: failures are random)
            assert claims[alert] >= 1
            assert completions.get(alert, 0) + (statuses_of(client, alert) == "dead") == 1
        else:
            assert alert not in claims
    # Nothing waits forever: no waiting step, no flow entry left for a finished step.
    assert client.redis.hlen(client.keys.flow_wait) == 0
    assert client.redis.hlen(client.keys.flow) == 0


def statuses_of(client: Client, task_id: str) -> str:
    return str(client.status(task_id).status.value)


@pytest.mark.parametrize("seed", SEEDS)
def test_workflows_without_failures_complete_every_step_once(
    client: Client, clock: FakeClock, seed: int
) -> None:
    run_model(client, clock, seed, failures=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_failing_workflow_fails_once_and_runs_on_failure_once(
    client: Client, clock: FakeClock, seed: int
) -> None:
    run_model(client, clock, seed, failures=True)
