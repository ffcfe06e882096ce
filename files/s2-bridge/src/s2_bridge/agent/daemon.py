"""Daemon lifecycle: run a coroutine until it returns or SIGTERM/SIGINT asks it to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from s2_bridge.contract import exitcodes


async def _until_signal(main: Callable[[], Awaitable[int]], log: logging.Logger) -> int:
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - asyncio.run always runs us in a task
        raise RuntimeError("no running task")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Cancelling interrupts whatever is in flight (a sleep, a slow request) at once.
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await main()
    except asyncio.CancelledError:
        log.info("stopping on request")
        return exitcodes.OK


def run_until_signal(main: Callable[[], Awaitable[int]], log: logging.Logger) -> int:
    """Exit code of `main()`, or 0 when a signal stopped it."""
    return asyncio.run(_until_signal(main, log))
