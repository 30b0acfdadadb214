"""`kubeq stats` (plain and --watch) and `kubeq workers`."""

from __future__ import annotations

import importlib
import json
from typing import Any

from kubeq.protocol import Client, WorkerInfo
from kubeq.redis_server import free_port

Kubeq = Any


def rows(text: str) -> dict[str, list[str]]:
    """The body rows of rich tables in `text`: first cell -> the other cells."""
    out = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            out[cells[0]] = cells[1:]
    return out


def _fill(client: Client) -> None:
    client.submit_many([{"type": "t", "priority": "high"}] * 3 + [{"type": "t"}] * 2)
    client.submit("t", priority="low", delay=3600)
    client.claim("w", 1)  # one high task in flight


def test_stats_table_per_priority_with_totals(kubeq: Kubeq, queue_client: Client) -> None:
    _fill(queue_client)
    out = kubeq("stats").stdout
    assert "queue default/default" in out
    table = rows(out)
    # ready, due, delayed, in-flight, oldest
    assert table["high"][:4] == ["2", "0", "0", "1"]
    assert table["default"][:4] == ["2", "0", "0", "0"]
    assert table["low"] == ["0", "0", "1", "0", "-"]
    assert table["total"][:4] == ["4", "0", "1", "1"]
    assert table["high"][4].endswith("s")
    assert "backlog 5" in out
    assert "dead-letter 0" in out
    assert "submitted 6" in out
    assert "claimed 1" in out


def test_stats_json(kubeq: Kubeq, queue_client: Client) -> None:
    _fill(queue_client)
    doc = json.loads(kubeq("-o", "json", "stats").stdout)
    assert doc["queue"] == "default/default"
    assert [lv["name"] for lv in doc["levels"]] == ["high", "default", "low"]
    assert doc["totals"]["backlog"] == 5
    assert doc["totals"]["delayed"] == 1
    assert doc["counters"]["submitted"] == 6


def test_stats_watch_refreshes_until_its_iterations(kubeq: Kubeq, queue_client: Client) -> None:
    _fill(queue_client)
    res = kubeq("stats", "--watch", "--interval", "0.05", "--iterations", "2")
    assert "queue default/default" in res.stdout
    lines = kubeq("-o", "json", "stats", "-w", "--interval", "0.05", "--iterations", "3").stdout
    docs = [json.loads(line) for line in lines.splitlines()]
    assert len(docs) == 3
    assert all(d["totals"]["backlog"] == 5 for d in docs)
    assert "rates_per_second" in docs[1]


def test_stats_watch_survives_ctrl_c(kubeq: Kubeq, monkeypatch: Any) -> None:
    stats_module = importlib.import_module("kubeq.cli.stats")

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stats_module, "sleep", interrupt)
    res = kubeq("stats", "--watch")
    assert "queue default/default" in res.stdout


def test_stats_of_an_unreachable_redis_exits_5(kubeq: Kubeq) -> None:
    res = kubeq("stats", "--watch", url=f"redis://127.0.0.1:{free_port()}/0", code=5)
    assert "unreachable" in res.stderr


def test_workers_lists_the_registered_workers(kubeq: Kubeq, queue_client: Client) -> None:
    assert "no workers registered" in kubeq("workers").stdout
    assert json.loads(kubeq("-o", "json", "workers").stdout) == []
    queue_client.submit("t")
    claim = queue_client.claim("worker-a", 1)
    info = WorkerInfo(
        id="worker-a", pod="pod-a", in_flight=1, concurrency=8, started_at=queue_client.clock()
    )
    held = [(c.id, c.token, c.level_index) for c in claim.tasks]
    queue_client.heartbeat("worker-a", held, info)
    out = kubeq("workers").stdout
    pod, in_flight, concurrency, state, _up, last_seen = rows(out)["worker-a"]
    assert (pod, in_flight, concurrency, state) == ("pod-a", "1", "8", "serving")
    assert last_seen.endswith(" ago")
    (doc,) = json.loads(kubeq("-o", "json", "workers").stdout)
    assert (doc["id"], doc["pod"], doc["in_flight"], doc["concurrency"]) == (
        "worker-a",
        "pod-a",
        1,
        8,
    )
    assert doc["last_seen"] > 0
