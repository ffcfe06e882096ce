"""`s2-bridge mcp-proxy`: a local stdio MCP server that forwards to the bridge.

Any MCP client that speaks stdio can reach the bridge through it while the token stays in
the 0600 credentials file (never on a command line or in the agent's config). The tools are
mirrored from the bridge itself (names, descriptions and schemas stay in step with the
server), limited to the ones the credentials' side may use. Bridge errors come back as
is_error results carrying the bridge's `{"error": {...}}` JSON. Only MCP frames go to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from s2_bridge import exitcodes
from s2_bridge.backoff import Backoff
from s2_bridge.client import AuthRefused, BridgeClient, BridgeUnavailable, ToolCallError
from s2_bridge.credentials import CredentialsWatcher
from s2_bridge.daemon import run_until_signal

log = logging.getLogger("s2_bridge.proxy")

WORKER_TOOLS = (
    "send_to_partner",
    "check_messages",
    "wait_for_messages",
    "update_my_status",
    "check_partner_status",
    "heartbeat",
    "list_tasks",
    "update_task",
)
# The orchestrator's agent holds a coordinator token: it assigns tasks and watches its worker.
COORDINATOR_TOOLS = (*(t for t in WORKER_TOOLS if t != "update_task"), "assign_task", "fleet_status")
TOOL_LIST_ATTEMPTS = 4


def error_result(code: str, message: str, fix: str | None = None, field: str | None = None) -> types.CallToolResult:
    return _error_payload(ToolCallError(code, message, field=field, fix=fix).to_dict())


def _error_payload(body: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(body))], is_error=True)


class BridgeProxy:
    """Forwards tools/list and tools/call to the bridge with the credentials' token."""

    def __init__(self, watcher: CredentialsWatcher, exit_stack: AsyncExitStack) -> None:
        self.watcher = watcher
        self._exit_stack = exit_stack
        self._bridge: BridgeClient | None = None
        self._tools: list[types.Tool] | None = None
        self._lock = anyio.Lock()

    @property
    def allowed(self) -> tuple[str, ...]:
        return WORKER_TOOLS if self.watcher.current.side == "worker" else COORDINATOR_TOOLS

    async def bridge(self) -> BridgeClient:
        """The client for the current credentials; a rotated file takes effect on the next call."""
        async with self._lock:
            if self.watcher.refresh(log):
                self._bridge = None  # the old client closes with the exit stack
            if self._bridge is None:
                client = BridgeClient.for_credentials(self.watcher.current)
                self._bridge = await self._exit_stack.enter_async_context(client)
            return self._bridge

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if self._tools is None:
            self._tools = await self._fetch_tools()
        return types.ListToolsResult(tools=self._tools)

    async def _fetch_tools(self) -> list[types.Tool]:
        """The bridge's own tool definitions, filtered; a short retry covers a bridge restart."""
        backoff = Backoff(base=0.5, cap=4.0)
        problem = ""
        for attempt in range(TOOL_LIST_ATTEMPTS):
            try:
                tools = await (await self.bridge()).list_tools()
            except (BridgeUnavailable, ToolCallError) as exc:
                problem = f"the bridge is unreachable: {exc}"
            except AuthRefused as exc:
                raise MCPError(types.INTERNAL_ERROR, f"the bridge refused the token: {exc}") from None
            else:
                allowed = self.allowed
                mirrored = [tool for tool in tools if tool.name in allowed]
                log.info("mirroring %d bridge tools: %s", len(mirrored), ", ".join(t.name for t in mirrored))
                return mirrored
            if attempt + 1 < TOOL_LIST_ATTEMPTS:
                await anyio.sleep(backoff.next_delay())
        log.warning("cannot list the bridge's tools: %s", problem)
        raise MCPError(types.INTERNAL_ERROR, f"{problem}; retry later")

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name = params.name
        if name not in self.allowed:
            return error_result(
                "unknown_tool", f"{name!r} is not available here", f"use one of: {', '.join(self.allowed)}", "name"
            )
        try:
            bridge = await self.bridge()
            result = await bridge.call(name, **(params.arguments or {}))
        except ToolCallError as exc:
            return _error_payload(exc.to_dict())
        except BridgeUnavailable as exc:
            return error_result("bridge_unavailable", f"the bridge is unreachable: {exc}", "retry in a little while")
        except AuthRefused as exc:
            return error_result(
                "unauthenticated",
                f"the bridge refused this worker's token: {exc}",
                f"the credentials in {self.watcher.path} were rotated or revoked; install current ones",
            )
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(result))], structured_content=result
        )


async def serve(watcher: CredentialsWatcher) -> int:
    async with AsyncExitStack() as stack:
        proxy = BridgeProxy(watcher, stack)
        server: Server[Any] = Server(
            "s2-bridge-proxy",
            instructions="Forwards to the S2 fleet bridge with this machine's worker credentials.",
            on_list_tools=proxy.list_tools,
            on_call_tool=proxy.call_tool,
        )
        log.info(
            "proxying stdio to %s as the %s of conversation %s",
            watcher.current.bridge_url,
            watcher.current.side,
            watcher.current.conversation_id,
        )
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    watcher = CredentialsWatcher(args.credentials)  # a bad first file: ConfigError, exit 78
    BridgeClient.for_credentials(watcher.current)  # so is a CA file that cannot be loaded: say so before serving
    return run_until_signal(lambda: serve(watcher), log)
