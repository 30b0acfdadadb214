"""Issue 12: the worker runs on uvloop where installed and on asyncio's own loop, and
every handler kind (async, sync in a child process, thread, timeouts) works on both."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_support import WorkerProcess, queue_config, wait_until

from kubeq.protocol import Client
from kubeq.worker.loop import LoopUnavailable, pick_loop, uvloop_installed


def test_auto_takes_uvloop_only_when_installed() -> None:
    assert pick_loop("auto", True) == "uvloop"
    assert pick_loop("auto", False) == "asyncio"
    assert pick_loop("asyncio", True) == "asyncio"
    assert pick_loop("uvloop", True) == "uvloop"


def test_uvloop_asked_for_but_missing_is_a_clear_error() -> None:
    with pytest.raises(LoopUnavailable, match=r"kubeq\[fast\]"):
        pick_loop("uvloop", False)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_worker_runs_every_handler_kind_on_each_loop(
    loop: str, redis_url: str, tmp_path: Path
) -> None:
    if loop == "uvloop" and not uvloop_installed():
        pytest.fail("uvloop is part of the dev extra (kubeq[fast]): run make setup")
    config = queue_config()
    w = WorkerProcess(redis_url, config, tmp_path, env={"KUBEQ_EVENT_LOOP": loop})
    try:
        w.wait_ready()
        with Client.from_url(redis_url, config.name, config=config) as client:
            ids = {
                "noop": client.submit("noop"),
                "sync": client.submit("sync_quick", 0.01),
                "thread": client.submit(
                    "thread_cooperative", {"seconds": 0.01, "marker": str(tmp_path / "m")}
                ),
                "timeout": client.submit("times_out"),
            }
            done = {"noop", "sync", "thread"}
            wait_until(
                lambda: (
                    all(client.status(ids[k]).status.terminal for k in done)
                    and client.status(ids["timeout"]).error is not None
                ),
                30,
                "every task ends (the timeout's first attempt)",
            )
            st = {k: client.status(t) for k, t in ids.items()}
        assert {st[k].status for k in done} == {"completed"}
        err = st["timeout"].error
        assert err is not None
        assert err.type == "Timeout"
        assert f"event loop: {loop}" in w.log()
        assert "garbage collector: thresholds (20000, 10, 10), start-up frozen" in w.log()
    finally:
        w.stop()
