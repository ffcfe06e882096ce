"""Rate limits kept in memory: a token bucket per authenticated caller, and a failure window
per client address for bad tokens.

The two are separate on purpose: the original bridge keyed one limiter on the letter 'a'/'b'
before authentication, so anyone could exhaust a real worker's budget. Here a flood of bad
tokens only ever spends the failure budget of the address that sends them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class CallerLimiter:
    """Token bucket per caller key (the token hash), refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def retry_after(self, key: str) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        return max(0.0, (1.0 - bucket.tokens) / self.rate)


class FailureLimiter:
    """Counts authentication failures per address in fixed one-minute windows."""

    WINDOW_S = 60.0
    MAX_TRACKED = 100_000  # bounded memory under an address-spraying flood

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def record(self, address: str) -> int:
        """Count one failure; return how many this address has in its current window."""
        now = self._clock()
        start, count = self._windows.get(address, (now, 0))
        if now - start >= self.WINDOW_S:
            start, count = now, 0
        if len(self._windows) >= self.MAX_TRACKED and address not in self._windows:
            self._windows.clear()
        self._windows[address] = (start, count + 1)
        return count + 1

    def blocked(self, address: str) -> bool:
        start, count = self._windows.get(address, (0.0, 0))
        return count >= self.per_minute and self._clock() - start < self.WINDOW_S
