"""A private redis-server process: for `kubeq up`, the demo, tests and benchmarks.

Never the machine's shared server: a free port (never 6379), a temporary directory,
and the process stopped with its owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import redis


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:`port` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(max_port: int = 65535) -> int:
    """A free TCP port on loopback, never Redis's default 6379."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379 and port <= max_port:
            return port


class RedisServerError(RuntimeError):
    pass


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get `sig` when the process that started it
    dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG); None where that does not exist.

    The signal is tied to the *thread* that starts the child: call Popen from a thread
    that lives as long as the child should (the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: nobody to outlive
            os._exit(1)

    return preexec


class RedisServer:
    def __init__(
        self,
        *,
        port: int | None = None,
        directory: Path | None = None,
        appendonly: bool = False,
        appendfsync: str = "always",
        password: str | None = None,
        extra: tuple[str, ...] = (),
        executable: str = "redis-server",
        owned: bool = False,
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise RedisServerError(
                f"{executable} not found: install it (Debian/Ubuntu: apt-get install redis-server)"
                " or run `make setup`"
            )
        self.executable = path
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="kubeq-redis-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.appendonly = appendonly
        # "always" for the fault tests (nothing acknowledged is lost); "everysec" where a
        # second of writes at a crash is an acceptable price for speed (`kubeq up`).
        self.appendfsync = appendfsync
        self.password = password
        self.extra = extra
        # owned: the server dies with the process that started it, however that dies
        # (`kubeq up`); tests and benchmarks leave it False.
        self.owned = owned
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--loglevel",
            "warning",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return [*cmd, *self.extra]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent() if self.owned else None,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.2
        )
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with {self.process.returncode}: {self.log_tail()}"
                    )
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    self.stop(kill=True)  # never leave a half-started server behind
                    raise RedisServerError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def log_tail(self) -> str:
        log = self.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
