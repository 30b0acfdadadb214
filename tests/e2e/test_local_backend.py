"""The local backend with real (scripted) worker processes on a fake clock: crash
back-off with the reason kept, and workers killed after their grace period reported as
killed, not drained."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from kubeq_operator.engine.backend import QueueRef
from kubeq_operator.local.backend import LocalBackend
from kubeq_operator.local.runner import load_manifest

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _script(tmp_path: Path, body: str) -> str:
    """An executable standing in for `python -m kubeq.worker`."""
    path = tmp_path / "fake-python"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _wait_dead(backend: LocalBackend, ref: QueueRef) -> None:
    deadline = time.monotonic() + 10
    while any(w.alive for w in backend.workers(ref)) and time.monotonic() < deadline:
        time.sleep(0.02)


async def test_a_crashing_worker_is_restarted_with_backoff_and_its_reason_kept(
    tmp_path: Path,
) -> None:
    python = _script(tmp_path, "import sys; print('ValueError: bad app', flush=True); sys.exit(1)")
    clock = FakeClock()
    backend = LocalBackend("redis://127.0.0.1:1/0", tmp_path / "logs", python=python, clock=clock)
    ref, spec = load_manifest(ROOT / "examples" / "telemetry.yaml")
    await backend.apply(ref, spec, spec.to_queue_config(ref.name, ref.namespace))
    await backend.scale(ref, 1)
    for _ in range(8):  # eight ticks, 0.5 s apart: without back-off, a restart on each
        _wait_dead(backend, ref)
        clock.now += 0.5
        await backend.replicas(ref)
    info = backend.crashes(ref)
    names = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
    # start at 0 s; crash 1 seen at 0.5 s → next start at 1.5 s; crash 2 seen at 2 s →
    # next start at 4 s: three starts in 4 s
    assert len(names) == 3, names
    assert info.count == 2
    assert info.last_error == "ValueError: bad app"
    assert info.restart_in == 0  # the back-off has passed: worker 3 is running
    backend.kill_all()
    _wait_dead(backend, ref)


async def test_workers_killed_after_the_grace_period_are_reported_as_killed(
    tmp_path: Path,
) -> None:
    # A worker that ignores SIGTERM (as a handler stuck in C code would)
    python = _script(
        tmp_path,
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)",
    )
    backend = LocalBackend("redis://127.0.0.1:1/0", tmp_path / "logs", python=python)
    ref, spec = load_manifest(ROOT / "examples" / "telemetry.yaml")
    worker = spec.worker.model_copy(update={"termination_grace_period_seconds": 1})
    spec = spec.model_copy(update={"worker": worker})
    await backend.apply(ref, spec, spec.to_queue_config(ref.name, ref.namespace))
    await backend.scale(ref, 2)
    await asyncio.sleep(0.3)
    await backend.scale(ref, 0)
    clean = await asyncio.to_thread(backend.wait_stopped, 5)
    fates = backend.fates()
    assert clean is True  # killed by the grace deadline of the pool, not by wait_stopped
    assert [e.killed for e in fates.ended] == ["grace", "grace"]
    assert "drained" not in fates.summary()
    assert "2 killed after the 1 s grace period" in fates.summary()
    assert all(not w.alive for w in backend.workers(ref))
