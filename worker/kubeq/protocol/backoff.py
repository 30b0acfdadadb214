"""Retry delays: exponential backoff with full jitter (AWS architecture blog's "Full Jitter")."""

from __future__ import annotations

import random

from kubeq.protocol.config import Backoff


def backoff_ceiling_seconds(policy: Backoff, attempt: int) -> float:
    """Upper bound of the delay after failed attempt `attempt` (1-based)."""
    exponent = max(attempt - 1, 0)
    # Cap the exponent before pow() so a large attempt count cannot overflow a float.
    if exponent > 64:
        return policy.max_seconds
    return float(min(policy.max_seconds, policy.base_seconds * policy.factor**exponent))


def retry_delay_ms(policy: Backoff, attempt: int, rng: random.Random) -> int:
    """Full jitter: uniform in [0, ceiling]; spreads a burst of failures over the window."""
    return int(rng.uniform(0.0, backoff_ceiling_seconds(policy, attempt)) * 1000)
