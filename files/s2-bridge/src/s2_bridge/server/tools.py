"""MCP tools: thin adapters from the MCP SDK to BridgeService. The caller comes from the
authentication middleware (scope state), never from a tool argument."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from s2_bridge import __version__
from s2_bridge.contract.errors import BridgeError, forbidden
from s2_bridge.contract.models import (
    ActionType,
    AgentStatus,
    AlertKind,
    AlertRecorded,
    ConversationCredentials,
    ConversationList,
    FleetStatus,
    HeartbeatAck,
    Inbox,
    LeadCredentials,
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
from s2_bridge.contract.permissions import may_call, tools_for
from s2_bridge.server.caller import Caller
from s2_bridge.server.messaging import WAIT_DEFAULT_S, WAIT_MAX_S
from s2_bridge.server.service import DEFAULT_LEAD_ROLE, BridgeService
from s2_bridge.server.service_core import check_edges

CALLER_KEY = "s2_caller"
INSTRUCTIONS = (
    "S2 fleet bridge: messages, tasks and presence for a fleet of coding agents. Your token decides "
    "who you are: a worker (your own inbox and tasks), the lead (the orchestrator's agent: every "
    "worker's messages, send, broadcast, assign) or the admin (provisioning). tools/list shows only "
    "what you may call. Read with check_messages and pass ack_through=<id of the last message you "
    "handled> next time to mark messages read; wait_for_messages blocks until something arrives. "
    "Errors are JSON {error: {code, field, message, fix}}: do what `fix` says."
)
ResultT = TypeVar("ResultT")


def _caller_of_request(request: Any) -> Caller | None:
    caller = getattr(request, "scope", {}).get("state", {}).get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else None


def caller_of(ctx: Context, tool: str) -> Caller:
    """The authenticated caller, once it is known to be allowed to call `tool`."""
    caller = _caller_of_request(ctx.request_context.request)
    if caller is None:
        # Only reachable if the app is mounted without the auth middleware.
        raise BridgeError("unauthenticated", "no authenticated caller", fix="send Authorization: Bearer TOKEN")
    if not may_call(caller.kind, tool):
        raise forbidden(
            f"{tool} is not available to the {caller.kind} token",
            f"the {caller.kind} token may call: {', '.join(tools_for(caller.kind))}",
        )
    return caller


def error_result(error: BridgeError) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=error.to_json())], is_error=True)


def encoded_once(result: WaitResult) -> CallToolResult:
    """The tool result for `result`, built once however many readers return the same object (one
    message woke them all): what the SDK would build from the model, text and structured."""
    if result._encoded is None:
        result._encoded = CallToolResult(
            content=[TextContent(type="text", text=result.model_dump_json(indent=2))],
            structured_content=result.model_dump(mode="json", by_alias=True),
        )
    return result._encoded


def structured_errors(
    fn: Callable[..., Awaitable[ResultT]], service: BridgeService | None = None
) -> Callable[..., Awaitable[ResultT]]:
    """Turn a BridgeError into an is_error result whose text is the error JSON. Arguments the
    store cannot hold (an integer beyond 64 bits, a lone surrogate) are refused first, naming
    the field; a refusal for lack of permission is audited ("denied", target the tool)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            for name, value in kwargs.items():
                if not isinstance(value, Context):
                    check_edges(name, value)
            return await fn(*args, **kwargs)
        except BridgeError as exc:
            if exc.code == "forbidden" and service is not None:
                _audit_denied(service, fn.__name__, kwargs, exc)
            return error_result(exc)

    return wrapper


def _audit_denied(service: BridgeService, tool: str, kwargs: dict[str, Any], exc: BridgeError) -> None:
    ctx = next((value for value in kwargs.values() if isinstance(value, Context)), None)
    caller = None if ctx is None else _caller_of_request(ctx.request_context.request)
    if caller is not None:
        service.audit_denied(caller, tool, str(exc))


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


