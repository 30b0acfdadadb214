"""The dashboard's ASGI app (Starlette): server-rendered pages over the same Client
functions the CLI uses (stats, workers, list_tasks, status, pause/resume, run_now,
requeue_dead_where/purge_dead_where, scale_log).

Read-only unless started with a token. Every mutating action is a POST whose form
carries the token, compared in constant time; a cross-site page cannot know the token,
so it cannot forge one (CSRF), and GET never changes anything. The Redis URL (and its
credentials) never appears in a page: pages name queues only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from kubeq.dashboard import pages
from kubeq.dashboard.pages import h, qpath
from kubeq.dashboard.static import CSS, JS
from kubeq.protocol import (
    Client,
    ConfigError,
    ConnectionFailed,
    KubeqError,
    QueueStats,
    TaskNotFound,
    UnknownPriority,
)
from kubeq.protocol.browse import LIST_STATES, MAX_LIST_LIMIT

log = logging.getLogger("kubeq.dashboard")

HISTORY_POINTS = 720  # backlog samples kept per queue (an hour at 5 s)
MAX_FORM_BYTES = 16 * 1024
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

ClientFactory = Callable[[str, str], Client]


@dataclass
class Dashboard:
    """What the app serves: the queues (namespace, name), how to reach them, the token."""

    queues: Sequence[tuple[str, str]]
    connect: ClientFactory
    token: str | None = None
    sample_seconds: float = 5.0
    history: dict[tuple[str, str], deque[tuple[int, int]]] = field(default_factory=dict)
    _clients: dict[tuple[str, str], Client] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, ns: str, queue: str) -> Client:
        key = (ns, queue)
        if key not in self.queues:
            raise TaskNotFound(f"this dashboard does not serve queue {ns}/{queue}")
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self.connect(ns, queue)
            return self._clients[key]

    def sample(self) -> None:
        """One backlog sample per queue (the history behind the chart)."""
        for ns, queue in self.queues:
            try:
                stats = self.client(ns, queue).stats()
            except KubeqError as exc:
                log.warning("dashboard: stats of %s/%s failed: %s", ns, queue, exc)
                continue
            self.record(ns, queue, stats)

    def record(self, ns: str, queue: str, stats: QueueStats) -> None:
        points = self.history.setdefault((ns, queue), deque(maxlen=HISTORY_POINTS))
        if not points or points[-1][0] < stats.at:
            points.append((stats.at, stats.backlog))

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()

    @property
    def writable(self) -> bool:
        return bool(self.token)

    def token_ok(self, given: object) -> bool:
        if not self.token or not isinstance(given, str):
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())


def _page(
    title: str, body: str, d: Dashboard, *, status: int = 200, api: str | None = None
) -> HTMLResponse:
    html = pages.layout(title, body, writable=d.writable, refresh_api=api)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _error(d: Dashboard, exc: Exception, status: int) -> HTMLResponse:
    return _page("error", f"<p class=error id=error>{h(exc)}</p>", d, status=status)


def _flash(request: Request) -> str:
    done = request.query_params.get("done")
    return f"<p class=flash id=flash>{h(done, limit=200)}</p>" if done else ""


def stats_document(stats: QueueStats) -> dict[str, Any]:
    """The JSON the page's script refreshes its numbers from (same fields as the page)."""
    return {
        "queue": stats.queue,
        "at": stats.at,
        "paused": stats.paused,
        "backlog": stats.backlog,
        "dead": stats.dead,
        "workers": stats.workers,
        "counters": stats.counters,
        "level": {lv.name: lv.model_dump() for lv in stats.levels},
    }


