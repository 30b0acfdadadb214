"""The dashboard's HTML, rendered from protocol models by pure functions.

Everything that comes from Redis (ids, types, payloads, errors, worker ids, counter
names) goes through `h()`: control characters escaped by `printable`, then HTML-escaped,
so no stored value can inject markup or script. Payloads and results are capped at
MAX_SHOWN_CHARS characters.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from kubeq.protocol import QueueStats, Task, WorkerInfo
from kubeq.protocol.browse import LIST_STATES
from kubeq.text import printable

MAX_SHOWN_CHARS = 4000  # of a payload, result or traceback shown in a page
MAX_CELL_CHARS = 120


def h(value: object, *, limit: int | None = None, newlines: bool = False) -> str:
    text = printable(value, newlines=newlines, indent="")
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit} more characters not shown)"
    return html.escape(text, quote=True)


def age(then_ms: int | None, now_ms: int) -> str:
    if not then_ms:
        return "-"
    s = max(0, (now_ms - then_ms) // 1000)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def qpath(ns: str, queue: str, tail: str = "") -> str:
    return f"/q/{quote(ns, safe='')}/{quote(queue, safe='')}{tail}"


def layout(title: str, body: str, *, writable: bool, refresh_api: str | None = None) -> str:
    mode = "read-write (token required)" if writable else "read-only"
    api = f' data-refresh="{h(refresh_api)}"' if refresh_api else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{h(title)} · kubeq</title>"
        '<link rel=stylesheet href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f"<body{api}><header><a href='/'>kubeq</a> <span class=mode>{mode}</span></header>"
        f"<main><h1>{h(title)}</h1>{body}</main></body></html>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """`rows` hold ready HTML (escaped by the caller)."""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def token_form(
    action: str, label: str, hidden: dict[str, str] | None = None, *, danger: bool = False
) -> str:
    """A POST form carrying the token: CSRF-safe, as no other site can know the token."""
    fields = "".join(
        f"<input type=hidden name='{h(k)}' value='{h(v)}'>" for k, v in (hidden or {}).items()
    )
    cls = " class=danger" if danger else ""
    return (
        f"<form method=post action='{h(action)}' class=action>{fields}"
        "<input type=password name=token placeholder=token autocomplete=off required>"
        f"<button type=submit{cls}>{h(label)}</button></form>"
    )


def stats_block(ns: str, queue: str, stats: QueueStats) -> str:
    rows = [
        [
            h(lv.name),
            f"<span data-stat='level.{h(lv.name)}.ready'>{lv.ready}</span>",
            f"<span data-stat='level.{h(lv.name)}.due'>{lv.due}</span>",
            f"<span data-stat='level.{h(lv.name)}.delayed'>{lv.delayed}</span>",
            f"<span data-stat='level.{h(lv.name)}.in_flight'>{lv.in_flight}</span>",
            h(age(lv.oldest_enqueued_at, stats.at)),
        ]
        for lv in stats.levels
    ]
    paused = (
        f"<p class=paused id=paused>PAUSED since {h(age(stats.paused_at, stats.at))} ago"
        + (f": {h(stats.paused_reason)}" if stats.paused_reason else "")
        + "</p>"
        if stats.paused
        else "<p class=running id=paused>claiming</p>"
    )
    counters = ", ".join(
        f"{h(k)} <span data-stat='counters.{h(k)}'>{v}</span>"
        for k, v in sorted(stats.counters.items())
    )
    return (
        paused
        + table(["level", "ready", "due", "delayed", "in flight", "oldest"], rows, "levels")
        + f"<p>backlog <b data-stat=backlog>{stats.backlog}</b> · dead letters "
        f"<a href='{qpath(ns, queue, '/tasks?state=dead')}'><b data-stat=dead>{stats.dead}</b></a>"
        f" · workers <b data-stat=workers>{stats.workers}</b></p>"
        f"<p class=counters>counters: {counters or 'none'}</p>"
    )


def sparkline(points: Sequence[tuple[int, int]], width: int = 600, height: int = 80) -> str:
    """Backlog over time as an inline SVG polyline (server-rendered, no chart library)."""
    if len(points) < 2:
        return "<p class=muted>backlog history: collecting…</p>"
    t0, t1 = points[0][0], points[-1][0]
    top = max(1, max(v for _, v in points))
    span = max(1, t1 - t0)
    coords = " ".join(
        f"{(t - t0) * width / span:.1f},{height - v * (height - 4) / top:.1f}" for t, v in points
    )
    return (
        f"<figure><svg id=backlog-chart width={width} height={height} "
        f"viewBox='0 0 {width} {height}' role=img aria-label='backlog over time'>"
        f"<polyline fill=none stroke=currentColor stroke-width=2 points='{coords}'/></svg>"
        f"<figcaption>backlog over the last {span / 1000:.0f} s as sampled by this dashboard "
        f"(max {top}, last sample {points[-1][1]})"
        "</figcaption></figure>"
    )


def workers_block(
    ns: str, queue: str, workers: Sequence[WorkerInfo], running: Sequence[Task], now: int
) -> str:
    by_worker: dict[str, list[Task]] = {}
    for t in running:
        by_worker.setdefault(t.worker or "?", []).append(t)
    rows = []
    for w in workers:
        tasks = by_worker.get(w.id, [])
        shown = ", ".join(
            f"<a href='{qpath(ns, queue, '/task/' + quote(t.id, safe=''))}'>{h(t.type)}</a>"
            for t in tasks[:10]
        )
        if len(tasks) > 10:
            shown += f" … +{len(tasks) - 10}"
        rows.append(
            [
                h(w.id),
                h(w.pod or "-"),
                f"{w.in_flight}/{w.concurrency}",
                "draining" if w.draining else "serving",
                h(age(w.last_seen, now)) + " ago",
                shown or "-",
            ]
        )
    if not rows:
        return "<p class=muted>no workers registered</p>"
    return table(["worker", "pod", "in flight", "state", "last seen", "running"], rows, "workers")


def scale_block(events: Sequence[dict[str, Any]], now: int) -> str:
    if not events:
        return "<p class=muted>no scale decisions recorded</p>"
    rows = [
        [
            h(age(e.get("at") if isinstance(e.get("at"), int) else None, now)) + " ago",
            h(e.get("from", "?")),
            h(e.get("to", "?")),
            h(e.get("reason", ""), limit=MAX_CELL_CHARS),
        ]
        for e in events
    ]
    return table(["when", "from", "to", "reason"], rows, "scale")


def task_filter_form(ns: str, queue: str, levels: Sequence[str], args: dict[str, str]) -> str:
    def options(values: Sequence[str], chosen: str, blank: bool) -> str:
        out = "<option value=''>any</option>" if blank else ""
        for v in values:
            sel = " selected" if v == chosen else ""
            out += f"<option value='{h(v)}'{sel}>{h(v)}</option>"
        return out

    states = options(LIST_STATES, args.get("state", "pending"), False)
    return (
        f"<form method=get action='{qpath(ns, queue, '/tasks')}' class=filters>"
        f"<label>state <select name=state>{states}</select></label>"
        f"<label>type <input name=type value='{h(args.get('type', ''))}'></label>"
        f"<label>level <select name=level>{options(levels, args.get('level', ''), True)}</select>"
        "</label><label>limit <input name=limit type=number min=1 max=1000 "
        f"value='{h(args.get('limit', '50'))}'></label><button type=submit>search</button></form>"
        f"<form method=get action='{qpath(ns, queue, '/find')}' class=filters>"
        "<label>task id <input name=id></label><button type=submit>open</button></form>"
    )


def task_rows(ns: str, queue: str, tasks: Sequence[Task], now: int) -> list[list[str]]:
    rows = []
    for t in tasks:
        if t.status.value == "running":
            detail = f"worker {t.worker}"
        elif t.error is not None:
            detail = f"{t.reason or '-'}: {t.error.type}: {t.error.message}"
        elif t.due_at > now:
            detail = f"due in {(t.due_at - now) // 1000}s"
        else:
            detail = t.reason or ""
        rows.append(
            [
                f"<a href='{qpath(ns, queue, '/task/' + quote(t.id, safe=''))}'>{h(t.id)}</a>",
                h(t.type, limit=MAX_CELL_CHARS),
                h(t.priority),
                h(t.status.value),
                f"{t.attempts}/{t.max_attempts}",
                h(age(t.created_at, now)),
                h(detail, limit=MAX_CELL_CHARS),
            ]
        )
    return rows


def tasks_table(ns: str, queue: str, tasks: Sequence[Task], now: int) -> str:
    if not tasks:
        return "<p class=muted id=no-tasks>no tasks found</p>"
    headers = ["id", "type", "level", "state", "attempts", "age", "detail"]
    return table(headers, task_rows(ns, queue, tasks, now), "tasks")


def next_link(ns: str, queue: str, args: dict[str, str], cursor: str | None) -> str:
    if not cursor:
        return ""
    query = urlencode({**{k: v for k, v in args.items() if v}, "cursor": cursor})
    return f"<p><a id=next-page href='{qpath(ns, queue, '/tasks')}?{h(query)}'>next page</a></p>"


def shown_json(value: Any) -> str:
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return f"<pre>{h(text, limit=MAX_SHOWN_CHARS, newlines=True)}</pre>"


def task_detail(ns: str, queue: str, t: Task, now: int, writable: bool) -> str:
    fields = [
        ("id", h(t.id)),
        ("type", h(t.type)),
        ("state", f"<span id=task-state>{h(t.status.value)}</span>"),
        ("level", h(t.priority)),
        ("attempts", f"{t.attempts} of {t.max_attempts}"),
        ("created", h(age(t.created_at, now)) + " ago"),
        ("due", h(age(t.due_at, now)) + (" ago" if t.due_at <= now else " (future)")),
        ("started", h(age(t.started_at, now)) + " ago" if t.started_at else "-"),
        ("finished", h(age(t.finished_at, now)) + " ago" if t.finished_at else "-"),
        ("worker", h(t.worker or "-")),
        ("reason", h(t.reason or "-")),
        ("cancel requested", "yes" if t.cancel_requested else "no"),
    ]
    body = table(["field", "value"], [[h(k), v] for k, v in fields], "detail")
    if t.progress is not None:  # bounded (MAX_PROGRESS_BYTES) and escaped like a payload
        reported = h(age(t.progress.at, now))
        body += f"<h2 id=task-progress>progress <small>({reported} ago)</small></h2>"
        body += shown_json(t.progress.value)
    body += "<h2>payload</h2>" + shown_json(t.payload)
    if t.error is not None:
        message = h(t.error.message, limit=MAX_SHOWN_CHARS)
        body += f"<h2>error</h2><p class=error id=task-error>{h(t.error.type)}: {message}</p>"
        if t.error.traceback:
            tb = h(t.error.traceback, limit=MAX_SHOWN_CHARS, newlines=True)
            body += f"<pre class=traceback>{tb}</pre>"
    if t.result is not None:
        body += "<h2>result</h2>" + shown_json(t.result)
    if writable:
        path = qpath(ns, queue, "/task/" + quote(t.id, safe=""))
        if t.status.value in ("scheduled", "retrying"):
            body += token_form(path + "/run-now", "run now")
        if t.status.value == "dead":
            body += token_form(qpath(ns, queue, "/dead/requeue"), "requeue", {"id": t.id})
            body += token_form(qpath(ns, queue, "/dead/purge"), "purge", {"id": t.id}, danger=True)
    return body


def dead_actions(ns: str, queue: str) -> str:
    form = (
        "<label>reason <input name=reason></label><label>type <input name=type></label>"
        "<input type=password name=token placeholder=token autocomplete=off required>"
    )
    requeue, purge = qpath(ns, queue, "/dead/requeue"), qpath(ns, queue, "/dead/purge")
    return (
        f"<form method=post action='{requeue}' class=action id=requeue-form>"
        f"{form}<button type=submit>requeue matching</button></form>"
        f"<form method=post action='{purge}' class=action id=purge-form>"
        f"{form}<button type=submit class=danger>purge matching</button></form>"
        "<p class=muted>Leave reason and type empty to act on every dead letter.</p>"
    )


TYPE_COLUMNS = ("submitted", "completed", "failed", "retried", "dead")


def types_block(types: dict[str, dict[str, int]]) -> str:
    if not types:
        return "<p class=muted>no per-type counts yet</p>"
    rows = []
    for task_type, c in types.items():
        runs = c.get("runs", 0)
        mean = f"{c.get('duration_ms', 0) / runs:,.0f} ms" if runs else "-"
        rows.append(
            [h(task_type, limit=MAX_CELL_CHARS), *(str(c.get(k, 0)) for k in TYPE_COLUMNS), mean]
        )
    return table(["type", *TYPE_COLUMNS, "mean run"], rows, "types")
