"""The state directory of `kubeq up` (`.kubeq/` in the directory it runs in, by default).

    .kubeq/env          KUBEQ_REDIS_URL, KUBEQ_QUEUE, KUBEQ_NAMESPACE for `kubeq` commands
    .kubeq/redis/       the private redis-server's data (AOF), kept between runs
    .kubeq/redis-port   the port chosen on the first run, reused by every later one
    .kubeq/logs/        the workers' logs of the last run
    .kubeq/lock         held while a `kubeq up` uses the directory

The working directory rather than the manifest's: a second shell in the same project
finds `.kubeq/env` by walking up from where it is, and a manifest may live somewhere
read-only (the packaged examples).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from pathlib import Path
from typing import IO

from kubeq.redis_server import port_is_free

PORT_RANGE = (21000, 30000)  # below Linux's ephemeral range, clear of well-known services
PROBES = 50


class StateDirError(Exception):
    """The state directory cannot be used; the message says why and what to do."""


def default_port(state_dir: Path) -> int:
    """A stable port for this directory's Redis: the same path, the same port."""
    low, high = PORT_RANGE
    return low + zlib.crc32(str(state_dir.resolve()).encode()) % (high - low)


def choose_port(state_dir: Path, saved: int | None) -> int:
    """The saved port if any (it must be free: our data is behind it), else the first
    free one from this directory's default."""
    if saved is not None:
        if not port_is_free(saved):
            raise StateDirError(
                f"port {saved} of this state directory's Redis ({state_dir}/redis-port) is in "
                "use by another program: stop it, or pass --redis-port to move (the data "
                "moves with the directory, not the port)"
            )
        return saved
    start = default_port(state_dir)
    low, high = PORT_RANGE
    for i in range(PROBES):
        port = low + (start - low + i) % (high - low)
        if port_is_free(port):
            return port
    raise StateDirError(f"no free port near {start} for Redis: pass --redis-port")


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._lock: IO[str] | None = None

    @property
    def redis_dir(self) -> Path:
        return self.path / "redis"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def env_file(self) -> Path:
        return self.path / "env"

    @property
    def port_file(self) -> Path:
        return self.path / "redis-port"

    def acquire(self) -> None:
        """Take the directory for this process; StateDirError if another `kubeq up` has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = (self.path / "lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise StateDirError(
                f"another `kubeq up` (pid {holder}) is using {self.path}: stop it first, or "
                "give this one its own --state-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def saved_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.port_file.read_text().strip())
        return None

    def redis_port(self, override: int | None) -> int:
        port = override if override is not None else choose_port(self.path, self.saved_port())
        if override is not None and not port_is_free(port):
            raise StateDirError(f"--redis-port {port} is in use by another program")
        self.port_file.write_text(f"{port}\n")
        return port

    def fresh_logs(self) -> Path:
        """The logs directory, emptied of the previous run's worker logs."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for old in self.logs_dir.glob("*.log"):
            old.unlink(missing_ok=True)
        return self.logs_dir
