"""The dashboard over plain HTTP: read-only by default, token-gated POSTs, escaping, caps."""

from __future__ import annotations

import random

import httpx
from dashboard_support import TOKEN, Served, serve

from kubeq.dashboard.pages import MAX_SHOWN_CHARS
from kubeq.protocol import TaskError
from kubeq.protocol.ops import encode_progress
from kubeq.redis_server import free_port

HOSTILE = "<script>alert('x')</script>\x1b[31m\u202e<img src=x onerror=alert(1)>"


def _dead(served: Served, payload: object, message: str) -> str:
    c = served.client
    tid = c.submit("hostile", payload)
    (claimed,) = c.claim("w", 1).tasks
    err = TaskError(type="ValueError", message=message, traceback="Traceback\n  " + message)
    c.settle([c.ops.failure(claimed, err, c.clock(), random.Random(1), permanent=True)])
    return tid


def test_pages_never_render_stored_markup_or_control_characters(dashboard: Served) -> None:
    tid = _dead(dashboard, {"x": HOSTILE}, HOSTILE)
    for path in (f"/q/default/default/task/{tid}", "/q/default/default/tasks?state=dead"):
        page = httpx.get(dashboard.url + path).text
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "\x1b" not in page
        assert "\u202e" not in page
        assert "&lt;script&gt;alert(" in page
        assert "\\x1b" in page


def test_the_task_page_shows_progress_escaped(dashboard: Served) -> None:
    c = dashboard.client
    tid = c.submit("slow")
    (claimed,) = c.claim("w", 1).tasks
    page = httpx.get(f"{dashboard.url}/q/default/default/task/{tid}").text
    assert "id=task-progress" not in page
    value = encode_progress({"step": 3, "note": HOSTILE})
    assert c.run(c.ops.progress("w", [(tid, claimed.token, value)], c.clock())) == [True]
    page = httpx.get(f"{dashboard.url}/q/default/default/task/{tid}").text
    assert "id=task-progress" in page
    assert "&quot;step&quot;: 3" in page
    assert "<script>alert" not in page
    assert "\x1b" not in page
    assert "\\u001b[31m" in page  # shown as text, never as a terminal escape


def test_payloads_are_capped_in_pages(dashboard: Served) -> None:
    tid = dashboard.client.submit("big", {"blob": "y" * (MAX_SHOWN_CHARS * 3)})
    page = httpx.get(f"{dashboard.url}/q/default/default/task/{tid}").text
    assert "more characters not shown" in page
    assert page.count("y") < MAX_SHOWN_CHARS + 200


def test_security_headers_and_no_inline_script(dashboard: Served) -> None:
    r = httpx.get(dashboard.url + "/q/default/default")
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # the one script is /static/dashboard.js


def test_the_redis_url_and_its_password_never_appear(redis_url: str, dashboard: Served) -> None:
    dashboard.client.submit("t")
    for path in ("/", "/q/default/default", "/q/default/default/tasks"):
        page = httpx.get(dashboard.url + path).text
        assert redis_url not in page
        assert "redis://" not in page


def test_read_only_dashboard_refuses_every_action(readonly_dashboard: Served) -> None:
    base = readonly_dashboard.url + "/q/default/default"
    assert "<form method=post" not in httpx.get(base).text
    for action in ("/pause", "/resume", "/dead/requeue", "/dead/purge"):
        r = httpx.post(base + action, data={"token": TOKEN})
        assert r.status_code == 403
    assert readonly_dashboard.client.stats().paused is False


def test_actions_need_the_exact_token_in_a_post(dashboard: Served) -> None:
    base = dashboard.url + "/q/default/default"
    assert httpx.post(base + "/pause", data={}).status_code == 403
    assert httpx.post(base + "/pause", data={"token": TOKEN + "x"}).status_code == 403
    assert httpx.post(base + "/pause", data={"token": TOKEN[:-1]}).status_code == 403
    assert httpx.get(base + "/pause").status_code == 405  # GET never changes anything
    assert dashboard.client.stats().paused is False
    r = httpx.post(base + "/pause", data={"token": TOKEN, "reason": "x"})
    assert r.status_code == 303
    assert dashboard.client.stats().paused is True


def test_bad_input_is_a_clear_error_page(dashboard: Served) -> None:
    base = dashboard.url + "/q/default/default"
    assert httpx.get(base + "/tasks?state=nope").status_code == 400
    assert httpx.get(base + "/tasks?cursor=zz").status_code == 400
    assert httpx.get(base + "/tasks?level=nope").status_code == 400
    assert httpx.get(base + "/task/unknown-id").status_code == 404
    assert httpx.get(dashboard.url + "/q/nope/nope").status_code == 404
    assert httpx.get(dashboard.url + "/").status_code == 200


def test_stats_api_matches_redis(dashboard: Served) -> None:
    dashboard.client.submit_many([{"type": "t", "priority": "high"}] * 3)
    doc = httpx.get(dashboard.url + "/q/default/default/api/stats").json()
    stats = dashboard.client.stats()
    assert doc["backlog"] == stats.backlog == 3
    assert doc["level"]["high"]["ready"] == 3


def test_an_unreachable_redis_is_a_503_that_shows_no_password(redis_url: str) -> None:
    bad = f"redis://someone:hunter2-secret@127.0.0.1:{free_port()}/0"
    gen = serve(redis_url, TOKEN, dashboard_url=bad)
    s = next(gen)
    try:
        r = httpx.get(s.url + "/q/default/default")
        assert r.status_code == 503
        assert "hunter2-secret" not in r.text
        index = httpx.get(s.url + "/")
        assert index.status_code == 200
        assert "hunter2-secret" not in index.text
        assert "class=error" in index.text
    finally:
        gen.close()
