"""Retention (`[retention]` of bridge.toml): the bridge deletes what is old enough, so its
storage stays bounded under any load.

A sweep runs every `sweep_interval_s` in the server (a background task of the app's lifespan)
and walks the store step by step, each step one transaction over at most `sweep_batch` rows:

- any message older than `unread_messages_days`, read or not;
- a message older than `read_messages_days` that its recipients have read (its inbox's read
  cursor is past it and, for a message a worker sent, the lead's cursor too);
- audit rows older than `audit_days`.

Each delete takes the message's bytes off its sender's quota counter in the same transaction
(the store does it). Between steps the sweep yields the event loop (`asyncio.sleep(0)`), so no
request waits for more than one step. A sweep that deleted something writes one audit row
(`retention.sweep`, with the counts) and then gives the space back to the file system a bounded
number of pages per step (`Store.compact`); a sweep that deleted nothing writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from s2_bridge.contract.config import RetentionSection
from s2_bridge.server.store import Store
from s2_bridge.server.store.base import SweepCutoffs, SweepMark

log = logging.getLogger("s2_bridge.retention")

DAY_S = 86_400.0
# Pages (4 KiB each) given back per compaction step: a step costs a few milliseconds.
COMPACT_PAGES_PER_STEP = 256
AUDIT_ACTOR = "bridge"
AUDIT_ACTION = "retention.sweep"


def cutoffs(policy: RetentionSection, now: float) -> SweepCutoffs:
    return SweepCutoffs(
        read_before=now - policy.read_messages_days * DAY_S,
        unread_before=now - policy.unread_messages_days * DAY_S,
        audit_before=now - policy.audit_days * DAY_S,
    )


@dataclass
class SweepTotals:
    messages: int = 0
    bytes: int = 0
    audit_rows: int = 0
    steps: int = 0  # transactions that deleted or looked at rows
    compact_steps: int = 0
    seconds: float = 0.0

    @property
    def deleted(self) -> bool:
        return bool(self.messages or self.audit_rows)


class Retention:
    def __init__(self, store: Store, policy: RetentionSection, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def _steps(self, now: float, totals: SweepTotals) -> Iterator[None]:
        """One sweep as a generator: it yields after every transaction, and the caller decides
        what happens in between (nothing for sweep(), a turn of the event loop for sweep_async())."""
        started = time.monotonic()
        limits = cutoffs(self.policy, now)
        mark: SweepMark | None = SweepMark()
        while mark is not None:
            step = self.store.sweep(limits, self.policy.sweep_batch, mark)
            totals.messages += step.messages
            totals.bytes += step.bytes
            totals.audit_rows += step.audit_rows
            totals.steps += 1
            mark = step.resume
            yield
        if not totals.deleted:
            totals.seconds = time.monotonic() - started
            return
        detail = {"messages": totals.messages, "bytes": totals.bytes, "audit_rows": totals.audit_rows}
        self.store.audit(
            actor=AUDIT_ACTOR,
            action=AUDIT_ACTION,
            target="store",
            detail=json.dumps(detail | {"steps": totals.steps}, sort_keys=True),
            remote="",
            now=now,
        )
        # Give the space back, a bounded step at a time; bounded in number too, should traffic
        # free pages as fast as the steps give them back.
        left = self.store.compact(COMPACT_PAGES_PER_STEP)
        steps_max = left // COMPACT_PAGES_PER_STEP + 10
        while left and totals.compact_steps < steps_max:
            totals.compact_steps += 1
            yield
            left = self.store.compact(COMPACT_PAGES_PER_STEP)
        totals.seconds = time.monotonic() - started
        log.info(
            "retention: deleted %d messages (%d bytes) and %d audit rows in %d steps, compacted in %d more, %.3f s",
            totals.messages,
            totals.bytes,
            totals.audit_rows,
            totals.steps,
            totals.compact_steps,
            totals.seconds,
        )

    def sweep(self, now: float | None = None) -> SweepTotals:
        """One whole sweep at once (tests, tools); `now` may be any time."""
        totals = SweepTotals()
        for _ in self._steps(self.clock() if now is None else now, totals):
            pass
        return totals

    async def sweep_async(self, now: float | None = None) -> SweepTotals:
        """One sweep, yielding the event loop between its transactions."""
        totals = SweepTotals()
        for _ in self._steps(self.clock() if now is None else now, totals):
            await asyncio.sleep(0)
        return totals

    async def run_forever(self) -> None:
        """Sweep at start, then every sweep_interval_s, until cancelled. A failed sweep (the
        database locked by another process, a full disk) is logged and tried again next time."""
        while True:
            try:
                await self.sweep_async()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server must outlive a failed sweep
                log.warning(
                    "retention sweep failed (%s: %s); next try in %g s",
                    type(exc).__name__,
                    exc,
                    self.policy.sweep_interval_s,
                )
            await asyncio.sleep(self.policy.sweep_interval_s)
