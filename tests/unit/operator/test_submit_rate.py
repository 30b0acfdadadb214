"""Issue 10: the submit rate is exported. The operator (and `kubeq up`, which runs the
same autoscaler) turns Redis's `submitted` counter into kubeq_queue_submitted_total."""

from __future__ import annotations

from kubeq.protocol import Client, QueueStats
from kubeq_operator.engine.metrics import OperatorMetrics

NAME = "kubeq_queue_submitted_total"


def stats_with(submitted: int) -> QueueStats:
    return QueueStats(
        queue="ns/q", at=0, levels=[], dead=0, workers=0, counters={"submitted": submitted}
    )


def test_the_series_equals_redis_submitted_counter(client: Client) -> None:
    metrics = OperatorMetrics()
    queue = client.config.full_name
    client.submit_many([{"type": "t"} for _ in range(7)])
    metrics.observe_stats(queue, client.stats())
    assert metrics.registry.get_sample_value(NAME, {"queue": queue}) == 7
    client.submit("t", idempotency_key="k")
    client.submit("t", idempotency_key="k")  # a repeat submits nothing
    metrics.observe_stats(queue, client.stats())
    assert metrics.registry.get_sample_value(NAME, {"queue": queue}) == 8


def test_a_counter_that_starts_over_restarts_the_series_and_clearing_drops_it() -> None:
    metrics = OperatorMetrics()
    for total in (5, 12, 12):
        metrics.observe_stats("ns/q", stats_with(total))
        assert metrics.registry.get_sample_value(NAME, {"queue": "ns/q"}) == total
    metrics.observe_stats("ns/q", stats_with(3))  # the queue's keys were deleted
    assert metrics.registry.get_sample_value(NAME, {"queue": "ns/q"}) == 3
    metrics.clear_queue("ns/q")  # another replica watches it now: no double count
    assert metrics.registry.get_sample_value(NAME, {"queue": "ns/q"}) is None
    metrics.observe_stats("ns/q", stats_with(4))
    assert metrics.registry.get_sample_value(NAME, {"queue": "ns/q"}) == 4
    metrics.forget("ns/q", ())
    assert metrics.registry.get_sample_value(NAME, {"queue": "ns/q"}) is None
