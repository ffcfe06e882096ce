"""MCP tools: thin adapters from the MCP SDK to BridgeService. The caller comes from the
authentication middleware (scope state), never from a tool argument."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from s2_bridge.caller import Caller
from s2_bridge.errors import BridgeError
from s2_bridge.models import (
    ActionType,
    AgentStatus,
    AlertKind,
    AlertRecorded,
    ConversationCredentials,
    ConversationList,
    FleetStatus,
    HeartbeatAck,
    Inbox,
    PartnerStatus,
    Revoked,
    Sent,
    StatusUpdate,
    Task,
    TaskList,
    TaskState,
    WaitResult,
    WorkerTaskState,
)
from s2_bridge.service import BridgeService

CALLER_KEY = "s2_caller"
INSTRUCTIONS = (
    "S2 fleet bridge. Your bearer token decides who you are: a worker, the coordinator of one "
    "conversation, or the admin. Read messages with check_messages and pass ack_through=<id of "
    "the last message you handled> on the next call to mark them read; wait_for_messages blocks "
    "until something arrives. Errors come back as JSON {error: {code, field, message, fix}}."
)

ResultT = TypeVar("ResultT")


def caller_of(ctx: Context) -> Caller:
    request = ctx.request_context.request
    caller = getattr(request, "scope", {}).get("state", {}).get(CALLER_KEY)
    if not isinstance(caller, Caller):
        # Only reachable if the app is mounted without the auth middleware.
        raise BridgeError("unauthenticated", "no authenticated caller", fix="send Authorization: Bearer TOKEN")
    return caller


def error_result(error: BridgeError) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=error.to_json())], is_error=True)


def structured_errors(fn: Callable[..., Awaitable[ResultT]]) -> Callable[..., Awaitable[ResultT]]:
    """Turn a BridgeError into an is_error result whose text is the error JSON."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except BridgeError as exc:
            return error_result(exc)

    return wrapper


_VALIDATION_RE = re.compile(r"validation errors? for \w+\n(?P<field>[^\n]+)\n\s+(?P<message>[^\n\[]+)")


