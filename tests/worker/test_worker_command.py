"""`kubeq worker` as a real process: it exits promptly after a drain even with a stuck
sync handler, leaves no handler process behind, and imports the app from the current
directory as celery and rq do (issue 10 items 1 and 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker_support import HERE, REPO, wait_until

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.redis_server import free_port

pytestmark = pytest.mark.slow
KUBEQ = str(Path(sys.executable).parent / "kubeq")

APP = """
import time
from kubeq import App

app = App("cwd-app")


@app.task("hang")
def hang(seconds, ctx):
    time.sleep(seconds)
    return "woke"


@app.task("says_hello")
def says_hello(name, ctx):
    ctx.logger.info("hello %s from the handler's process", name)
    return "said"


@app.task("hang_in_thread", executor="thread")
def hang_in_thread(seconds, ctx):
    time.sleep(seconds)  # never looks at ctx.stopped()
    return "woke"
"""


def _sleeping_in_hang(pid: int) -> bool:
    """A process whose main thread sleeps (the `hang` handler), not the forkserver."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        children = children_of(pid)
    except OSError:
        return False
    return "nanosleep" in wchan or ("hrtimer" in wchan and not children)


def descendants_of(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_kubeq_worker_imports_from_cwd_and_exits_promptly_with_a_stuck_handler(
    redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "cwd_app.py").write_text(APP)
    config = QueueConfig(name=f"cmd{os.getpid()}", lease_seconds=2, heartbeat_seconds=0.5)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH",) and not k.startswith("KUBEQ_")
    }
    env.update(KUBEQ_QUEUE_CONFIG=config.model_dump_json(), KUBEQ_GRACE_SECONDS="0.5")
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [KUBEQ, "--redis-url", redis_url, "worker", "--app", "cwd_app:app", "--queue",
         config.name, "--metrics-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with Client.from_url(redis_url, config.name, config=config) as client:
            hello = client.submit("says_hello", "kubeq")
            wait_until(lambda: client.status(hello).status.terminal, 30, "hello")
            tid = client.submit("hang", 120)
            in_thread = client.submit("hang_in_thread", 120)
            wait_until(
                lambda: (
                    proc.poll() is None
                    and client.status(tid).status == TaskStatus.RUNNING
                    and client.status(in_thread).status == TaskStatus.RUNNING
                ),
                30,
                "the handlers to start (the app imported from the cwd)",
            )
            time.sleep(0.3)  # the child that runs `hang` is forked by now
            handlers = descendants_of(proc.pid)
            assert handlers, "the sync handler runs in a child process"
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            assert proc.wait(15) == 0
            took = time.monotonic() - t0
            assert took < 5, f"exit took {took:.1f}s after SIGTERM (grace 0.5s)"
            for t in (tid, in_thread):
                st = client.status(t)
                assert (st.status, st.attempts) == (TaskStatus.PENDING, 0)  # released
            assert client.workers() == []  # deregistered on exit
        for pid in handlers:
            wait_until(lambda p=pid: not Path(f"/proc/{p}").exists()
                       or "Z" in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3],
                       5, f"handler process {pid} gone")  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert "stopped" in text, text[-3000:]
    assert "hello kubeq from the handler's process" in text, text[-3000:]


_ = (HERE, REPO)


def test_a_sigkilled_worker_leaves_no_handler_process_running(
    redis_url: str, tmp_path: Path
) -> None:
    # A handler outliving its worker would run on while the reaper hands its task to
    # another worker: the same task twice, concurrently.
    (tmp_path / "cwd_app.py").write_text(APP)
    config = QueueConfig(name=f"kill{os.getpid()}", lease_seconds=2, heartbeat_seconds=0.5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEQ_")}
    env.update(KUBEQ_QUEUE_CONFIG=config.model_dump_json())
    proc = subprocess.Popen(
        [KUBEQ, "--redis-url", redis_url, "worker", "--app", "cwd_app:app", "--queue",
         config.name, "--metrics-port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Client.from_url(redis_url, config.name, config=config) as client:
            tid = client.submit("hang", 120)
            wait_until(lambda: client.status(tid).status == TaskStatus.RUNNING, 30, "running")
            # The handler runs in a grandchild (forked by the forkserver): find it.
            handlers = wait_until(
                lambda: [p for p in descendants_of(proc.pid) if _sleeping_in_hang(p)],
                10,
                "the handler process",
            )
            proc.kill()
            proc.wait(10)

            def gone(pid: int) -> bool:
                try:
                    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    return True
                return state == "Z"

            wait_until(lambda: all(gone(p) for p in handlers), 10, "handler processes gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_frozen_workers_handler_stops_before_its_lease_can_expire(
    redis_url: str, tmp_path: Path
) -> None:
    from worker_support import WorkerProcess, queue_config

    config = queue_config()  # lease 1 s: the children stop after 0.5 s without a ping
    w = WorkerProcess(redis_url, config, tmp_path)
    marker = tmp_path / "marker"
    try:
        w.wait_ready()
        with Client.from_url(redis_url, config.name, config=config) as client:
            tid = client.submit("sync_slow", {"seconds": 2.0, "marker": str(marker)})
            handlers = wait_until(
                lambda: [p for p in descendants_of(w.pid) if _sleeping_in_hang(p)],
                20,
                "the handler process",
            )
            w.signal(signal.SIGSTOP)  # frozen: no heartbeat, no ping
            try:
                time.sleep(0.9)  # < the 1 s lease: nobody else may have the task yet
                assert all(not Path(f"/proc/{p}").exists() or _zombie(p) for p in handlers)
                time.sleep(1.6)  # past the handler's natural end
                assert not marker.exists(), "a frozen worker's handler ran on"
            finally:
                w.signal(signal.SIGCONT)
            wait_until(lambda: client.status(tid).status.terminal, 20, "the task ends")
    finally:
        w.stop()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
