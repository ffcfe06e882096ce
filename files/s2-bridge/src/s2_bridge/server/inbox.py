"""Wake-ups for long-poll readers: one asyncio.Event per (conversation, side), replaced on use.

A reader takes the current event before it reads the store, then waits on it; a writer stores
the message first and then sets and drops the event. So a message that lands between the
reader's query and its wait still wakes it, and no event outlives its waiters.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import TypeVar

from s2_bridge.contract.models import Side

T = TypeVar("T")


# Readers woken by one message that may build and send their answer in one turn of the event
# loop; the rest go in the next turns, in the order they woke. Between turns the loop reads the
# sockets, so other callers' requests (heartbeats) are served while 1,000 waiters are answered.
# Each answer costs ~0.3-0.6 ms for a 45 KB message (mostly the SDK encoding the response):
# 8 per turn keeps a turn near 5 ms (docs/BENCHMARKS.md, "Hostile load").
WAKE_BATCH = 8


class WakeTurns:
    """At most `batch` woken readers proceed per loop turn; the others queue, first in first out."""

    def __init__(self, batch: int = WAKE_BATCH) -> None:
        self.batch = batch
        self._used = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def turn(self) -> None:
        if self._used < self.batch and not self._queue:
            self._used += 1
            self._schedule()
            return
        future = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        self._schedule()
        await future

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        # Runs once per loop turn while readers queue: frees the next batch, whose steps run in
        # the next turn, after this one's socket reads.
        self._scheduled = False
        self._used = 0
        while self._queue and self._used < self.batch:
            future = self._queue.popleft()
            if not future.done():  # a cancelled reader (its client went away) takes no slot
                future.set_result(None)
                self._used += 1
        if self._queue or self._used:
            self._schedule()


class InboxSignals:
    def __init__(self) -> None:
        self._events: dict[tuple[str, Side], asyncio.Event] = {}
        self.turns = WakeTurns()
        # What the readers woken by one event fetched, keyed by what they asked: 1,000 waiters
        # on one inbox woken by one message read and build that message once, not 1,000 times.
        self._reads: weakref.WeakKeyDictionary[asyncio.Event, dict[Hashable, object]] = weakref.WeakKeyDictionary()

    def shared_read(self, woke_on: asyncio.Event, key: Hashable, read: Callable[[], T]) -> T:
        """`read()`, or what an earlier reader woken by the same event got for the same key.
        Only a non-empty answer is shared: it is a correct answer for every later reader (they
        get newer messages on their next call), while an empty one may be stale."""
        shared = self._reads.setdefault(woke_on, {})
        if key in shared:
            return shared[key]  # type: ignore[return-value]
        value = read()
        if value:
            shared[key] = value
        return value

    def event(self, conversation_id: str, side: Side) -> asyncio.Event:
        key = (conversation_id, side)
        current = self._events.get(key)
        if current is None:
            current = self._events[key] = asyncio.Event()
        return current

    def notify(self, conversation_id: str, side: Side) -> None:
        current = self._events.pop((conversation_id, side), None)
        if current is not None:
            current.set()
