"""Shared fixtures: a real redis-server on a free port, a fake clock, queue clients."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

import redis
from kubeq.protocol import Client, QueueConfig
from kubeq.redis_server import RedisServer


class FakeClock:
    """Epoch milliseconds that move only when a test says so."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * 1000)
        return self.now


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    yield redis_server.url
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


_names = itertools.count()


@pytest.fixture
def make_client(redis_url: str, clock: FakeClock) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(**config: object) -> Client:
        cfg = QueueConfig.model_validate({"name": f"q{next(_names)}", **config})
        client = Client.from_url(redis_url, cfg.name, cfg.namespace, cfg, clock=clock)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()
