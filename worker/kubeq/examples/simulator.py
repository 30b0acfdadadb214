"""A fleet of simulated devices: readings, alarms and rollups as task requests.

Pure apart from its random generator: the demo and the tests drive it with a seeded RNG.
Faulty readings (a share set by `faulty`) are of two kinds: payloads the model refuses
(a missing field, a value that is not a number) and physically impossible values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from kubeq.protocol import TaskRequest

METRICS = ("temperature", "humidity", "pressure", "vibration")
BASELINE = {
    "temperature": (21.0, 0.8),
    "humidity": (45.0, 3.0),
    "pressure": (1013.0, 2.0),
    "vibration": (2.0, 0.3),
}


@dataclass(frozen=True)
class Phase:
    """`seconds` of traffic at `rate` readings per second."""

    name: str
    seconds: float
    rate: float


def burst_profile(scale: float = 1.0) -> list[Phase]:
    """Quiet → burst → quiet: the shape that shows scale up, drain and scale down."""
    return [
        Phase("warm-up", 6, 40 * scale),
        Phase("burst", 14, 900 * scale),
        Phase("cool-down", 30, 40 * scale),
    ]


class DeviceFleet:
    def __init__(
        self, devices: int, rng: random.Random, faulty: float = 0.02, spikes: float = 0.002
    ) -> None:
        self.devices = devices
        self.rng = rng
        self.faulty = faulty
        self.spikes = spikes
        self.seq = 0
        self.counts = {"reading": 0, "faulty": 0, "alarm": 0, "rollup": 0, "spike": 0}

    def _reading(self, now_ms: int) -> dict[str, Any]:
        device = f"dev-{self.rng.randrange(self.devices)}"
        metric = self.rng.choice(METRICS)
        mean, std = BASELINE[metric]
        value = self.rng.gauss(mean, std)
        if self.rng.random() < self.spikes:
            # Upward: a real but unusual reading (a downward one could leave the sensor's
            # physical range, which the handler rightly rejects as a broken sensor).
            value = mean + std * self.rng.uniform(8, 12)
            self.counts["spike"] += 1
        self.seq += 1
        return {
            "device_id": device,
            "metric": metric,
            "value": round(value, 3),
            "ts": now_ms,
            "seq": self.seq,
        }

    def _faulty(self, reading: dict[str, Any]) -> dict[str, Any]:
        kind = self.rng.randrange(3)
        if kind == 0:
            reading.pop("metric")  # model refuses it: invalid_payload
        elif kind == 1:
            reading["value"] = "n/a"  # not a number: invalid_payload
        else:
            reading["value"] = 10_000.0  # impossible for any sensor: permanent_error
        return reading

    def next_tasks(self, count: int, now_ms: int) -> list[TaskRequest]:
        out: list[TaskRequest] = []
        for _ in range(count):
            reading = self._reading(now_ms)
            roll = self.rng.random()
            if roll < self.faulty:
                self.counts["faulty"] += 1
                out.append(TaskRequest(type="telemetry.ingest", payload=self._faulty(reading)))
            elif roll < self.faulty + 0.01:
                self.counts["alarm"] += 1
                out.append(
                    TaskRequest(
                        type="telemetry.alarm",
                        priority="critical",
                        payload={
                            "device_id": reading["device_id"],
                            "code": "THRESHOLD",
                            "ts": now_ms,
                        },
                    )
                )
            elif roll < self.faulty + 0.03:
                self.counts["rollup"] += 1
                values = [round(self.rng.gauss(20, 2), 3) for _ in range(200)]
                out.append(
                    TaskRequest(
                        type="telemetry.rollup",
                        priority="bulk",
                        payload={"device_id": reading["device_id"], "values": values},
                    )
                )
            else:
                self.counts["reading"] += 1
                out.append(TaskRequest(type="telemetry.ingest", payload=reading))
        return out
