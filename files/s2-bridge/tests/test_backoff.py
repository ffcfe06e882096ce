"""Backoff: exponential ceiling, full jitter, cap, reset; seeded so failures reproduce."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s2_bridge.contract.backoff import Backoff, full_jitter_delay, jittered


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    base=st.floats(min_value=0.01, max_value=100),
    cap=st.floats(min_value=0.01, max_value=1000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_stays_between_zero_and_the_capped_exponential(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = full_jitter_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 62))


def test_delays_grow_then_stop_at_the_cap() -> None:
    rng = random.Random(7)
    # The mean of many draws tracks the ceiling: half of min(cap, base * 2**n).
    means = [sum(full_jitter_delay(n, 1.0, 60.0, rng) for _ in range(2000)) / 2000 for n in range(9)]
    for earlier, later in itertools.pairwise(means[:7]):
        assert later > earlier * 1.5
    assert means[6] == pytest.approx(30.0, rel=0.1)  # 64 capped to 60
    assert means[8] == pytest.approx(30.0, rel=0.1)


def test_backoff_counts_attempts_and_resets() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert backoff.attempt == 10
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[:1]) <= 1.0
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= 1.0


def test_seeded_backoff_is_reproducible() -> None:
    first = Backoff(base=0.5, rng=random.Random(42))
    second = Backoff(base=0.5, rng=random.Random(42))
    assert [first.next_delay() for _ in range(5)] == [second.next_delay() for _ in range(5)]


@given(interval=st.floats(min_value=0.01, max_value=3600), seed=st.integers(min_value=0, max_value=2**32))
def test_jittered_interval_stays_within_ten_percent(interval: float, seed: int) -> None:
    value = jittered(interval, 0.1, random.Random(seed))
    assert interval * 0.9 <= value <= interval * 1.1


def test_jitter_actually_varies() -> None:
    rng = random.Random(3)
    assert len({round(jittered(10.0, 0.1, rng), 6) for _ in range(20)}) > 10


def test_nonpositive_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        full_jitter_delay(0, 0.0, 1.0, random.Random())