def build_app(d: Dashboard) -> Starlette:
    def queue_of(request: Request) -> tuple[str, str]:
        return request.path_params["ns"], request.path_params["queue"]

    async def call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kw)

    async def index(request: Request) -> Response:
        rows = []
        for ns, queue in d.queues:
            try:
                s: QueueStats = await call(d.client(ns, queue).stats)
            except KubeqError as exc:
                rows.append(
                    [h(f"{ns}/{queue}"), f"<span class=error>{h(exc)}</span>", "", "", "", ""]
                )
                continue
            levels = ", ".join(f"{h(lv.name)} {lv.ready + lv.due}" for lv in s.levels)
            rows.append(
                [
                    f"<a href='{qpath(ns, queue)}'>{h(ns)}/{h(queue)}</a>",
                    "PAUSED" if s.paused else "claiming",
                    str(s.backlog),
                    levels,
                    str(s.dead),
                    str(s.workers),
                ]
            )
        body = pages.table(
            ["queue", "state", "backlog", "ready per level", "dead", "workers"], rows, "queues"
        )
        return _page("queues", body, d)

    async def queue_page(request: Request) -> Response:
        ns, queue = queue_of(request)
        client = d.client(ns, queue)
        stats: QueueStats = await call(client.stats)
        d.record(ns, queue, stats)
        workers = await call(client.workers)
        running = await call(client.list_tasks, "running", limit=MAX_LIST_LIMIT)
        events = await call(client.scale_log, 20)
        types = await call(client.type_stats)
        body = _flash(request) + pages.stats_block(ns, queue, stats)
        if d.writable:
            if stats.paused:
                body += pages.token_form(qpath(ns, queue, "/resume"), "resume")
            else:
                body += pages.token_form(
                    qpath(ns, queue, "/pause"), "pause", {"reason": "paused from the dashboard"}
                )
        body += pages.sparkline(list(d.history.get((ns, queue), ())))
        links = " · ".join(
            f"<a href='{qpath(ns, queue, '/tasks?state=' + s)}'>{s}</a>" for s in LIST_STATES
        )
        body += f"<h2>tasks</h2><p>{links}</p>"
        body += "<h2>per task type</h2>" + pages.types_block(types)
        body += "<h2>workers</h2>" + pages.workers_block(
            ns, queue, workers, running.tasks, stats.at
        )
        body += "<h2>recent scale decisions</h2>" + pages.scale_block(events, stats.at)
        api = qpath(ns, queue, "/api/stats")
        return _page(f"{ns}/{queue}", body, d, api=api)

    async def api_stats(request: Request) -> Response:
        ns, queue = queue_of(request)
        stats = await call(d.client(ns, queue).stats)
        d.record(ns, queue, stats)
        return JSONResponse(stats_document(stats), headers=SECURITY_HEADERS)

    async def tasks_page(request: Request) -> Response:
        ns, queue = queue_of(request)
        client = d.client(ns, queue)
        q = request.query_params
        args = {k: q.get(k, "") for k in ("state", "type", "level", "limit")}
        args["state"] = args["state"] or "pending"
        try:
            limit = int(args["limit"] or 50)
        except ValueError:
            limit = 0
        page = await call(
            client.list_tasks,
            args["state"],
            task_type=args["type"] or None,
            level=args["level"] or None,
            limit=limit,
            cursor=q.get("cursor") or None,
        )
        now = await call(client.clock)
        body = _flash(request) + pages.task_filter_form(ns, queue, client.ops.levels, args)
        if args["state"] == "dead" and d.writable:
            body += pages.dead_actions(ns, queue)
        body += pages.tasks_table(ns, queue, page.tasks, now)
        body += pages.next_link(ns, queue, args, page.cursor)
        return _page(f"{ns}/{queue}: {args['state']} tasks", body, d)

    async def find(request: Request) -> Response:
        ns, queue = queue_of(request)
        tid = request.query_params.get("id", "")
        return RedirectResponse(qpath(ns, queue, "/task/" + quote(tid, safe="")), 303)

    async def task_page(request: Request) -> Response:
        ns, queue = queue_of(request)
        client = d.client(ns, queue)
        task = await call(client.status, request.path_params["id"])
        now = await call(client.clock)
        body = _flash(request) + pages.task_detail(ns, queue, task, now, d.writable)
        return _page(f"task {task.id}", body, d)

    async def form(request: Request) -> dict[str, str]:
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            raise PermissionError("form too large")
        data = await request.form()
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def back(ns: str, queue: str, tail: str, done: str) -> Response:
        sep = "&" if "?" in tail else "?"
        return RedirectResponse(qpath(ns, queue, tail) + sep + urlencode({"done": done}), 303)

    async def mutate(request: Request) -> Response:
        ns, queue = queue_of(request)
        if not d.writable:
            return _page("read-only", "<p id=error>This dashboard is read-only.</p>", d, status=403)
        try:
            fields = await form(request)
        except PermissionError as exc:
            return _error(d, exc, 413)
        if not d.token_ok(fields.get("token")):
            return _page("refused", "<p id=error>Wrong or missing token.</p>", d, status=403)
        client = d.client(ns, queue)
        action = request.path_params["action"]
        if action == "pause":
            await call(client.pause, fields.get("reason") or None)
            return back(ns, queue, "", "paused")
        if action == "resume":
            await call(client.resume)
            return back(ns, queue, "", "resumed")
        if action in ("requeue", "purge"):
            if fields.get("id"):
                ids = [fields["id"]]
                if action == "requeue":
                    n = len(await call(client.requeue_dead, ids))
                else:
                    n = int(await call(client.purge_dead, ids))
            else:
                fn = client.requeue_dead_where if action == "requeue" else client.purge_dead_where
                n = len(
                    await call(
                        fn,
                        reason=fields.get("reason") or None,
                        task_type=fields.get("type") or None,
                    )
                )
            return back(ns, queue, "/tasks?state=dead", f"{action}d {n} task(s)")
        return _error(d, KubeqError(f"unknown action {action!r}"), 404)

    async def run_now(request: Request) -> Response:
        ns, queue = queue_of(request)
        if not d.writable:
            return _page("read-only", "<p id=error>This dashboard is read-only.</p>", d, status=403)
        try:
            fields = await form(request)
        except PermissionError as exc:
            return _error(d, exc, 413)
        if not d.token_ok(fields.get("token")):
            return _page("refused", "<p id=error>Wrong or missing token.</p>", d, status=403)
        tid = request.path_params["id"]
        ok = await call(d.client(ns, queue).run_now, tid)
        done = "due now" if ok else "not scheduled or retrying: nothing changed"
        return back(ns, queue, "/task/" + quote(tid, safe=""), done)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "dashboard.css":
            return Response(CSS, media_type="text/css", headers=SECURITY_HEADERS)
        if name == "dashboard.js":
            return Response(JS, media_type="text/javascript", headers=SECURITY_HEADERS)
        return Response("not found", 404, headers=SECURITY_HEADERS)

    async def on_kubeq_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TaskNotFound):
            return _error(d, exc, 404)
        if isinstance(exc, ConnectionFailed):
            return _error(d, exc, 503)
        if isinstance(exc, UnknownPriority | ConfigError):
            return _error(d, exc, 400)
        return _error(d, exc, 400 if isinstance(exc, KubeqError) else 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def sampler() -> None:
            while True:
                await run_in_threadpool(d.sample)
                await asyncio.sleep(d.sample_seconds)

        task = asyncio.create_task(sampler())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            d.close()

    q = "/q/{ns}/{queue}"
    routes = [
        Route("/", index),
        Route(q, queue_page),
        Route(q + "/api/stats", api_stats),
        Route(q + "/tasks", tasks_page),
        Route(q + "/find", find),
        Route(q + "/task/{id}", task_page),
        Route(q + "/task/{id}/run-now", run_now, methods=["POST"]),
        Route(q + "/{action:str}", mutate, methods=["POST"]),
        Route(q + "/dead/{action:str}", mutate, methods=["POST"]),
        Route("/static/{name}", static),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={KubeqError: on_kubeq_error},
        lifespan=lifespan,
    )


__all__ = ["LIST_STATES", "Dashboard", "build_app", "stats_document"]
