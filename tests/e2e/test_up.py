"""`kubeq up` and the telemetry pipeline with real worker processes and a real redis-server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from kubeq.examples.simulator import Phase
from kubeq_operator.local.demo import run_demo

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def fast_manifest(tmp_path: Path, **autoscaling: object) -> Path:
    """examples/telemetry.yaml with windows short enough for a test."""
    body = yaml.safe_load((ROOT / "examples" / "telemetry.yaml").read_text())
    body["spec"]["autoscaling"].update(
        {
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetBacklogPerReplica": 100,
            "scaleDownStabilizationSeconds": 2,
            "pollIntervalSeconds": 0.5,
            **autoscaling,
        }
    )
    body["spec"]["worker"]["terminationGracePeriodSeconds"] = 20
    path = tmp_path / "telemetry.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


async def test_burst_scales_up_drains_and_scales_back_down_losing_nothing(
    tmp_path: Path,
) -> None:
    # Given a pool of 1-4 workers and a quiet → burst → quiet profile
    phases = [Phase("warm-up", 1, 20), Phase("burst", 5, 500), Phase("cool-down", 4, 20)]
    # When the fleet sends it
    report = await run_demo(
        fast_manifest(tmp_path),
        devices=20,
        scale=1.0,
        seed=3,
        out_dir=tmp_path / "out",
        settle_timeout=90,
        on_snapshot=lambda s: None,
        on_phase=lambda p: None,
        phases=phases,
    )
    # Then the pool grew for the burst and came back to the minimum once drained
    assert report.max_workers > report.min_replicas == 1
    assert report.final_workers == 1
    assert [s.desired for s in report.timeline][-1] == 1
    # and no scale-down interrupted a running task (nothing released, nothing reaped)
    assert report.released_by_scale_down == 0
    assert report.reaped == 0
    # and every task ended completed or dead-lettered, exactly once
    assert report.unaccounted == 0
    assert report.duplicates == 0
    assert report.completed + report.dead_lettered == report.submitted > 2000
    # and the queue's schedule (the fleet rollup, every 10 s) ran while it did
    assert report.scheduled >= 1
    assert report.dead_lettered == report.fleet["faulty"], report.dead_reasons
    assert set(report.dead_reasons) <= {"invalid_payload", "permanent_error"}
    assert (tmp_path / "out" / "demo-telemetry.png").stat().st_size > 10_000


def test_ctrl_c_drains_and_leaves_no_process_behind(tmp_path: Path) -> None:
    manifest = fast_manifest(tmp_path, minReplicas=2)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubeq.cli",
            "up",
            "-f",
            str(manifest),
            "--no-live",
            "--metrics-port",
            "0",
        ],
        cwd=tmp_path,  # its state directory: tmp_path/.kubeq
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    parent = psutil.Process(up.pid)
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    # a private redis-server and two workers
    while time.monotonic() < deadline:
        children = parent.children(recursive=True)
        names = [c.name() for c in children if c.is_running()]
        if sum("redis" in n for n in names) == 1 and len(names) >= 3:
            break
        time.sleep(0.2)
    else:
        up.kill()
        pytest.fail(f"kubeq up did not start its children: {up.communicate()[0]}")
    up.send_signal(signal.SIGINT)
    out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, out
    # each worker drained (or, SIGTERMed while still starting, stopped holding nothing)
    assert "stopped: " in out
    assert "killed" not in out
    assert "error" not in out
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left behind: {alive}"
    assert len(gone) == len(children)


def test_up_serves_the_dashboard_with_its_scale_decisions(tmp_path: Path) -> None:
    """`kubeq up --dashboard 0` prints the dashboard's link; the page shows the queue and
    the decision that started the pool, recorded by the autoscaler in Redis."""
    import httpx

    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubeq.cli",
            "up",
            "-f",
            str(fast_manifest(tmp_path)),
            "--no-live",
            "--metrics-port",
            "-1",
            "--dashboard",
            "0",
            "--duration",
            "30",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert up.stdout is not None
        link = ""
        for line in up.stdout:
            if line.startswith("dashboard on "):
                link = line.split()[-1]
                break
        assert link.startswith("http://127.0.0.1:"), "no dashboard link printed"
        deadline = time.monotonic() + 20
        page = ""
        while time.monotonic() < deadline:
            page = httpx.get(link, timeout=5).text
            if "<table class='scale'>" in page:
                break
            time.sleep(0.5)
        assert "<table class='scale'>" in page, page
        assert "telemetry" in page
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0
