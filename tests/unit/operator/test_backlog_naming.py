"""Issue 11 item 5: one meaning per word. `waiting` = ready + due; `backlog` = waiting +
in flight (what the autoscaler scales on). The TaskQueue status, the printer columns, the
operator metrics, `kubeq stats` and the dashboards/alerts must all agree on one reading."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kubeq.cli.stats import stats_json
from kubeq.protocol import LevelStats, QueueStats
from kubeq_operator.core import status as st
from kubeq_operator.core.crd_schema import load_crd
from kubeq_operator.core.scaling import Decision, History, Observation, Tick
from kubeq_operator.engine.metrics import OperatorMetrics

ROOT = Path(__file__).resolve().parents[3]

STATS = QueueStats(
    queue="ns/q",
    at=0,
    levels=[
        LevelStats(name="high", ready=3, delayed=9, due=2, in_flight=4, oldest_enqueued_at=None),
        LevelStats(name="low", ready=10, delayed=0, due=1, in_flight=7, oldest_enqueued_at=None),
    ],
    dead=0,
    workers=1,
    counters={},
)
WAITING, BACKLOG = 3 + 2 + 10 + 1, 3 + 2 + 4 + 10 + 1 + 7


def test_every_surface_reads_the_same_numbers() -> None:
    assert (STATS.waiting, STATS.backlog) == (WAITING, BACKLOG)
    # TaskQueue status.
    tick = Tick(Decision(1, "r", History(), "none"), 1, 1, STATS)
    fields = st.observed_fields(tick, now="t")
    assert (fields["waiting"], fields["backlog"]) == (WAITING, BACKLOG)
    assert sum(fields["waitingByPriority"].values()) == WAITING
    assert sum(fields["backlogByPriority"].values()) == BACKLOG
    # Operator metrics (dashboards sum them over priorities).
    metrics = OperatorMetrics()
    metrics.observe_stats("ns/q", STATS)
    total = {
        name: sum(
            metrics.registry.get_sample_value(name, {"queue": "ns/q", "priority": lv.name}) or 0
            for lv in STATS.levels
        )
        for name in ("kubeq_queue_waiting_tasks", "kubeq_queue_backlog_tasks")
    }
    assert total == {"kubeq_queue_waiting_tasks": WAITING, "kubeq_queue_backlog_tasks": BACKLOG}
    # kubeq stats -o json.
    totals = stats_json(STATS)["totals"]
    assert (totals["waiting"], totals["backlog"]) == (WAITING, BACKLOG)
    # The scaling decision's input and its reason string.
    obs = Observation(
        at=0,
        waiting_by_priority={lv.name: lv.waiting for lv in STATS.levels},
        in_flight=STATS.in_flight,
    )
    assert (obs.waiting, obs.backlog) == (WAITING, BACKLOG)


def test_crd_status_and_columns_name_both() -> None:
    (version,) = load_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Waiting"]["jsonPath"] == ".status.waiting"
    assert columns["Backlog"]["jsonPath"] == ".status.backlog"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert "ready + due" in status["waiting"]["description"]
    assert "waiting + in-flight" in status["backlog"]["description"]
    assert "waiting + in-flight" in columns["Backlog"]["description"].lower()


def test_dashboards_and_alerts_use_only_the_two_names() -> None:
    """Every backlog-like series they query is one of the two metrics, so no panel or
    alert can mean a third thing."""
    texts = [p.read_text() for p in (ROOT / "charts/kubeq/dashboards").glob("*.json")]
    texts.append((ROOT / "charts/kubeq/rules/alerts.yaml").read_text())
    for text in texts:
        for token in ("kubeq_queue_ready_tasks", "kubeq_queue_pending_tasks"):
            assert token not in text
    alerts = yaml.safe_load((ROOT / "charts/kubeq/rules/alerts.yaml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if "kubeq_queue_backlog_tasks" in rule["expr"]:
                assert "waiting + in-flight" in json.dumps(rule["annotations"]) or (
                    "ready + due + in-flight" in json.dumps(rule["annotations"])
                )
