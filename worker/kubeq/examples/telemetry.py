"""TelemetryHub → TelemetryTaskProcessor: the handlers of the telemetry pipeline.

Devices send readings; each reading is one `telemetry.ingest` task. The handler validates
the reading, updates the device's rolling statistics (an exponentially weighted mean and
variance, kept in Redis and updated atomically), flags anomalies (|z| > 4 once a device
has history) and returns its verdict, which kubeq stores as the task's result. Device
alarms are `telemetry.alarm` tasks at the highest priority; hourly-style summaries are
`telemetry.rollup` tasks at the lowest. Faulty readings end in the dead-letter set with
the reason: a payload the model refuses (`invalid_payload`) or a physically impossible
value (`permanent_error`).

The handlers simulate downstream I/O with a short sleep, so a burst needs more workers.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from typing import Any, Literal

import redis.asyncio
from pydantic import BaseModel, Field

from kubeq.app import App, TaskContext
from kubeq.exceptions import Permanent

app = App("telemetry")

Metric = Literal["temperature", "humidity", "pressure", "vibration"]
# Physically possible ranges; outside them the sensor is broken, retrying cannot help.
VALID_RANGE: dict[str, tuple[float, float]] = {
    "temperature": (-60.0, 150.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1200.0),
    "vibration": (0.0, 50.0),
}
ANOMALY_Z = 4.0
MIN_HISTORY = 20
ALPHA = 0.05  # weight of a new reading in the moving averages
WORK_SECONDS = (0.04, 0.12)  # simulated downstream I/O per reading
DOWNSTREAM_FAILURES = 0.01  # share of readings whose (simulated) downstream call times out

# Atomic EWMA update: returns the mean, variance and count from before this reading.
_EWMA = """
local s = redis.call('HMGET', KEYS[1], 'mean', 'var', 'n')
local mean, var, n = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
local x, a = tonumber(ARGV[1]), tonumber(ARGV[2])
if not mean then
  redis.call('HSET', KEYS[1], 'mean', x, 'var', 0, 'n', 1, 'last', x)
  return {'', '0', '0'}
end
local d = x - mean
local new_mean = mean + a * d
local new_var = (1 - a) * (var + a * d * d)
redis.call('HSET', KEYS[1], 'mean', new_mean, 'var', new_var, 'n', n + 1, 'last', x)
return {tostring(mean), tostring(var), tostring(n)}
"""


class Reading(BaseModel):
    device_id: str = Field(pattern=r"^dev-[0-9]{1,6}$")
    metric: Metric
    value: float = Field(allow_inf_nan=False)
    ts: int = Field(ge=0)
    seq: int = Field(ge=0)


class Alarm(BaseModel):
    device_id: str = Field(pattern=r"^dev-[0-9]{1,6}$")
    code: str = Field(min_length=1, max_length=64)
    ts: int = Field(ge=0)


class Rollup(BaseModel):
    device_id: str = Field(pattern=r"^dev-[0-9]{1,6}$")
    values: list[float] = Field(min_length=1, max_length=10_000)


_redis: redis.asyncio.Redis | None = None


def store() -> redis.asyncio.Redis:
    """The app's own connection for its data (not kubeq's): the worker's Redis URL."""
    global _redis
    if _redis is None:
        url = os.environ.get("KUBEQ_REDIS_URL", "redis://127.0.0.1:6379/0")
        _redis = redis.asyncio.Redis.from_url(url, decode_responses=True)
    return _redis


def data_key(ctx: TaskContext, *parts: str) -> str:
    # Same hash tag as the queue: the demo's data sits in the queue's slot.
    return f"telemetry:{{{ctx.queue}}}:" + ":".join(parts)


def zscore(value: float, mean: float, var: float) -> float:
    std = math.sqrt(var)
    return 0.0 if std < 1e-9 else (value - mean) / std


@app.task("telemetry.ingest", max_attempts=5, timeout=10, payload_model=Reading)
async def ingest(reading: Reading, ctx: TaskContext) -> dict[str, Any]:
    low, high = VALID_RANGE[reading.metric]
    if not low <= reading.value <= high:
        raise Permanent(
            f"{reading.metric} {reading.value} outside the sensor's range [{low}, {high}]"
        )
    await asyncio.sleep(random.uniform(*WORK_SECONDS))
    if random.random() < DOWNSTREAM_FAILURES:
        # Transient: kubeq retries it with backoff (retry_on defaults to any exception).
        raise TimeoutError("downstream store timed out")
    r = store()
    key = data_key(ctx, "device", reading.device_id, reading.metric)
    prev_mean, prev_var, n = await r.eval(_EWMA, 1, key, reading.value, ALPHA)
    z = zscore(reading.value, float(prev_mean), float(prev_var)) if prev_mean else 0.0
    anomaly = int(n) >= MIN_HISTORY and abs(z) > ANOMALY_Z
    if anomaly:
        pipe = r.pipeline(transaction=False)
        pipe.lpush(
            data_key(ctx, "anomalies"),
            f"{reading.device_id} {reading.metric} {reading.value:.2f} z={z:.1f} seq={reading.seq}",
        )
        pipe.ltrim(data_key(ctx, "anomalies"), 0, 999)
        await pipe.execute()
        ctx.logger.info(
            "anomaly on %s %s: %.2f (z=%.1f)", reading.device_id, reading.metric, reading.value, z
        )
    return {
        "device": reading.device_id,
        "metric": reading.metric,
        "z": round(z, 2),
        "anomaly": anomaly,
    }


@app.task("telemetry.alarm", max_attempts=10, timeout=5, payload_model=Alarm)
async def alarm(event: Alarm, ctx: TaskContext) -> dict[str, Any]:
    await store().hincrby(data_key(ctx, "alarms"), event.code, 1)
    return {"device": event.device_id, "code": event.code, "acknowledged": True}


@app.task("telemetry.rollup", max_attempts=3, timeout=30, payload_model=Rollup)
def rollup(batch: Rollup, ctx: TaskContext) -> dict[str, Any]:
    # CPU-bound summary: a sync handler, so it runs in the worker's thread pool.
    values = sorted(batch.values)
    n = len(values)
    mean = sum(values) / n
    return {
        "device": batch.device_id,
        "n": n,
        "mean": round(mean, 3),
        "p50": values[n // 2],
        "p95": values[min(n - 1, int(n * 0.95))],
        "std": round(math.sqrt(sum((v - mean) ** 2 for v in values) / n), 3),
    }


class FleetRollup(BaseModel):
    scope: Literal["fleet"] = "fleet"


@app.task("telemetry.fleet_rollup", max_attempts=3, timeout=30, payload_model=FleetRollup)
async def fleet_rollup(job: FleetRollup, ctx: TaskContext) -> dict[str, Any]:
    """Scheduled (spec.schedules in examples/telemetry.yaml): each metric's fleet-wide mean
    of the devices' moving averages, kept in one hash for dashboards."""
    r = store()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    async for key in r.scan_iter(match=data_key(ctx, "device", "*"), count=500):
        metric = key.rsplit(":", 1)[-1]
        mean = await r.hget(key, "mean")
        if mean is not None:
            sums[metric] = sums.get(metric, 0.0) + float(mean)
            counts[metric] = counts.get(metric, 0) + 1
    summary = {m: round(sums[m] / counts[m], 3) for m in sums}
    if summary:
        await r.hset(data_key(ctx, "fleet"), mapping={m: str(v) for m, v in summary.items()})
    return {"devices_by_metric": counts, "mean_by_metric": summary}
