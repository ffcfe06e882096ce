"""Wake-ups for long-poll readers: one asyncio.Event per (conversation, side), replaced on use.

A reader takes the current event before it reads the store, then waits on it; a writer stores
the message first and then sets and drops the event. So a message that lands between the
reader's query and its wait still wakes it, and no event outlives its waiters.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

from s2_bridge.models import Side

T = TypeVar("T")


class InboxSignals:
    def __init__(self) -> None:
        self._events: dict[tuple[str, Side], asyncio.Event] = {}
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
