"""Alert rules and Grafana dashboards of the chart: promtool checks and unit tests, every
query parsed by a real Prometheus, and every metric they read checked against the code."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import (
    DASHBOARDS,
    RULES,
    PrometheusServer,
    QueryError,
    all_expressions,
    dashboard_panels,
    dashboard_queries,
    exported_metrics,
    metric_names,
    rule_expressions,
    used_labels,
)

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "alerts_test.yaml"
ALERTS = {
    "KubeqBacklogGrowing",
    "KubeqOldestTaskTooOld",
    "KubeqDeadLetterGrowing",
    "KubeqReplicasBelowDesired",
    "KubeqReconcileErrors",
    "KubeqRedisUnreachable",
}
EXPRESSIONS = all_expressions()


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (see the Makefile)"
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=HERE, check=False
    )


def _alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


# --- rules -------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_wrong_expectation(tmp_path: Path) -> None:
    # The unit tests compare exact alerts: a wrong severity must fail them.
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(RULES)]
    case = tests["tests"][0]["alert_rule_test"][-1]
    case["exp_alerts"][0]["exp_labels"]["severity"] = "page"
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(broken))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    assert {a["alert"] for a in _alerts()} == ALERTS


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", ()):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == ALERTS
    assert quiet == ALERTS


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_carries_severity_summary_and_runbook(alert: str) -> None:
    (rule,) = (r for r in _alerts() if r["alert"] == alert)
    assert rule.get("for"), "every alert waits before firing"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert "{{ $labels.queue }}" in annotations["summary"]
    assert annotations["description"].strip()
    runbook = annotations["runbook"]
    assert all(f"{n}. " in runbook for n in (1, 2)), "a runbook lists concrete steps"
    assert "by (queue)" in rule["expr"], "alerts are per queue, whichever pod reports"


# --- dashboards --------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"].startswith("kubeq")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    queue = variables["queue"]
    assert queue["type"] == "query"
    assert queue["query"]["query"].startswith("label_values(")
    assert queue["query"]["query"].endswith(", queue)")
    assert variables["datasource"]["type"] == "datasource"
    panels = dashboard_panels(path)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # Every query follows the queue picker.
            assert 'queue=~"$queue"' in target["expr"], (panel["title"], target["expr"])


PANELS = {
    "queue-overview.json": {
        "Backlog by priority", "Throughput by task type", "Queue wait", "Failures", "Retries",
        "Dead-lettered", "Desired vs current replicas", "Leases lost",
    },
    "workers-operator.json": {
        "In-flight vs concurrency", "Redis errors (workers)", "Settles refused",
        "Reconcile errors", "Redis probe latency", "Redis reachable", "Scale events",
        "Schedule ticks",
    },
}  # fmt: skip


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_the_panels(path: Path) -> None:
    titles = {p["title"] for p in dashboard_panels(path)}
    assert PANELS[path.name] <= titles
    if path.name == "queue-overview.json":
        (wait,) = (p for p in dashboard_panels(path) if p["title"] == "Queue wait")
        quantiles = [t["expr"].split(",")[0] for t in wait["targets"]]
        assert quantiles == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]


def test_dashboards_show_every_exported_metric() -> None:
    shown = {m for path in DASHBOARDS for e in dashboard_queries(path) for m in metric_names(e)}
    exported = exported_metrics()
    bases = {m.removesuffix("_bucket") for m in exported if m.endswith("_bucket")}
    missing = {
        m for m in exported
        if m not in shown and not any(m.startswith(b) and b + "_bucket" in shown for b in bases)
    }  # fmt: skip
    assert missing == set()


def test_queries_read_real_metrics_and_labels() -> None:
    exported = exported_metrics()
    for where, expr in EXPRESSIONS:
        metrics = metric_names(expr)
        assert metrics, where
        unknown = metrics - set(exported)
        assert not unknown, f"{where}: not exported by the worker or operator: {unknown}"
        labels = set().union(*(exported[m] for m in metrics))
        assert used_labels(expr) <= labels, f"{where}: labels {used_labels(expr) - labels}"


def test_dashboard_queries_substitute_the_queue() -> None:
    path = DASHBOARDS[0]
    for expr in dashboard_queries(path, queue="apps/telemetry"):
        assert "$" not in expr
        assert 'queue=~"apps/telemetry"' in expr


# --- every expression parses in a real Prometheus ----------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with PrometheusServer(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def test_prometheus_rejects_a_broken_expression(prometheus: PrometheusServer) -> None:
    with pytest.raises(QueryError) as excinfo:
        prometheus.query("sum(rate(kubeq_tasks_completed_total[5m])")
    assert excinfo.value.status == 400
    assert excinfo.value.body["errorType"] == "bad_data"


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_expression_is_valid_promql(prometheus: PrometheusServer, where: str, expr: str) -> None:
    try:
        result = prometheus.query(expr)
    except QueryError as exc:
        pytest.fail(f"{where}\n{expr}\n{exc}")
    assert isinstance(result, list)


def test_every_rule_and_panel_is_checked() -> None:
    wheres = [w for w, _ in EXPRESSIONS]
    assert sum(w.startswith(RULES.name) for w in wheres) == len(rule_expressions()) == len(ALERTS)
    panel_queries = sum(len(dashboard_queries(p)) for p in DASHBOARDS)
    assert sum(".json: " in w and ": variable" not in w for w in wheres) == panel_queries > 30


def test_every_alert_has_a_runbook_section_in_the_docs() -> None:
    docs = (HERE.parents[1] / "docs" / "kubernetes.md").read_text()
    assert "## Alerts and runbooks" in docs
    for alert in sorted(ALERTS):
        assert f"### {alert}\n" in docs, f"docs/kubernetes.md lacks a runbook for {alert}"
