"""Retry delays: capped exponential backoff with full jitter, and a jittered fixed interval.

Full jitter (a uniform draw between 0 and the capped exponential) spreads eight workers that
lost the bridge at the same moment, so they do not all come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def full_jitter_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): uniform in [0, min(cap, base * 2**attempt)]."""
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    # Clamp the exponent: 2**attempt overflows a float long before anyone retries that often.
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return rng.uniform(0.0, ceiling)


def jittered(interval: float, fraction: float, rng: random.Random) -> float:
    """`interval` moved randomly by up to +-fraction of itself (0.1 = +-10%)."""
    return interval * (1.0 + rng.uniform(-fraction, fraction))


@dataclass
class Backoff:
    """The retry state of one daemon: grows on each failure, resets on success."""

    base: float
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = full_jitter_delay(self.attempt, self.base, self.cap, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
