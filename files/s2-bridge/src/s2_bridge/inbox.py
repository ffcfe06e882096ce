"""Wake-ups for long-poll readers: one asyncio.Event per (conversation, side), replaced on use.

A reader takes the current event before it reads the store, then waits on it; a writer stores
the message first and then sets and drops the event. So a message that lands between the
reader's query and its wait still wakes it, and no event outlives its waiters.
"""

from __future__ import annotations

import asyncio

from s2_bridge.models import Side


class InboxSignals:
    def __init__(self) -> None:
        self._events: dict[tuple[str, Side], asyncio.Event] = {}

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