class ArgumentErrors:
    """SDK middleware: the SDK reports bad argument types as pydantic's free text; rewrite
    those results into the same error JSON the tools use, naming the field."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        # By here the SDK has shaped the result for the wire: a dict in camelCase.
        if ctx.method != "tools/call" or not isinstance(result, dict) or not result.get("isError"):
            return result
        content = result.get("content") or [{}]
        text = content[0].get("text", "") if isinstance(content[0], dict) else ""
        if text.startswith("{"):
            return result
        match = _VALIDATION_RE.search(text)
        if match is None:
            error = BridgeError("tool_error", text or "the tool failed")
        else:
            field = match.group("field").strip().split(".")[0]
            message = f"{field}: {match.group('message').strip()}"
            error = BridgeError("invalid_argument", message, field=field, fix="see the tool's input schema")
        return {**result, "content": [{"type": "text", "text": error.to_json()}]}


def build_mcp(service: BridgeService) -> MCPServer:
    mcp = MCPServer("s2-bridge", instructions=INSTRUCTIONS, middleware=[ArgumentErrors()])

    def tool(fn: Callable[..., Awaitable[Any]]) -> None:
        mcp.add_tool(structured_errors(fn), name=fn.__name__, description=(fn.__doc__ or "").strip())

    async def create_conversation(
        my_role: Annotated[str, Field(description="the coordinator's role, 3-100 characters")],
        partner_role: Annotated[str, Field(description="the worker's role, 3-100 characters")],
        ctx: Context,
        worker_id: Annotated[str | None, Field(description="worker id; defaults to partner_role")] = None,
        ttl_s: Annotated[int | None, Field(description="lifetime in seconds; default from config")] = None,
    ) -> ConversationCredentials:
        """Admin: create a conversation between the coordinator and one worker; returns both tokens."""
        return service.create_conversation(caller_of(ctx), my_role, partner_role, worker_id, ttl_s)

    async def list_conversations(ctx: Context, include_revoked: bool = False) -> ConversationList:
        """Admin: list conversations (metadata only, never tokens)."""
        return service.list_conversations(caller_of(ctx), include_revoked)

    async def rotate_conversation(
        ctx: Context, conversation_id: str, ttl_s: int | None = None
    ) -> ConversationCredentials:
        """Admin: issue new tokens for a conversation (old ones are refused from now on); messages and tasks stay."""
        return service.rotate_conversation(caller_of(ctx), conversation_id, ttl_s)

    async def revoke_conversation(ctx: Context, conversation_id: str) -> Revoked:
        """Admin: revoke a conversation and both of its tokens."""
        return service.revoke_conversation(caller_of(ctx), conversation_id)

    async def send_to_partner(
        message: Annotated[str, Field(description="the text, at most 50,000 characters; secrets are redacted")],
        ctx: Context,
        action_type: ActionType = "info",
        files_involved: Annotated[list[str] | None, Field(description="up to 20 file paths")] = None,
    ) -> Sent:
        """Send a message to the other side of your conversation."""
        return service.send_to_partner(caller_of(ctx), message, action_type, files_involved or [])

    async def check_messages(
        ctx: Context,
        ack_through: Annotated[
            int | None, Field(description="id of the last message you handled: marks it and older ones read")
        ] = None,
        limit: Annotated[int, Field(description="at most this many messages, 1-200")] = 50,
    ) -> Inbox:
        """Return your unread messages, oldest first. Nothing is marked read until you pass ack_through."""
        return service.check_messages(caller_of(ctx), ack_through, limit)

    async def wait_for_messages(
        ctx: Context,
        after_id: Annotated[int | None, Field(description="return messages newer than this id")] = None,
        timeout_s: Annotated[float, Field(description="wait at most this long, 0-60 s")] = 25.0,
    ) -> WaitResult:
        """Block until a message newer than after_id (default: your read cursor) arrives, or timeout."""
        return await service.wait_for_messages(caller_of(ctx), after_id, timeout_s)

    async def update_my_status(status: AgentStatus, ctx: Context) -> StatusUpdate:
        """Set your status (working, waiting, blocked, complete, idle); counts as a heartbeat."""
        return service.update_my_status(caller_of(ctx), status)

    async def check_partner_status(ctx: Context) -> PartnerStatus:
        """Your partner's status and how long ago it last sent a heartbeat."""
        return service.check_partner_status(caller_of(ctx))

    async def heartbeat(ctx: Context, status: AgentStatus | None = None) -> HeartbeatAck:
        """Say you are alive (optionally with a status); returns your unread count."""
        return service.heartbeat(caller_of(ctx), status)

    async def fleet_status(ctx: Context) -> FleetStatus:
        """Admin or coordinator: every worker's role, status, heartbeat age, health and open tasks."""
        return service.fleet_status(caller_of(ctx))

    async def assign_task(
        title: Annotated[str, Field(description="1-200 characters")],
        ctx: Context,
        detail: str = "",
        worker_id: Annotated[str | None, Field(description="admin: required; coordinator: your worker")] = None,
    ) -> Task:
        """Coordinator or admin: assign a task to a worker, who is told by message."""
        return service.assign_task(caller_of(ctx), title, detail, worker_id)

    async def list_tasks(ctx: Context, state: TaskState | None = None, worker_id: str | None = None) -> TaskList:
        """List the tasks your token can see, optionally by state or worker."""
        return service.list_tasks(caller_of(ctx), state, worker_id)

    async def update_task(ctx: Context, task_id: int, state: WorkerTaskState, note: str = "") -> Task:
        """Worker (or admin): set a task's state to in_progress, done or blocked."""
        return service.update_task(caller_of(ctx), task_id, state, note)

    async def reassign_task(ctx: Context, task_id: int, to_worker_id: str, reason: str = "") -> Task:
        """Admin: move an open task to another worker, who is told by message."""
        return service.reassign_task(caller_of(ctx), task_id, to_worker_id, reason)

    async def record_alert(ctx: Context, worker_id: str, kind: AlertKind, detail: str = "") -> AlertRecorded:
        """Admin (the watchdog): record a health alert in the audit log."""
        return service.record_alert(caller_of(ctx), worker_id, kind, detail)

    for fn in (
        create_conversation,
        list_conversations,
        rotate_conversation,
        revoke_conversation,
        send_to_partner,
        check_messages,
        wait_for_messages,
        update_my_status,
        check_partner_status,
        heartbeat,
        fleet_status,
        assign_task,
        list_tasks,
        update_task,
        reassign_task,
        record_alert,
    ):
        tool(fn)
    return mcp
