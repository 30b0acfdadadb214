"""`kubeq submit|status|result|cancel` against a real redis-server, errors included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubeq.protocol import Client, QueueConfig, TaskStatus
from kubeq.protocol.ops import encode_progress
from kubeq.redis_server import RedisServer, free_port

Kubeq = Any  # the `kubeq` fixture: run(*args, code=0, url=None, input=None, env=None)


# -- submit ----------------------------------------------------------------------------


def test_submit_prints_the_id_and_enqueues_the_payload(kubeq: Kubeq, queue_client: Client) -> None:
    out = kubeq("submit", "telemetry.ingest", '{"device": 7}').stdout.strip()
    task = queue_client.status(out)
    assert (task.type, task.payload, task.status) == ("telemetry.ingest", {"device": 7}, "pending")
    assert task.priority == "default"


def test_submit_json_output_and_options(kubeq: Kubeq, queue_client: Client) -> None:
    res = kubeq(
        "-o",
        "json",
        "submit",
        "t",
        "[1, 2]",
        "-p",
        "high",
        "--max-attempts",
        "2",
        "--idempotency-key",
        "k1",
    )
    task_id = json.loads(res.stdout)["id"]
    task = queue_client.status(task_id)
    assert (task.priority, task.max_attempts, task.idempotency_key) == ("high", 2, "k1")
    assert task.payload == [1, 2]
    # The same idempotency key returns the first id.
    again = kubeq("-o", "json", "submit", "t", "[1, 2]", "--idempotency-key", "k1")
    assert json.loads(again.stdout)["id"] == task_id


def test_submit_payload_from_stdin_and_file(
    kubeq: Kubeq, queue_client: Client, tmp_path: Path
) -> None:
    from_stdin = kubeq("submit", "t", "-", input='{"a": 1}').stdout.strip()
    assert queue_client.status(from_stdin).payload == {"a": 1}
    path = tmp_path / "payload.json"
    path.write_text('{"b": [true, null]}')
    from_file = kubeq("submit", "t", "--file", str(path)).stdout.strip()
    assert queue_client.status(from_file).payload == {"b": [True, None]}
    from_file_stdin = kubeq("submit", "t", "-f", "-", input="3").stdout.strip()
    assert queue_client.status(from_file_stdin).payload == 3
    no_payload = kubeq("submit", "t").stdout.strip()
    assert queue_client.status(no_payload).payload is None


def test_submit_delay_and_eta_schedule_the_task(kubeq: Kubeq, queue_client: Client) -> None:
    delayed = kubeq("submit", "t", "--delay", "3600").stdout.strip()
    task = queue_client.status(delayed)
    assert task.status == TaskStatus.SCHEDULED
    assert task.due_at >= task.created_at + 3_599_000
    eta = kubeq("submit", "t", "--eta", "2030-01-01T00:00:00").stdout.strip()
    assert queue_client.status(eta).due_at == 1893456000000  # naive means UTC
    eta_tz = kubeq("submit", "t", "--eta", "2030-01-01T02:00:00+02:00").stdout.strip()
    assert queue_client.status(eta_tz).due_at == 1893456000000


def test_submit_wait_prints_the_result(kubeq: Kubeq, tiny_worker: object) -> None:
    res = kubeq("submit", "t", '{"x": 1}', "--wait", "--timeout", "30")
    task_id, result = res.stdout.strip().splitlines()
    assert len(task_id) == 32
    assert json.loads(result) == {"echo": {"x": 1}}
    res = kubeq("-o", "json", "submit", "t", "5", "--wait", "--timeout", "30")
    doc = json.loads(res.stdout)
    assert (doc["status"], doc["result"]) == ("completed", {"echo": 5})


def test_submit_wait_of_a_failing_task_exits_1(kubeq: Kubeq, tiny_worker: object) -> None:
    res = kubeq("-o", "json", "submit", "fail", "--wait", "--timeout", "30", code=1)
    doc = json.loads(res.stdout)
    assert doc["status"] == "dead"
    assert doc["error"]["message"] == "boom"
    assert res.stderr.startswith("error: ")
    assert "boom" in res.stderr


def test_submit_wait_times_out_with_exit_4(kubeq: Kubeq) -> None:
    res = kubeq("submit", "t", "--wait", "--timeout", "0.2", code=4)
    assert "error: " in res.stderr
    assert "still pending" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "t", "{not json"], "payload is not valid JSON"),
        (["submit", "t", "-p", "urgent"], "unknown priority 'urgent'"),
        (["submit", "t", "--delay", "1", "--eta", "2999-01-01"], "exclude each other"),
        (["submit", "t", "--eta", "tomorrow"], "not an ISO 8601 time"),
        (["submit", "t", "1", "-f", "-"], "not both"),
        (["submit", "t", "--max-attempts", "0"], "--max-attempts"),
    ],
)
def test_submit_bad_input_exits_2(kubeq: Kubeq, args: list[str], message: str) -> None:
    res = kubeq(*args, code=2, input="1")
    assert message in res.stderr
    assert "Traceback" not in res.output


def test_submit_payload_too_large_exits_2(kubeq: Kubeq, redis_url: str) -> None:
    cfg = QueueConfig(name="small", max_payload_bytes=100)
    with Client.from_url(redis_url, "small", config=cfg) as c:
        c.publish_config()
    res = kubeq("-q", "small", "submit", "t", json.dumps("x" * 200), code=2)
    assert res.stderr.startswith("error: ")
    assert "limit" in res.stderr


def test_submit_to_a_full_queue_exits_6(kubeq: Kubeq, redis_url: str) -> None:
    cfg = QueueConfig(name="bounded", max_backlog=1)
    with Client.from_url(redis_url, "bounded", config=cfg) as c:
        c.publish_config()
    kubeq("-q", "bounded", "submit", "t")
    res = kubeq("-q", "bounded", "submit", "t", code=6)
    assert res.stderr.startswith("error: queue is full")


# -- connection errors ---------------------------------------------------------------------


def test_bad_url_exits_5(kubeq: Kubeq) -> None:
    res = kubeq("submit", "t", url="http://example.com", code=5)
    assert res.stderr.startswith("error: Redis URL <value hidden> has a scheme kubeq does not")
    res = kubeq("stats", url="no-scheme", code=5)
    assert "has no scheme" in res.stderr


def test_redis_down_exits_5(kubeq: Kubeq) -> None:
    res = kubeq("status", "abc", url=f"redis://127.0.0.1:{free_port()}/0", code=5)
    assert res.stderr.startswith("error: Redis at redis://127.0.0.1:")
    assert "unreachable" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_wrong_password_exits_5_without_leaking_it() -> None:
    from click.testing import CliRunner

    from kubeq.cli import cli

    with RedisServer(password="s3cret") as server:
        wrong = server.url.replace("s3cret", "nope")
        runner = CliRunner()
        res = runner.invoke(cli, ["--redis-url", wrong, "submit", "t"])
        assert res.exit_code == 5, res.output
        assert res.stderr.startswith("error: ")
        assert "refused the credentials" in res.stderr
        assert "nope" not in res.stderr
        # No password at all is refused the same way.
        res = runner.invoke(cli, ["--redis-url", server.url.replace(":s3cret@", ""), "stats"])
        assert res.exit_code == 5
        assert "refused the credentials" in res.stderr
        ok = runner.invoke(cli, ["--redis-url", server.url, "submit", "t"])
        assert ok.exit_code == 0, ok.output


def test_redis_url_from_the_environment(kubeq: Kubeq, redis_url: str) -> None:
    from click.testing import CliRunner

    from kubeq.cli import cli

    res = CliRunner().invoke(
        cli, ["-o", "json", "stats"], env={"KUBEQ_REDIS_URL": redis_url, "KUBEQ_QUEUE": "envq"}
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["queue"] == "default/envq"


def test_invalid_queue_name_is_a_usage_error(kubeq: Kubeq) -> None:
    res = kubeq("-q", "Not Valid", "stats", code=2)
    assert "queue name 'Not Valid' is invalid" in res.stderr


# -- status, result, cancel --------------------------------------------------------------


def test_status_text_and_json(kubeq: Kubeq, queue_client: Client) -> None:
    task_id = queue_client.submit("t", {"k": "v"}, priority="low")
    text = kubeq("status", task_id).stdout
    assert f"id:              {task_id}" in text
    assert "status:          pending" in text
    assert "priority:        low" in text
    assert 'payload:         {"k": "v"}' in text
    doc = json.loads(kubeq("-o", "json", "status", task_id).stdout)
    assert (doc["id"], doc["status"], doc["payload"]) == (task_id, "pending", {"k": "v"})


def test_status_of_a_running_task_names_its_worker(kubeq: Kubeq, queue_client: Client) -> None:
    task_id = queue_client.submit("t")
    queue_client.claim("w-1", 1)
    assert "status:          running (worker w-1, token " in kubeq("status", task_id).stdout


def test_status_shows_the_progress_of_a_running_task(kubeq: Kubeq, queue_client: Client) -> None:
    task_id = queue_client.submit("t")
    (c,) = queue_client.claim("w-1", 1).tasks
    assert "progress:" not in kubeq("status", task_id).stdout
    value = encode_progress({"rows": 42, "of": 100})
    queue_client.run(queue_client.ops.progress("w-1", [(c.id, c.token, value)], 0))
    assert 'progress:        {"rows": 42, "of": 100} (reported ' in kubeq("status", task_id).stdout
    doc = json.loads(kubeq("-o", "json", "status", task_id).stdout)
    assert doc["progress"]["value"] == {"rows": 42, "of": 100}


def test_status_of_an_unknown_task_exits_3(kubeq: Kubeq) -> None:
    res = kubeq("status", "nope", code=3)
    assert res.stderr.strip() == ("error: no task nope (never submitted, or its record expired)")
    kubeq("-o", "json", "result", "nope", code=3)
    kubeq("result", "nope", "--wait", "--timeout", "1", code=3)


def test_result_of_a_completed_task(
    kubeq: Kubeq, queue_client: Client, tiny_worker: object
) -> None:
    task_id = queue_client.submit("t", [1])
    assert json.loads(kubeq("result", task_id, "--wait", "--timeout", "30").stdout) == {"echo": [1]}
    doc = json.loads(kubeq("-o", "json", "result", task_id).stdout)
    assert doc == {"id": task_id, "status": "completed", "result": {"echo": [1]}}
    assert "completed" in kubeq("status", task_id).stdout


def test_result_of_a_pending_task_without_wait_exits_4(kubeq: Kubeq, queue_client: Client) -> None:
    task_id = queue_client.submit("t")
    res = kubeq("result", task_id, code=4)
    assert "is pending, not finished" in res.stderr
    doc = json.loads(kubeq("-o", "json", "result", task_id, code=4).stdout)
    assert doc["status"] == "pending"
    res = kubeq("result", task_id, "--timeout", "0.2", code=4)
    assert "still pending" in res.stderr


def test_result_of_dead_and_cancelled_tasks_exits_1(
    kubeq: Kubeq, queue_client: Client, make_dead: Any
) -> None:
    (dead,) = make_dead()
    res = kubeq("result", dead, code=1)
    assert res.stderr.startswith(f"error: task {dead} ended dead: boom")
    assert res.stdout == ""
    doc = json.loads(kubeq("-o", "json", "result", dead, code=1).stdout)
    assert (doc["status"], doc["error"]["type"]) == ("dead", "ValueError")
    text = kubeq("status", dead).stdout
    assert "error:           ValueError: boom" in text
    assert "Traceback: ..." in text

    cancelled = queue_client.submit("t")
    queue_client.cancel(cancelled)
    assert json.loads(kubeq("-o", "json", "result", cancelled, code=1).stdout)["status"] == (
        "cancelled"
    )


def test_cancel_outcomes_and_exit_codes(kubeq: Kubeq, queue_client: Client, make_dead: Any) -> None:
    pending = queue_client.submit("t")
    assert kubeq("cancel", pending).stdout.strip() == f"{pending}: cancelled"
    assert queue_client.status(pending).status == TaskStatus.CANCELLED

    running = queue_client.submit("t")
    queue_client.claim("w", 1)
    doc = json.loads(kubeq("-o", "json", "cancel", running).stdout)
    assert doc == {"id": running, "outcome": "requested"}
    assert queue_client.status(running).cancel_requested

    res = kubeq("cancel", pending, code=1)  # already finished (cancelled)
    assert "already finished" in res.stderr
    (dead,) = make_dead()
    assert "dead-letter" in kubeq("cancel", dead, code=1).stderr
    res = kubeq("-o", "json", "cancel", "nope", code=3)
    assert json.loads(res.stdout) == {"id": "nope", "outcome": "unknown"}
    assert res.stderr.startswith("error: no task nope")