class ToolsForCaller:
    """SDK middleware: tools/list shows a caller only the tools its token may call."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method != "tools/list" or not isinstance(result, dict):
            return result
        caller = _caller_of_request(ctx.request)
        kind = caller.kind if caller is not None else ""
        return {**result, "tools": [t for t in result.get("tools", []) if may_call(kind, t.get("name", ""))]}


# Argument types and their descriptions, shared by the tools that take them.
To = Annotated[
    str | list[str] | None,
    Field(
        description=(
            "who gets it: omit for your partner (a worker's partner is the lead; with reply_to, the sender of "
            'that message); a worker id or role ("3", "worker-3-tests"); "lead"; the lead only: "all" or a '
            "list of ids/roles (one copy each)"
        ),
        examples=["worker-1-backend", "3", "lead", "all", ["1", "worker-6-review"]],
    ),
]
WorkerName = Annotated[
    str,
    Field(
        description='a worker id, a role name, or "any" for the healthy worker with the fewest open tasks',
        examples=["3", "worker-3-tests", "any"],
    ),
]
TaskId = Annotated[int, Field(description="the task's id (task_id in list_tasks)", examples=[12])]
Note = Annotated[str, Field(description="free text, at most 2,000 characters", examples=["tests pass on main"])]


def build_mcp(service: BridgeService) -> MCPServer:
    mcp = MCPServer(
        "s2-bridge", version=__version__, instructions=INSTRUCTIONS, middleware=[ToolsForCaller(), ArgumentErrors()]
    )

    def tool(fn: Callable[..., Awaitable[Any]]) -> None:
        mcp.add_tool(structured_errors(fn, service), name=fn.__name__, description=inspect.cleandoc(fn.__doc__ or ""))

    async def create_conversation(
        my_role: Annotated[str, Field(description="the coordinator's role, 3-100 characters")],
        partner_role: Annotated[str, Field(description="the worker's role, 3-100 characters")],
        ctx: Context,
        worker_id: Annotated[str | None, Field(description="worker id; defaults to partner_role")] = None,
        ttl_s: Annotated[int | None, Field(description="lifetime in seconds; default from config")] = None,
    ) -> ConversationCredentials:
        """Admin: create a conversation between the orchestrator and one worker. Returns both tokens."""
        return service.create_conversation(
            caller_of(ctx, "create_conversation"), my_role, partner_role, worker_id, ttl_s
        )

    async def list_conversations(ctx: Context, include_revoked: bool = False) -> ConversationList:
        """Admin: list conversations and the live lead token's lifetime (metadata only, never tokens)."""
        return service.list_conversations(caller_of(ctx, "list_conversations"), include_revoked)

    async def rotate_conversation(
        ctx: Context, conversation_id: str, ttl_s: int | None = None
    ) -> ConversationCredentials:
        """Admin: issue new tokens for a conversation (old ones are refused from now on); messages and tasks stay."""
        return service.rotate_conversation(caller_of(ctx, "rotate_conversation"), conversation_id, ttl_s)

    async def revoke_conversation(ctx: Context, conversation_id: str) -> Revoked:
        """Admin: revoke a conversation and both of its tokens."""
        return service.revoke_conversation(caller_of(ctx, "revoke_conversation"), conversation_id)

    async def rotate_lead(
        ctx: Context,
        lead_role: Annotated[str, Field(description="the lead's role name, 3-100 characters")] = DEFAULT_LEAD_ROLE,
        ttl_s: Annotated[int | None, Field(description="lifetime in seconds; default from config")] = None,
    ) -> LeadCredentials:
        """Admin: issue the fleet's lead token (the orchestrator's agent). Every earlier lead token is refused."""
        return service.rotate_lead(caller_of(ctx, "rotate_lead"), lead_role, ttl_s)

    async def send_to_partner(
        message: Annotated[
            str,
            Field(
                description="the text, at most 50,000 characters; secrets are redacted before storage",
                examples=["The /users API now returns 404 for unknown ids; please update the client."],
            ),
        ],
        ctx: Context,
        to: To = None,
        reply_to: Annotated[
            int | None, Field(description="the id of the message you answer; the answer names it", examples=[42])
        ] = None,
        action_type: Annotated[
            ActionType, Field(description="what kind of message: question, info, proposal, blocked or complete")
        ] = "info",
        files_involved: Annotated[
            list[str] | None, Field(description="up to 20 file paths the message is about", examples=[["api/users.py"]])
        ] = None,
    ) -> Sent:
        """Send a message: to your partner, to a worker by id or role, to the lead, or (the lead) to everyone.
        Use it to report progress, ask, answer (reply_to) or hand over work. Returns the stored message ids
        and the recipients."""
        caller, files = caller_of(ctx, "send_to_partner"), files_involved or []
        redacted = await service.redact_off_loop(caller, message, files)
        return service.send_to_partner(caller, message, action_type, files, to, reply_to, redacted=redacted)

    async def check_messages(
        ctx: Context,
        ack_through: Annotated[
            int | None,
            Field(description="id of the last message you handled: marks it and older ones read", examples=[42]),
        ] = None,
        limit: Annotated[int, Field(description="at most this many messages, 1-200")] = 50,
    ) -> Inbox:
        """Read your inbox: unread messages, oldest first (the lead: every worker's messages, each naming its
        worker). Nothing is marked read until you pass ack_through, so call it again with the last id you
        handled. Returns messages, acked_through and how many are still unread."""
        return service.check_messages(caller_of(ctx, "check_messages"), ack_through, limit)

    async def wait_for_messages(
        ctx: Context,
        after_id: Annotated[
            int | None, Field(description="return messages newer than this id (default: your read cursor)")
        ] = None,
        timeout_s: Annotated[
            float, Field(description=f"wait at most this long, 0-{WAIT_MAX_S:g} s", examples=[20])
        ] = WAIT_DEFAULT_S,
    ) -> Annotated[CallToolResult, WaitResult]:
        """Block until a new message arrives (the lead: from any worker) or the timeout passes. Use it when
        you are idle and waiting for work or an answer. Returns the new messages (not marked read) and
        timed_out."""
        return encoded_once(await service.wait_for_messages(caller_of(ctx, "wait_for_messages"), after_id, timeout_s))

    async def update_my_status(
        status: Annotated[AgentStatus, Field(description="working, waiting, blocked, complete or idle")], ctx: Context
    ) -> StatusUpdate:
        """Tell the fleet what you are doing; shown in fleet_status and to your partner. Counts as a heartbeat."""
        return service.update_my_status(caller_of(ctx, "update_my_status"), status)

    async def check_partner_status(ctx: Context) -> PartnerStatus:
        """Is your partner there? A worker's partner is the orchestrator (the lead or its coordinator).
        Returns its role, status, heartbeat age and alive."""
        return service.check_partner_status(caller_of(ctx, "check_partner_status"))

    async def heartbeat(ctx: Context, status: AgentStatus | None = None) -> HeartbeatAck:
        """Say you are alive (optionally with a status); returns your unread count. The keepalive does this."""
        return service.heartbeat(caller_of(ctx, "heartbeat"), status)

    async def fleet_status(ctx: Context) -> FleetStatus:
        """The fleet at a glance: every worker's id, role, status, heartbeat age, health (healthy, silent,
        never_seen) and open task count. Use it before assigning work."""
        return service.fleet_status(caller_of(ctx, "fleet_status"))

    async def assign_task(
        title: Annotated[str, Field(description="what to do, 1-200 characters", examples=["Add tests for /users"])],
        ctx: Context,
        worker_id: Annotated[
            str | None,
            Field(
                description='a worker id, a role, or "any" (the healthy worker with the fewest open tasks); '
                "a coordinator token may omit it (its own worker)",
                examples=["3", "worker-3-tests", "any"],
            ),
        ] = None,
        detail: Annotated[str, Field(description="the details, at most 10,000 characters")] = "",
    ) -> Task:
        """Assign a task to a worker, who is told by message at once. Returns the task (task_id, worker_id,
        state assigned)."""
        return service.assign_task(caller_of(ctx, "assign_task"), title, detail, worker_id)

    async def list_tasks(
        ctx: Context,
        state: Annotated[TaskState | None, Field(description="only tasks in this state")] = None,
        worker_id: Annotated[str | None, Field(description="only this worker's tasks (the lead, the admin)")] = None,
    ) -> TaskList:
        """List tasks: a worker sees its own, the lead every worker's. Returns tasks with state, note and
        reassignment history (reassigned_from)."""
        return service.list_tasks(caller_of(ctx, "list_tasks"), state, worker_id)

    async def update_task(
        ctx: Context,
        task_id: TaskId,
        state: Annotated[WorkerTaskState, Field(description="in_progress, done or blocked")],
        note: Note = "",
    ) -> Task:
        """Worker: report progress on one of your tasks (in_progress, done, blocked) with a short note."""
        return service.update_task(caller_of(ctx, "update_task"), task_id, state, note)

    async def reassign_task(ctx: Context, task_id: TaskId, to_worker_id: WorkerName, reason: Note = "") -> Task:
        """Lead: move an open task to another worker (or "any"), who is told by message. Returns the task."""
        return service.reassign_task(caller_of(ctx, "reassign_task"), task_id, to_worker_id, reason)

    async def record_alert(ctx: Context, worker_id: str, kind: AlertKind, detail: str = "") -> AlertRecorded:
        """Admin (the watchdog): record a health alert in the audit log."""
        return service.record_alert(caller_of(ctx, "record_alert"), worker_id, kind, detail)

    for fn in (
        create_conversation,
        list_conversations,
        rotate_conversation,
        revoke_conversation,
        rotate_lead,
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
