"""A real Prometheus scrapes real worker and operator processes; every dashboard panel and
variable query returns series, and every metric each alert reads exists."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
import yaml
from promql import PrometheusServer, all_expressions, metric_names, rule_expressions

from kubeq.examples.simulator import DeviceFleet
from kubeq_operator.local.runner import LocalRunner

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def manifest(tmp_path: Path) -> Path:
    body = yaml.safe_load((ROOT / "examples" / "telemetry.yaml").read_text())
    body["spec"]["autoscaling"].update(
        {"minReplicas": 2, "maxReplicas": 2, "pollIntervalSeconds": 0.5}
    )
    path = tmp_path / "telemetry.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def wait_for(prom: PrometheusServer, expr: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not prom.query(expr):
        if time.monotonic() > deadline:
            pytest.fail(f"no series for {expr} after {timeout}s: {prom.log()[-1500:]}")
        time.sleep(0.5)


async def test_every_dashboard_query_and_alert_metric_has_series(
    tmp_path: Path, redis_url: str
) -> None:
    # Given kubeq up's operator loop and two real worker processes on the telemetry queue
    runner = LocalRunner(manifest(tmp_path), redis_url=redis_url, metrics_port=0)
    await runner.start()
    stop = asyncio.Event()
    loop_task = asyncio.create_task(runner.run(stop, lambda s: None))
    prom = None
    try:
        deadline = time.monotonic() + 30
        while (
            len(runner.backend.metrics_endpoints()) < 2 or (await runner.client.stats()).workers < 2
        ):
            assert time.monotonic() < deadline, "workers did not register"
            await asyncio.sleep(0.2)
        targets = [f"127.0.0.1:{runner.metrics_port}", *runner.backend.metrics_endpoints()]
        prom = PrometheusServer(tmp_path / "prometheus", targets=targets).start()
        # When telemetry flows (good readings, faulty ones, retries) for a few scrapes
        fleet = DeviceFleet(20, random.Random(5), faulty=0.1)
        for _ in range(20):
            await runner.client.submit_many(fleet.next_tasks(20, int(time.time() * 1000)))
            await asyncio.sleep(0.25)
        await asyncio.to_thread(wait_for, prom, f'count(up{{job="kubeq"}} == 1) == {len(targets)}')
        await asyncio.to_thread(wait_for, prom, "sum(kubeq_tasks_completed_total) > 0")
        await asyncio.to_thread(wait_for, prom, "sum(kubeq_tasks_dead_lettered_total) > 0")
        await asyncio.sleep(3)  # a few more scrapes, so rate() has samples in its window
        # Then every panel and variable query returns series
        empty = []
        rules = rule_expressions()
        for where, expr in all_expressions():
            if where.startswith("alerts.yaml"):
                continue
            if not await asyncio.to_thread(prom.query, expr):
                empty.append(f"{where}: {expr}")
        assert empty == []
        # and every metric an alert reads is being scraped (alerts themselves stay quiet)
        missing = []
        for alert, expr in rules.items():
            for name in sorted(metric_names(expr)):
                if not await asyncio.to_thread(prom.query, f'count({{__name__="{name}"}})'):
                    missing.append(f"{alert}: {name}")
        assert missing == []
    finally:
        if prom is not None:
            prom.stop()
        stop.set()
        await loop_task
        await runner.shutdown()
