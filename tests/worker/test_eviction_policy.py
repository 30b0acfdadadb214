"""Issue 9 item 6: a worker whose Redis may evict accepted tasks says so loudly (an ERROR
line and kubeq_redis_eviction_policy_safe at 0) and keeps serving what is there."""

from __future__ import annotations

import logging

import pytest

import redis
from kubeq.metrics import WorkerMetrics
from kubeq.protocol import AsyncClient, QueueConfig
from kubeq.worker.process import check_eviction_policy


async def test_an_evicting_policy_is_an_error_line_and_a_zero_gauge(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis.Redis.from_url(redis_url)
    cfg = QueueConfig(name="evict")
    metrics = WorkerMetrics(cfg.full_name, ["t"])
    gauge = 'kubeq_redis_eviction_policy_safe{queue="default/evict"}'
    try:
        async with await AsyncClient.from_url(redis_url, "evict", config=cfg) as client:
            r.config_set("maxmemory-policy", "allkeys-lru")
            with caplog.at_level(logging.ERROR, logger="kubeq.worker"):
                problem = await check_eviction_policy(client, metrics)
            assert problem is not None
            assert "'allkeys-lru'" in problem
            assert any(
                rec.levelno == logging.ERROR and "noeviction" in rec.getMessage()
                for rec in caplog.records
            )
            assert f"{gauge} 0.0" in metrics.expose().decode()
            r.config_set("maxmemory-policy", "noeviction")
            assert await check_eviction_policy(client, metrics) is None
            assert f"{gauge} 1.0" in metrics.expose().decode()
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.close()
