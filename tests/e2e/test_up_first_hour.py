"""`kubeq up` as a new user meets it (issue 15): data kept between runs, a stable port in
an env file that other commands read, clear errors that leave nothing running, truthful
stop messages, output that survives a pipe, no temporary directories left behind.

Real processes throughout: `kubeq up` in a subprocess, its private redis-server, worker
processes, and `kubeq` commands run from another "shell" (subprocess) in the same tree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def manifest(tmp_path: Path, *, app: str | None = None, **autoscaling: object) -> Path:
    body = yaml.safe_load((ROOT / "examples" / "telemetry.yaml").read_text())
    body["spec"]["autoscaling"].update({"pollIntervalSeconds": 0.5, **autoscaling})
    body["spec"]["worker"]["terminationGracePeriodSeconds"] = 5
    # These tests count their own tasks: no scheduled fleet rollup among them.
    body["spec"].pop("schedules", None)
    if app is not None:
        body["spec"]["worker"]["app"] = app
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def idle_manifest(tmp_path: Path) -> Path:
    """No worker ever starts (min 0, activation far away): submitted tasks stay queued."""
    return manifest(tmp_path, minReplicas=0, activationBacklog=100_000)


def clean_env(tmp: Path) -> dict[str, str]:
    """A shell with no KUBEQ_* settings and its own TMPDIR (to see what is left there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEQ_")}
    env["TMPDIR"] = str(tmp)
    return env


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


class Up:
    """`kubeq up` running in a subprocess, in directory `cwd`, output piped."""

    def __init__(self, cwd: Path, *args: str, tmp: Path) -> None:
        self.cwd = cwd
        self._before = _inode(cwd / ".kubeq" / "env")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubeq.cli", "up", "--no-live", *args],
            cwd=cwd,
            env=clean_env(tmp),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out = ""
        self.err = ""

    def wait_ready(self, timeout: float = 60) -> None:
        env = self.cwd / ".kubeq" / "env"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _inode(env) not in (None, self._before) and self.proc.poll() is None:
                return  # this run wrote its env file: Redis is up
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"kubeq up did not start:\n{self.out}\n{self.err}")

    def finish(self, timeout: float = 60) -> int:
        """Wait for it to end by itself (an error, or --duration)."""
        self.out, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.out, self.err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def kubeq(
    cwd: Path, tmp: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeq.cli", *args],
        cwd=cwd,
        env=clean_env(tmp),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def our_processes(state: Path) -> list[psutil.Process]:
    """Every process, orphans (PPID 1) included, whose command line names this tree."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if str(state) in cmd or (p.info["cwd"] or "").startswith(str(state)):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for p in found if p.pid != os.getpid()]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(project directory, its TMPDIR); afterwards nothing may run from the project."""
    project = tmp_path / "project"
    project.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield project, tmp
    left = our_processes(project)
    for p in left:
        p.kill()
    assert left == [], f"left running: {[p.info for p in left]}"


def test_tasks_survive_a_restart_on_a_stable_port_found_through_the_env_file(
    tree: tuple[Path, Path],
) -> None:
    project, tmp = tree
    path = idle_manifest(project)
    up = Up(project, "-f", str(path), "--metrics-port", "0", tmp=tmp)
    up.wait_ready()
    # Another shell in a subdirectory of the project, no URL or queue given: the env file
    sub = project / "src"
    sub.mkdir()
    lines = "".join(json.dumps({"type": "t", "payload": i}) + "\n" for i in range(320))
    bulk = kubeq(sub, tmp, "submit-many", input=lines)
    assert bulk.returncode == 0, bulk.stderr
    assert len(bulk.stdout.splitlines()) == 320
    delayed = kubeq(sub, tmp, "submit", "t", "{}", "--delay", "3600")
    assert delayed.returncode == 0, delayed.stderr
    task_id = delayed.stdout.strip()
    assert up.stop() == 0, up.err
    # Then the stop message says what is left and where
    assert "321 task(s) left in queue default/telemetry (320 ready, 1 delayed" in up.out, up.out
    assert f"kept in {project / '.kubeq' / 'redis'}" in up.out
    first_url = (project / ".kubeq" / "env").read_text()
    # and the next run uses the same port and still has every task
    again = Up(project, "-f", str(path), "--metrics-port", "0", tmp=tmp)
    again.wait_ready()
    assert (project / ".kubeq" / "env").read_text() == first_url
    stats = kubeq(sub, tmp, "-o", "json", "stats")
    assert stats.returncode == 0, stats.stderr
    totals = json.loads(stats.stdout)["totals"]
    assert (totals["ready"], totals["delayed"]) == (320, 1)
    assert json.loads(kubeq(sub, tmp, "status", task_id, "-o", "json").stdout)["id"] == task_id
    assert again.stop() == 0
    # Each tick is one unwrapped line even though stdout is a pipe
    ticks = [ln for ln in up.out.splitlines() if ln.startswith("t=")]
    assert ticks
    assert all("decision=" in ln for ln in ticks), up.out
    assert all(not ln.startswith(" ") for ln in up.out.splitlines()), up.out
    # and no temporary directory is left behind
    assert list(tmp.iterdir()) == []


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def test_a_busy_metrics_port_is_a_clear_error_and_nothing_keeps_running(
    tree: tuple[Path, Path],
) -> None:
    project, tmp = tree
    sock, port = _busy_port()
    with sock:
        up = Up(project, "-f", str(idle_manifest(project)), "--metrics-port", str(port), tmp=tmp)
        code = up.finish()
    assert code == 1
    assert f"error: cannot serve the operator's metrics on 127.0.0.1:{port}" in up.err
    assert "--metrics-port" in up.err
    assert "Traceback" not in up.err + up.out
    # nothing started, nothing orphaned (the tree fixture checks every process, PPID 1 too)
    assert not any("redis-server" in p.name() for p in our_processes(project))


def test_a_busy_redis_port_and_a_second_up_are_clear_errors(tree: tuple[Path, Path]) -> None:
    project, tmp = tree
    path = idle_manifest(project)
    sock, port = _busy_port()
    with sock:
        up = Up(
            project, "-f", str(path), "--metrics-port", "-1", "--redis-port", str(port), tmp=tmp
        )
        assert up.finish() == 1
    assert f"--redis-port {port} is in use" in up.err
    assert "Traceback" not in up.err
    first = Up(project, "-f", str(path), "--metrics-port", "-1", tmp=tmp)
    first.wait_ready()
    second = Up(project, "-f", str(path), "--metrics-port", "-1", tmp=tmp)
    assert second.finish() == 1
    assert "another `kubeq up`" in second.err
    assert "is using" in second.err
    assert first.proc.poll() is None  # the first one is untouched
    assert first.stop() == 0


def test_a_crashing_app_is_shown_with_its_reason_and_restarted_with_backoff(
    tree: tuple[Path, Path],
) -> None:
    project, tmp = tree
    path = manifest(project, app="no_such_module:app", minReplicas=1)
    up = Up(project, "-f", str(path), "--metrics-port", "-1", "--duration", "8", tmp=tmp)
    assert up.finish(timeout=90) == 0, up.err
    crashed = [ln for ln in up.out.splitlines() if "crashes=" in ln]
    assert crashed, up.out
    assert "No module named 'no_such_module'" in crashed[-1]
    assert "No module named 'no_such_module'" in up.err  # the log says it too
    # Backing off 1, 2, 4 s: no more than 4 starts in 8 s (without: one per tick, ~16)
    starts = list((project / ".kubeq" / "logs").glob("*.log"))
    assert 2 <= len(starts) <= 4, sorted(p.name for p in starts)
    assert "stopped:" in up.out
    assert "workers crashed" in up.out  # and the stop message repeats why


def test_killing_kubeq_up_outright_takes_redis_and_the_workers_with_it(
    tree: tuple[Path, Path],
) -> None:
    project, tmp = tree
    path = manifest(project, minReplicas=2)
    up = Up(project, "-f", str(path), "--metrics-port", "-1", tmp=tmp)
    up.wait_ready()
    task_id = kubeq(project, tmp, "submit", "t", "{}", "--delay", "3600").stdout.strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = psutil.Process(up.proc.pid).children(recursive=True)
        if len(children) >= 3:  # redis-server and two workers
            break
        time.sleep(0.1)
    assert len(children) >= 3
    up.proc.kill()  # no signal handler, no cleanup code runs
    up.proc.communicate()
    _gone, alive = psutil.wait_procs(children, timeout=20)
    assert alive == [], f"left running after SIGKILL: {alive}"
    # and the next run finds the data Redis flushed as it went down
    again = Up(project, "-f", str(path), "--metrics-port", "-1", tmp=tmp)
    again.wait_ready()
    status = kubeq(project, tmp, "-o", "json", "status", task_id)
    assert json.loads(status.stdout)["status"] == "scheduled", status.stderr
    assert again.stop() == 0


async def test_without_a_state_directory_nothing_is_left_on_disk(tmp_path: Path) -> None:
    from kubeq_operator.local.runner import LocalRunner

    runner = LocalRunner(idle_manifest(tmp_path), metrics_port=-1)  # the demo's way
    await runner.start()
    run_dir = runner.run_dir
    assert run_dir.is_dir()
    report = await runner.shutdown()
    assert not run_dir.exists()
    assert report.kept_in is None  # and the stop message says the tasks were discarded


def test_with_a_given_redis_the_password_stays_out_of_the_output(
    tree: tuple[Path, Path],
) -> None:
    from kubeq.redis_server import RedisServer

    project, tmp = tree
    with RedisServer(password="s3cret-pw") as server:
        up = Up(
            project,
            "-f",
            str(idle_manifest(project)),
            "--redis",
            server.url,
            "--metrics-port",
            "-1",
            tmp=tmp,
        )
        up.wait_ready()
        assert kubeq(project, tmp, "submit", "t", "{}").returncode == 0  # via the env file
        assert up.stop() == 0, up.err
    assert "s3cret-pw" not in up.out + up.err
    assert f"redis://***@127.0.0.1:{server.port}/0" in up.out
    assert "1 task(s) left in queue default/telemetry" in up.out
    env = project / ".kubeq" / "env"
    assert env.stat().st_mode & 0o777 == 0o600  # the env file holds the password
