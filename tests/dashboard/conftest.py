"""Fixtures: a real dashboard (see dashboard_support), read-write and read-only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dashboard_support import TOKEN, Served, serve


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[Served]:
    """Read-write (token set)."""
    yield from serve(redis_url, TOKEN)


@pytest.fixture
def readonly_dashboard(redis_url: str) -> Iterator[Served]:
    yield from serve(redis_url, None)
