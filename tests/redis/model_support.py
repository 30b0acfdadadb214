"""Support for the model-based protocol test: profiles, clocks, fault injection, one reader.

Everything that reads Redis structures directly lives in `snapshot()`: when the key
layout changes, that function is the one place to adapt. Everything else goes through
the public `Client` API and the `QueueOps` outcome builders.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis.exceptions

import redis
from kubeq.protocol import QueueKeys

START_MS = 1_700_000_000_000


# -- profiles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Which inputs and faults the state machine may draw; each flag widens the attack."""

    name: str
    max_submit: int = 20  # largest submit_many batch
    max_claim: int = 20  # largest claim batch
    chunk_sizes: tuple[int | None, ...] = (None,)  # None: the client's default chunk
    hostile_payloads: bool = False  # deep nesting, lone surrogates, huge ints
    hostile_requests: bool = False  # odd max_attempts, delays, idempotency keys, ids
    hostile_results: bool = False  # results Redis cannot encode
    skew_ms: int = 0  # each actor's clock offset is drawn from [-skew_ms, +skew_ms]
    backward_jumps: bool = False  # the reference clock may jump back (NTP step)
    drops: bool = False  # a connection killed after the script ran, before the reply
    oom: bool = False  # maxmemory windows with noeviction
    restarts: bool = False  # SIGKILL + start on the same port and dir (appendfsync always)
    honor_cancel: bool = True  # workers heartbeat before settling and honour cancellation
    caller_ids: bool = False  # every submitted task gets a caller-chosen id
    duplicate_ids: bool = False  # reuse ids that exist (or repeat one inside a batch)
    real_time: bool = False  # decisions on the clients' default clock (see RealClock)
    lease_ms: int = 30_000
    examples: int = 40
    steps: int = 50

    def scaled(self) -> Profile:
        """The long profile (KUBEQ_MODEL_LONG=1, `make test-model-long`): 5x the runs, twice
        as long, random sequences; the big-batch profiles keep their counts but go to 20k."""
        if not os.environ.get("KUBEQ_MODEL_LONG"):
            return self
        big = self.max_submit > 1000  # 20k-task batches make every step slow
        return replace(
            self,
            examples=self.examples * (1 if big else 5),
            steps=self.steps * (1 if big else 2),
            max_submit=20_000 if big else self.max_submit,
            max_claim=20_000 if self.max_claim > 1000 else self.max_claim,
        )


# -- clocks --------------------------------------------------------------------------------


