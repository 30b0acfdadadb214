"""The parts of `kubeq up` that decide: crash back-off, stop messages, the live view at 80
columns, the state directory's port."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from kubeq.protocol import LevelStats, QueueStats
from kubeq.redis_server import port_is_free
from kubeq_operator.core.scaling import Decision, History, Tick
from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.local.backend import (
    CrashInfo,
    Ended,
    WorkerFates,
    crash_backoff,
    last_line,
)
from kubeq_operator.local.live import line, render
from kubeq_operator.local.runner import Snapshot, rate_over
from kubeq_operator.local.state_dir import PORT_RANGE, StateDir, StateDirError, default_port

ROOT = Path(__file__).resolve().parents[3]


def test_crash_backoff_doubles_and_is_capped() -> None:
    assert [crash_backoff(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_stop_summary_says_what_happened_to_each_worker() -> None:
    drained = Ended("w-1", 0, None)
    assert WorkerFates((drained, drained), 30).summary() == "stopped: 2 worker(s) drained"
    killed = WorkerFates((drained, Ended("w-2", -9, "grace")), 30).summary()
    assert killed.startswith("stopped: 1 worker(s) drained; 1 killed after the 30 s grace")
    assert "drained" not in WorkerFates((Ended("w-3", -9, "forced"),), 30).summary()
    assert "second Ctrl-C" in WorkerFates((Ended("w-3", -9, "forced"),), 30).summary()
    starting = WorkerFates((Ended("w-5", -15, None),), 30).summary()
    assert starting == "stopped: 1 stopped while still starting (no task taken)"
    failed = WorkerFates((Ended("w-4", 3, None),), 30).summary()
    assert failed == "stopped: 1 exited with an error while draining (w-4 3)"
    assert WorkerFates((), 30).summary() == "stopped: no worker was running"


def test_last_line_is_the_last_non_blank_line(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("starting\nTraceback ...\nValueError: bad app\n\n  \n")
    assert last_line(log) == "ValueError: bad app"
    assert last_line(tmp_path / "missing.log") is None
    log.write_text("2026-12-01 14:51:03,127 ERROR kubeq.worker: cannot load app x:y\n")
    assert last_line(log) == "ERROR kubeq.worker: cannot load app x:y"
    log.write_text('{"level": "ERROR", "message": "cannot load app x:y", "ts": 1}\n')
    assert last_line(log) == "ERROR cannot load app x:y"


def _snapshot(p99: float | None, crashes: CrashInfo | None = None) -> Snapshot:
    level = LevelStats(
        name="default", ready=1234, due=0, delayed=5, in_flight=16, oldest_enqueued_at=None
    )
    stats = QueueStats(
        queue="default/telemetry",
        at=0,
        workers=5,
        levels=[level],
        dead=7,
        counters={"completed": 123456, "retried": 89},
    )
    decision = Decision(8, "backlog 1250 / target 200 → 7, capped at max 8", History(), "up")
    return Snapshot(
        12.5,
        Tick(decision, 5, 5, stats),
        stats,
        2,
        12345.0,
        0.054,
        p99,
        [(7.2, "1 → 5: backlog 822 (ready 806 + in-flight 16) / target 200 → 5")],
        crashes or CrashInfo(0, None),
        23456.0,
    )


def _text(renderable: object, width: int) -> str:
    con = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    con.print(renderable)
    return con.export_text()


def test_live_view_shows_p99_and_the_crash_reason_at_80_columns() -> None:
    ref = QueueRef("default", "telemetry")
    text = _text(render(ref, _snapshot(1.969), 8471), 80)
    assert "p99 1,969 ms" in text
    assert "submitted 23,456/s" in text
    assert "throughput 12,345/s" in text
    assert "submitted=23456/s throughput=12345/s" in line(ref, _snapshot(None))
    assert "p50 54 ms" in text
    assert "dead-letter 7" in text
    crash = CrashInfo(3, "ModuleNotFoundError: No module named 'myapp'", 4.0)
    text = _text(render(ref, _snapshot(None, crash), 8471), 80)
    assert "worker crashes 3, next start in 4 s" in text
    assert "No module named 'myapp'" in text.replace("\n", "").replace("│", "")
    assert 'crashes=3 last_crash="ModuleNotFoundError' in line(ref, _snapshot(None, crash))


def test_default_port_is_stable_per_directory_and_in_range(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / ".kubeq", tmp_path / "b" / ".kubeq"
    assert default_port(a) == default_port(a)
    assert default_port(a) != default_port(b)
    assert PORT_RANGE[0] <= default_port(a) < PORT_RANGE[1]


def test_state_dir_saves_its_port_and_refuses_a_second_owner(tmp_path: Path) -> None:
    first = StateDir(tmp_path / ".kubeq")
    first.acquire()
    port = first.redis_port(None)
    assert first.saved_port() == port
    assert StateDir(tmp_path / ".kubeq").redis_port(None) == port  # reused
    with pytest.raises(StateDirError, match="another `kubeq up`"):
        StateDir(tmp_path / ".kubeq").acquire()
    first.release()
    again = StateDir(tmp_path / ".kubeq")
    again.acquire()
    again.release()


def test_port_is_free_sees_a_listener() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_is_free(s.getsockname()[1])


def test_live_view_links_the_dashboard_and_shows_a_paused_queue() -> None:
    ref = QueueRef("default", "telemetry")
    snap = _snapshot(None)
    link = "http://127.0.0.1:8480/q/default/telemetry"
    text = _text(render(ref, snap, None, dashboard=link), 120)
    assert link in text
    assert "PAUSED" not in text
    assert snap.stats is not None
    paused = replace(snap, stats=snap.stats.model_copy(update={"paused": True}))
    assert "PAUSED (kubeq resume)" in _text(render(ref, paused, None), 120)


def test_rate_over_a_window_follows_the_counter_and_its_resets() -> None:
    assert rate_over([], 10.0, 10.0) is None
    assert rate_over([(9.0, 5)], 10.0, 10.0) is None
    samples = [(0.0, 0), (2.0, 100), (4.0, 300), (6.0, 300)]
    assert rate_over(samples, 6.0, 10.0) == 50.0
    assert rate_over(samples, 14.0, 10.0) == 0.0  # only (4, 300) and (6, 300) are recent
    assert rate_over([(0.0, 500), (1.0, 20), (2.0, 40)], 2.0, 10.0) == 20.0  # restarted at 0
