from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeq.protocol import (
    Backoff,
    ClaimedTask,
    InvalidTask,
    PayloadNotJSON,
    PayloadTooLarge,
    QueueConfig,
    Task,
    TaskError,
    TaskRequest,
    UnknownPriority,
)
from kubeq.protocol.backoff import backoff_ceiling_seconds, retry_delay_ms
from kubeq.protocol.ops import QueueOps


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (8, 128.0), (9, 256.0), (10, 300.0), (10_000, 300.0)],
)
def test_backoff_ceiling_grows_exponentially_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert backoff_ceiling_seconds(Backoff(), attempt) == ceiling


def test_full_jitter_spreads_delays_over_the_whole_window() -> None:
    rng = random.Random(7)
    delays = [retry_delay_ms(Backoff(base_seconds=10, max_seconds=10), 1, rng) for _ in range(2000)]
    assert min(delays) >= 0
    assert max(delays) <= 10_000
    # Full jitter: the lower and upper halves of the window are both used, about equally.
    halves = Counter(d < 5000 for d in delays)
    assert 800 < halves[True] < 1200


def _ops(**kw: object) -> QueueOps:
    return QueueOps(QueueConfig.model_validate({"name": "t", **kw}))


def test_encoded_record_is_valid_json_with_the_task_fields() -> None:
    ops = _ops()
    tid, level, delay_ms, eta_ms, key, meta_head, record, chosen = ops.encode_task(
        TaskRequest(
            type="we.ird",
            payload={"é": [1, 2.5, None], 'q"uote': "x"},
            priority="low",
            delay=2.5,
            idempotency_key="k",
        ),
        now=1000,
    )
    data = json.loads(record)
    assert data == {
        "id": tid,
        "queue": "default/t",
        "type": "we.ird",
        "priority": "low",
        "max_attempts": 5,
        "created_at": 1000,
        "due_at": 3500,
        "idempotency_key": "k",
        "payload": {"é": [1, 2.5, None], 'q"uote': "x"},
    }
    assert (level, delay_ms, eta_ms, key, meta_head, chosen) == (3, 2500, 0, "k", "low|5|3500", 0)


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        (TaskRequest(type="x", payload={1, 2}), PayloadNotJSON, "not JSON"),
        (TaskRequest(type="x", payload=float("nan")), PayloadNotJSON, "not JSON"),
        (TaskRequest(type="x", payload="a" * 2000), PayloadTooLarge, "limit"),
        (TaskRequest(type="x", payload="é" * 600), PayloadTooLarge, "1202 bytes"),
        (TaskRequest(type="x", priority="urgent"), UnknownPriority, "levels are high, default"),
        (TaskRequest(type="x", delay=-1), InvalidTask, "finite number of seconds"),
        (TaskRequest(type=""), InvalidTask, "task type must be 1-200 characters"),
        (TaskRequest(type="x", max_attempts=0), InvalidTask, "max_attempts"),
        (TaskRequest(type="x", idempotency_key=""), InvalidTask, "idempotency key"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_typed_error(
    request_: TaskRequest, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _ops(max_payload_bytes=1024).encode_task(request_, now=0)


def test_strict_order_is_fixed_and_weighted_order_follows_the_weights() -> None:
    assert _ops().serving_order(random.Random(1)) == [0, 1, 2]
    weighted = _ops(
        mode="weighted", priorities=[{"name": "hi", "weight": 6}, {"name": "lo", "weight": 2}]
    )
    rng = random.Random(3)
    firsts = Counter(weighted.serving_order(rng)[0] for _ in range(8000))
    # P(first = hi) = 6/8: the low level still leads about a quarter of the time.
    assert 0.72 < firsts[0] / 8000 < 0.78
    assert firsts[1] > 0


def _claimed(attempts: int, max_attempts: int = 3) -> ClaimedTask:
    task = Task(
        id="a",
        queue="default/t",
        type="x",
        priority="high",
        max_attempts=max_attempts,
        created_at=0,
        due_at=0,
        attempts=attempts,
    )
    return ClaimedTask(task=task, token=9, level_index=1)


@pytest.mark.parametrize(
    ("attempts", "permanent", "action"),
    [(1, False, "retry"), (2, False, "retry"), (3, False, "dead"), (1, True, "dead")],
)
def test_failure_retries_until_attempts_run_out_or_the_error_is_permanent(
    attempts: int, permanent: bool, action: str
) -> None:
    s = _ops().failure(
        _claimed(attempts),
        TaskError(type="E", message="m"),
        1000,
        random.Random(0),
        permanent=permanent,
    )
    assert s.action == action
    assert s.token == 9
    if action == "retry":
        assert 1000 <= s.due_ms <= 1000 + backoff_ceiling_seconds(Backoff(), attempts) * 1000
    else:
        assert json.loads(s.outcome)["error"]["type"] == "E"


def test_a_result_that_is_not_json_is_refused_before_it_reaches_redis() -> None:
    with pytest.raises(PayloadNotJSON):
        _ops().completion(_claimed(1), object(), 0)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"priorities": []}, "at least one"),
        ({"priorities": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"default_priority": "nope"}, "not one of"),
        ({"heartbeat_seconds": 30, "lease_seconds": 30}, "shorter"),
        ({"name": "Bad Name"}, "invalid"),
    ],
)
def test_invalid_queue_configs_are_refused(config: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QueueConfig.model_validate({"name": "t", **config})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "redis://h:6379/0"),
        ({"password": "p@ss/w"}, "redis://:p%40ss%2Fw@h:6379/0"),
        ({"username": "app", "password": "pw"}, "redis://app:pw@h:6379/0"),
        ({"tls": True}, "rediss://h:6379/0"),
        ({"tls": True, "tls_insecure": True}, "rediss://h:6379/0?ssl_cert_reqs=none"),
        (
            {"tls": True, "tls_ca_file": "/etc/ca/ca.crt"},
            "rediss://h:6379/0?ssl_ca_certs=%2Fetc%2Fca%2Fca.crt",
        ),
    ],
)
def test_separate_credentials_and_tls_fold_into_the_url(
    kwargs: dict[str, object], expected: str
) -> None:
    from kubeq.protocol.connection import with_credentials

    assert with_credentials("redis://h:6379/0", **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    ["", "a b", "line\nforged", "\x1b[31mred", "tab\t", "x" * 201, "ünicode", "-lead", "[bold]"],
)
def test_task_types_follow_the_safe_pattern(bad: str) -> None:
    with pytest.raises(InvalidTask, match="task type must be"):
        _ops().encode_task(TaskRequest(type=bad), now=0)


