"""Pure checks of the script set and the limits that make issue 9's defects impossible."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from pydantic import ValidationError

from kubeq.protocol import (
    ConnectionFailed,
    QueueConfig,
    QueueFull,
    QueueOps,
    TaskRequest,
    policy_problem,
)
from kubeq.protocol.ops import MAX_SCRIPT_BATCH, ScriptCall, json_depth_exceeds
from kubeq.protocol.scripts import SCRIPTS, parse_flags

LUA = resources.files("kubeq.protocol").joinpath("lua")
ALLOW_OOM = {"heartbeat", "reap", "purge"}  # each justifies it in its header
READ_ONLY = {"stats", "status"}


def test_the_lua_batch_bound_is_the_python_one() -> None:
    lib = LUA.joinpath("_lib.lua").read_text()
    match = re.search(r"^local MAX_BATCH = (\d+)$", lib, re.M)
    assert match is not None
    assert int(match.group(1)) == MAX_SCRIPT_BATCH


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_declares_its_flags_and_gets_the_library(name: str) -> None:
    script = SCRIPTS[name]
    assert script.source.startswith("#!lua")
    assert "local function sliced(" in script.source
    expected = {"no-writes"} if name in READ_ONLY else {"allow-oom"} if name in ALLOW_OOM else set()
    assert script.flags == expected
    assert "-- Flags:" in script.source


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_decodes_user_data_or_unpacks_an_unbounded_table(name: str) -> None:
    body = LUA.joinpath(f"{name}.lua").read_text()
    assert "cjson.decode" not in body
    # unpack() only of a table bounded by MAX_BATCH (a checked batch or a subset of one), of
    # claim's groups of at most 64 levels, or through sliced(); never of an accumulated list.
    for line in body.splitlines():
        if "unpack(" in line and "sliced" not in line:
            allowed = r"unpack\((ids|live_ids|finished|sticky|found|delayed_group)\)"
            assert re.search(allowed, line), line


def test_parse_flags_refuses_a_script_without_a_shebang() -> None:
    assert parse_flags("#!lua flags=no-writes,allow-stale") == {"no-writes", "allow-stale"}
    assert parse_flags("#!lua") == frozenset()
    with pytest.raises(ValueError, match="#!lua"):
        parse_flags("-- no shebang")


def test_payload_depth_is_measured_without_recursion() -> None:
    deep: object = 1
    for _ in range(200_000):
        deep = {"a": deep}
    assert json_depth_exceeds(deep, 64)
    assert not json_depth_exceeds({"a": [1, {"b": []}]}, 4)
    assert json_depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not json_depth_exceeds("scalar", 0)


def test_a_lost_chunk_reply_reports_accepted_and_uncertain_ids() -> None:
    ops = QueueOps(QueueConfig(name="t"))
    op = ops.submit_many([TaskRequest("t", id=f"t{i}") for i in range(2_500)], 0)
    call = next(op)
    assert isinstance(call, ScriptCall)
    call = op.send([f"t{i}" for i in range(1_000)])
    with pytest.raises(ConnectionFailed) as info:
        op.throw(ConnectionFailed("connection reset"))
    assert info.value.accepted == [f"t{i}" for i in range(1_000)]
    assert info.value.uncertain == [f"t{i}" for i in range(1_000, 2_000)]


def test_a_queue_full_chunk_reports_accepted_and_nothing_uncertain() -> None:
    ops = QueueOps(QueueConfig(name="t"))
    op = ops.submit_many([TaskRequest("t") for _ in range(1_500)], 0)
    first = next(op)
    assert isinstance(first, ScriptCall)
    op.send(["a"] * 1_000)
    with pytest.raises(QueueFull) as info:
        op.throw(QueueFull("full"))
    assert info.value.accepted == ["a"] * 1_000
    assert info.value.uncertain == []


def test_an_idempotency_ttl_longer_than_the_result_ttl_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not exceed result_ttl_seconds"):
        QueueConfig(name="t", result_ttl_seconds=60, idempotency_ttl_seconds=61)
    assert QueueConfig(name="t", result_ttl_seconds=60).idempotency_ttl == 60
    assert QueueConfig(name="t").idempotency_ttl == 24 * 3600
    assert QueueConfig(name="t", result_ttl_seconds=10**6).idempotency_ttl == 24 * 3600


def test_server_clock_sends_zero_so_scripts_read_redis_time() -> None:
    cfg = QueueConfig(name="t")
    on_server = next(QueueOps(cfg, server_clock=True).claim("w", 1, 12345, [0]))
    on_caller = next(QueueOps(cfg).claim("w", 1, 12345, [0]))
    assert isinstance(on_server, ScriptCall)
    assert isinstance(on_caller, ScriptCall)
    assert (on_server.args[0], on_caller.args[0]) == (0, 12345)


def test_policy_problem_names_the_required_policy() -> None:
    assert policy_problem("noeviction") is None
    for policy in ("allkeys-lru", "volatile-ttl", "allkeys-random"):
        problem = policy_problem(policy)
        assert problem is not None
        assert policy in problem
        assert "noeviction" in problem
