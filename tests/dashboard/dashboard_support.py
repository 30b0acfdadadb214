"""A real dashboard for tests: uvicorn serving build_app() on a free port, against the
test Redis. A module of its own, with a name no other test directory uses: `from conftest
import ...` resolved to whichever conftest.py pytest imported first (tests/cli's, when
both directories ran in one session)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from kubeq.dashboard.app import Dashboard, build_app
from kubeq.protocol import Client

TOKEN = "s3cret-token-for-tests-0123456789"


@dataclass
class Served:
    url: str
    client: Client  # a client of the served queue (default/default)
    dashboard: Dashboard


def serve(redis_url: str, token: str | None, dashboard_url: str | None = None) -> Iterator[Served]:
    """The dashboard connects with `dashboard_url` (default: the test Redis)."""
    url = dashboard_url or redis_url
    d = Dashboard(
        queues=[("default", "default"), ("other", "second")],
        connect=lambda ns, q: Client.from_url(url, q, ns),
        token=token,
        sample_seconds=0.2,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(d), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.02)
    client = Client.from_url(redis_url, "default")
    try:
        yield Served(f"http://127.0.0.1:{port}", client, d)
    finally:
        server.should_exit = True
        thread.join(10)
        client.close()
        sock.close()
