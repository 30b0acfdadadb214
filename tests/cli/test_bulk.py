"""`kubeq submit-many`: NDJSON in, every line accounted for, against a real redis-server."""

from __future__ import annotations

import json
from typing import Any

from kubeq.protocol import Client, QueueConfig

Kubeq = Any


def _ndjson(*items: object) -> str:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items)


def test_submit_many_prints_each_accepted_line_and_reports_each_rejected_one(
    kubeq: Kubeq, queue_client: Client
) -> None:
    lines = _ndjson(
        {"type": "a", "payload": 1},
        "not json",
        {"type": "b", "payload": {"x": 2}, "priority": "high", "idempotency_key": "k"},
        "",  # blank lines are skipped, but still counted in the numbering
        {"type": "c", "priority": "urgent"},
        {"payload": 3},
        {"type": "d", "colour": "red"},
        [1, 2],
        {"type": "e", "delay": 3600},
    )
    res = kubeq("submit-many", "--chunk-size", "3", input=lines, code=2)
    accepted = [ln.split("\t") for ln in res.stdout.splitlines()]
    assert [int(n) for n, _ in accepted] == [1, 3, 9]
    tasks = {int(n): queue_client.status(tid) for n, tid in accepted}
    assert (tasks[1].type, tasks[1].payload) == ("a", 1)
    assert (tasks[3].priority, tasks[3].idempotency_key) == ("high", "k")
    assert tasks[9].status == "scheduled"
    errors = res.stderr.splitlines()
    assert errors[0].startswith("error: line 2: not JSON")
    assert errors[1].startswith("error: line 5: ")
    assert "urgent" in errors[1]
    assert errors[2] == 'error: line 6: "type" is required'
    assert errors[3].startswith("error: line 7: unknown field(s) colour")
    assert errors[4] == "error: line 8: expected a JSON object, got list"
    assert errors[-1] == "submitted 3 task(s); 5 line(s) rejected"
    assert queue_client.stats().ready + queue_client.stats().delayed == 3


def test_submit_many_json_report_and_exit_0_when_all_accepted(
    kubeq: Kubeq, queue_client: Client
) -> None:
    lines = _ndjson(*({"type": "t", "payload": i} for i in range(1200)))
    doc = json.loads(kubeq("-o", "json", "submit-many", input=lines).stdout)
    assert [a["line"] for a in doc["accepted"]] == list(range(1, 1201))
    assert (doc["rejected"], doc["error"]) == ([], None)
    assert queue_client.stats().ready == 1200


def test_a_full_queue_stops_submit_many_and_says_what_went_in(kubeq: Kubeq, redis_url: str) -> None:
    config = QueueConfig(name="small", max_backlog=5)
    with Client.from_url(redis_url, "small", config=config) as c:
        c.publish_config()
        lines = _ndjson(*({"type": "t", "payload": i} for i in range(12)))
        res = kubeq("-q", "small", "submit-many", "--chunk-size", "4", input=lines, code=6)
        accepted = [int(ln.split("\t")[0]) for ln in res.stdout.splitlines()]
        assert accepted == [1, 2, 3, 4]
        assert "lines from 5 on were not submitted" in res.stderr
        assert c.stats().ready == 4
