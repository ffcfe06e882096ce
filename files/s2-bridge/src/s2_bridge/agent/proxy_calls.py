"""The tool-call side of `mcp-proxy`: an asyncio loop on the proxy's bridge thread that
forwards each tools/call to the bridge with BridgeClient, one task per call.

proxy.py imports this module on that thread at start-up (it loads httpx2 and the MCP SDK,
about a second); the stdio front never waits for it to answer initialize or tools/list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from s2_bridge.agent.client import AuthRefused, BridgeClient, BridgeUnavailable, ToolCallError
from s2_bridge.agent.proxy import error_body, tool_error, tool_success
from s2_bridge.contract.credentials import CredentialsWatcher
from s2_bridge.contract.errors import ConfigError

log = logging.getLogger("s2_bridge.proxy")

Send = Callable[[dict[str, Any]], None]


class Forwarder:
    """Calls bridge tools with the credentials' token; a rotated credentials file takes effect
    on the next call."""

    def __init__(self, watcher: CredentialsWatcher, stack: AsyncExitStack) -> None:
        self.watcher = watcher
        self._stack = stack
        self._bridge: BridgeClient | None = None
        self._lock = asyncio.Lock()

    async def _current(self) -> BridgeClient:
        async with self._lock:
            if self.watcher.refresh(log):
                self._bridge = None  # the old client closes with the exit stack
            if self._bridge is None:
                bridge = BridgeClient.for_credentials(self.watcher.current)
                self._bridge = await self._stack.enter_async_context(bridge)
            return self._bridge

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tools/call result: the bridge's JSON object, or an is_error result."""
        try:
            bridge = await self._current()
            result = await bridge.call(name, **arguments)
        except ToolCallError as exc:
            return tool_error(exc.to_dict())
        except BridgeUnavailable as exc:
            return tool_error(
                error_body("bridge_unavailable", f"the bridge is unreachable: {exc}", "retry in a little while")
            )
        except AuthRefused as exc:
            return tool_error(
                error_body(
                    "unauthenticated",
                    f"the bridge refused this {self.watcher.current.side}'s token: {exc}",
                    f"the credentials in {self.watcher.path} were rotated or revoked; install current ones",
                )
            )
        except ConfigError as exc:  # a rotated file whose CA cannot be loaded
            return tool_error(error_body("bad_credentials", exc.problem, exc.fix, exc.field))
        return tool_success(result)


class CallRunner:
    """Owns the bridge thread's event loop. `run()` blocks that thread in the loop;
    `submit`, `cancel` and `finish` are called from the front's thread."""

    def __init__(self, watcher: CredentialsWatcher, send: Send) -> None:
        self.loop = asyncio.new_event_loop()
        self._send = send
        self._stack = AsyncExitStack()
        self._forwarder = Forwarder(watcher, self._stack)
        self._tasks: dict[Any, asyncio.Task[None]] = {}  # touched on the loop's thread only

    def run(self) -> None:
        self.loop.run_forever()

    def submit(self, request_id: Any, name: str, arguments: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self._start, request_id, name, arguments)

    def cancel(self, request_id: Any) -> None:
        """notifications/cancelled: the call stops and gets no answer."""
        self.loop.call_soon_threadsafe(self._cancel, request_id)

    def finish(self, grace_s: float) -> None:
        """End of input: calls in flight get grace_s to answer, then the rest are cancelled,
        the bridge connections closed and the loop stopped."""
        future = asyncio.run_coroutine_threadsafe(self._drain(grace_s), self.loop)
        try:
            future.result(timeout=grace_s + 2.0)
        except Exception as exc:  # a slow close must not hold the exit
            log.debug("closing the bridge client: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _start(self, request_id: Any, name: str, arguments: dict[str, Any]) -> None:
        task = self.loop.create_task(self._call(request_id, name, arguments))
        self._tasks[request_id] = task
        task.add_done_callback(lambda done: self._forget(request_id, done))

    def _forget(self, request_id: Any, task: asyncio.Task[None]) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]

    def _cancel(self, request_id: Any) -> None:
        task = self._tasks.get(request_id)
        if task is not None:
            log.info("call %s cancelled by the client", request_id)
            task.cancel()

    async def _call(self, request_id: Any, name: str, arguments: dict[str, Any]) -> None:
        try:
            result = await self._forwarder.call(name, arguments)
        except asyncio.CancelledError:
            return  # cancelled by the client (no answer is due) or by shutdown
        except Exception as exc:  # a bug here must not kill the other calls
            log.exception("call %s (%s) failed inside the proxy", request_id, name)
            result = tool_error(error_body("proxy_error", f"{type(exc).__name__}: {exc}", "see the proxy's stderr"))
        self._send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _drain(self, grace_s: float) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        await self._stack.aclose()