class ReferenceClock:
    """The true time of the simulated world (what Redis's clock would say), in ms."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now = start_ms

    def advance_ms(self, ms: int) -> None:
        self.now += ms


class RealClock(ReferenceClock):
    """The real time (what Redis's TIME says on this host): for the skew profile, where
    clients keep their default clock and only the pods' wall clocks are shifted. Time
    passes by sleeping, so that profile uses short leases."""

    def __init__(self) -> None:
        super().__init__(0)

    @property  # type: ignore[override]
    def now(self) -> int:
        return time.time_ns() // 1_000_000

    @now.setter
    def now(self, value: int) -> None:
        pass

    def advance_ms(self, ms: int) -> None:
        time.sleep(ms / 1000)


@dataclass
class ActorClock:
    """One pod's wall clock: the reference plus that pod's own offset (skew)."""

    reference: ReferenceClock
    offset_ms: int = 0

    def __call__(self) -> int:
        return self.reference.now + self.offset_ms


# -- fault injection -----------------------------------------------------------------------


class InjectedDrop(redis.exceptions.ConnectionError):
    """The connection was killed after the script ran and before its reply was read."""


class FaultyRedis:
    """A redis-py client whose next script call (EVALSHA, EVALSHA_RO) can lose its reply on a
    really killed connection.

    The script is sent on a real pooled connection; once its reply has arrived (so the
    script ran), an admin connection kills that client (CLIENT KILL ID) and the local end
    is closed unread: exactly what a network cut after execution does. Everything else is
    passed through untouched.
    """

    def __init__(self, inner: Any, admin: redis.Redis) -> None:
        self._inner = inner
        self._admin = admin
        self.armed = False
        self.fired = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        is_script = str(args[0]).upper().startswith("EVALSHA")
        if not (self.armed and is_script) or not self._admin.script_exists(args[1])[0]:
            # Not armed, not a script, or not loaded yet (the client then sees NOSCRIPT
            # and loads it; the drop stays armed for its retry).
            return self._inner.execute_command(*args, **options)
        self.armed = False
        self.fired += 1
        pool = self._inner.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command("CLIENT", "ID")
            client_id = conn.read_response()
            conn.send_command(*args)
            if not conn.can_read(timeout=30):
                raise AssertionError("the injected call got no reply within 30 s")
            self._admin.client_kill_filter(_id=client_id)
            conn.disconnect()
        finally:
            pool.release(conn)
        raise InjectedDrop("injected: connection killed after the script ran, reply unread")


# -- the one reader of Redis structures -----------------------------------------------------


@dataclass
class Snapshot:
    """Where every task id is, read atomically (MULTI) straight from the structures."""

    places: dict[str, list[str]]  # id -> every structure holding it (once per occurrence)
    records: set[str]  # ids with a task record
    attempts: dict[str, int]
    holders: dict[str, tuple[int, str]]  # id -> (token, worker)
    terminal: dict[str, str]  # id -> terminal status in the results hash
    cancel_flags: set[str]
    ready_per_level: dict[str, int] = field(default_factory=dict)
    leased_per_level: dict[str, int] = field(default_factory=dict)
    progress: set[str] = field(default_factory=set)  # ids with a stored progress value

    def where(self, task_id: str) -> list[str]:
        return self.places.get(task_id, [])


def _terminal_status(raw: str) -> str:
    try:
        parsed = json.loads(raw)
        return str(parsed["outcome"]["status"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return "unparseable"


def _holder(raw: str) -> tuple[int, str]:
    token, _, rest = raw.partition("|")
    worker = rest.rsplit("|", 1)[0]
    try:
        return int(token), worker
    except ValueError:
        return -1, worker


def snapshot(r: redis.Redis, keys: QueueKeys, levels: Iterable[str]) -> Snapshot:
    """Every place of every task, read in one pipeline while no actor runs."""
    levels = list(levels)
    # Not MULTI: Redis refuses queued commands under OOM. Nothing else writes meanwhile.
    pipe = r.pipeline(transaction=False)
    for lv in levels:
        pipe.lrange(keys.ready(lv), 0, -1)
        pipe.zrange(keys.delayed(lv), 0, -1)
        pipe.zrange(keys.leases(lv), 0, -1)
    pipe.zrange(keys.dead, 0, -1)
    pipe.hgetall(keys.results)
    pipe.hkeys(keys.tasks)
    pipe.hgetall(keys.attempts)
    pipe.hgetall(keys.holders)
    pipe.smembers(keys.cancelled)
    pipe.hkeys(keys.progress)
    replies = pipe.execute()
    places: dict[str, list[str]] = defaultdict(list)
    ready_per_level: dict[str, int] = {}
    leased_per_level: dict[str, int] = {}
    for i, lv in enumerate(levels):
        ready, delayed, leases = replies[3 * i : 3 * i + 3]
        for tid in ready:
            places[tid].append(f"ready:{lv}")
        for tid in delayed:
            places[tid].append(f"delayed:{lv}")
        for tid in leases:
            places[tid].append(f"lease:{lv}")
        ready_per_level[lv] = len(ready)
        leased_per_level[lv] = len(leases)
    dead, results, records, attempts, holders, cancel, progress = replies[3 * len(levels) :]
    for tid in dead:
        places[tid].append("dead")
    for tid in results:
        places[tid].append("results")
    return Snapshot(
        places=dict(places),
        records=set(records),
        attempts={k: int(v) for k, v in attempts.items()},
        holders={k: _holder(v) for k, v in holders.items()},
        terminal={k: _terminal_status(v) for k, v in results.items()},
        cancel_flags=set(cancel),
        ready_per_level=ready_per_level,
        leased_per_level=leased_per_level,
        progress=set(progress),
    )


# -- hostile inputs ------------------------------------------------------------------------


def nested(depth: int) -> Any:
    """A list nested `depth` levels deep, built without recursion."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


LONE_SURROGATE = "\ud800"
HUGE_INT = 10**400


# -- a TCP proxy that cuts a connection on cue ----------------------------------------------


class CuttingProxy:
    """Forwards TCP between clients and Redis; `cut_reply_to(marker)` makes the reply to
    the next request containing `marker` vanish with its connection, as a network cut
    after execution would.

    The client sees its connection die after Redis ran the command: redis-py's own
    retry (if any) then reconnects through the proxy and decides what happens next.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._armed = threading.Event()
        self._marker: bytes | None = None
        # While set, what Redis sends on replication links (connections that sent PSYNC)
        # is dropped: a stalled replication link, every other connection untouched.
        self.replication_frozen = False
        self._closing = False
        self.cuts = 0
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # Redis is down: so is the connection through the proxy
                client.close()
                continue
            self._sockets += [client, upstream]
            link: dict[str, bool] = {"replication": False}
            self._spawn(self._pump, client, upstream, False, link)
            self._spawn(self._pump, upstream, client, True, link)

    def _pump(
        self, src: socket.socket, dst: socket.socket, from_redis: bool, link: dict[str, bool]
    ) -> None:
        tail = b""  # the end of the previous read: a marker may straddle two reads
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                marker = self._marker
                if not from_redis and marker is not None and marker in tail + data:
                    self._marker = None
                    self._armed.set()
                tail = data[-64:]
                if not from_redis and b"PSYNC" in tail + data:
                    link["replication"] = True
                if from_redis and link["replication"] and self.replication_frozen:
                    continue  # swallowed: the replica never sees it
                if from_redis and self._armed.is_set():
                    self._armed.clear()
                    self.cuts += 1
                    break  # the reply is dropped on the floor with the connection
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
