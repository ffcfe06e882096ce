"""Retry delays: capped exponential backoff (with full jitter, or without for the supervisor),
and a jittered fixed interval.

Full jitter (a uniform draw between 0 and the capped exponential) spreads eight workers that
lost the bridge at the same moment, so they do not all come back in the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def capped_exponential(attempt: int, base: float, cap: float) -> float:
    """The ceiling before retry number `attempt` (0-based): min(cap, base * 2**attempt)."""
    if base <= 0 or cap <= 0:
        raise ValueError("base and cap must be positive")
    # Clamp the exponent: 2**attempt overflows a float long before anyone retries that often.
    return min(cap, base * 2.0 ** min(attempt, 62))


def full_jitter_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number `attempt` (0-based): uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0.0, capped_exponential(attempt, base, cap))


def jittered(interval: float, fraction: float, rng: random.Random) -> float:
    """`interval` moved randomly by up to +-fraction of itself (0.1 = +-10%)."""
    return interval * (1.0 + rng.uniform(-fraction, fraction))


@dataclass
class Backoff:
    """The retry state of one daemon: grows on each failure, resets on success.

    `jitter=False` gives the plain doubling (base, 2*base, ... cap) of a supervisor that restarts
    one process, where there is no crowd to spread and a delay near 0 would be a busy loop.
    """

    base: float
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    jitter: bool = True

    def next_delay(self) -> float:
        if self.jitter:
            delay = full_jitter_delay(self.attempt, self.base, self.cap, self.rng)
        else:
            delay = capped_exponential(self.attempt, self.base, self.cap)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