@pytest.mark.parametrize("good", ["t", "telemetry.ingest", "images/resize:v2", "a_b-c+d@e"])
def test_task_types_of_the_safe_pattern_are_accepted(good: str) -> None:
    assert _ops().encode_task(TaskRequest(type=good), now=0)[6]


@given(
    status=st.sampled_from(["completed", "cancelled"]),
    now=st.integers(min_value=0, max_value=2**53),
    started_at=st.none() | st.integers(min_value=0, max_value=2**53),
    worker=st.none() | st.text(max_size=40),  # any text, lone surrogates included
    attempts=st.integers(min_value=0, max_value=10_000),
)
def test_the_fast_outcome_of_a_plain_ending_is_the_encoders_outcome(
    status: str, now: int, started_at: int | None, worker: str | None, attempts: int
) -> None:
    """`completion` without a result or reason skips the JSON encoder: its text must decode
    to what the general path stores, and be storable (UTF-8) whatever the worker id."""
    ops = QueueOps(QueueConfig(name="t", priorities=[{"name": "high"}]))
    task = Task(
        id="a", queue="default/t", type="x", priority="high", max_attempts=3, created_at=0,
        due_at=0, attempts=attempts, started_at=started_at, worker=worker,
    )  # fmt: skip
    claimed = ClaimedTask(task=task, token=9, level_index=1)
    fast = ops.completion(claimed, None, now, status=status).outcome
    general = ops.completion(claimed, None, now, status=status, reason="x").outcome
    fast.encode("utf-8")  # storable: no lone surrogate survives
    expected = json.loads(general) | {"reason": None}
    assert json.loads(fast) == expected


def test_generated_ids_are_128_random_bits_whether_drawn_alone_or_for_a_batch() -> None:
    import re

    from kubeq.protocol.ops import new_task_id, new_task_ids

    batch = new_task_ids(5000)
    assert len(batch) == 5000
    assert len(set(batch) | {new_task_id() for _ in range(5000)}) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in batch)
    assert new_task_ids(0) == []
    # submit_many gives every request its own (the batch's ids are not reused across calls)
    ops = QueueOps(QueueConfig(name="t"))
    first = next(ops.submit_many([TaskRequest("t")] * 3, 0))
    second = next(ops.submit_many([TaskRequest("t")] * 3, 0))
    ids = [a for call in (first, second) for a in call.args[7::6][:3]]
    assert len(set(ids)) == 6
    assert all(re.fullmatch(r"[0-9a-f]{32}", str(i)) for i in ids)
