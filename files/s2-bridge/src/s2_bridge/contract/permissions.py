"""Which identity may call which tool: the one table that the bridge's tools/list, its tool
calls and the stdio proxy's tool list all read. Plain data, no imports beyond typing, so the
proxy can use it without loading the MCP SDK.

The service still checks the finer rules (a worker's own task, a coordinator's own worker);
this table is the first gate and what a caller is shown.
"""

from __future__ import annotations

from typing import Final

from s2_bridge.contract.tokens import TokenKind

ADMIN: Final = frozenset({"admin"})
AGENTS: Final = frozenset({"coordinator", "worker", "lead"})

TOOL_CALLERS: Final[dict[str, frozenset[TokenKind]]] = {
    # provisioning: the admin only (never an agent)
    "create_conversation": ADMIN,
    "list_conversations": ADMIN,
    "rotate_conversation": ADMIN,
    "revoke_conversation": ADMIN,
    "rotate_lead": ADMIN,
    "record_alert": ADMIN,
    # messages and presence: every agent identity
    "send_to_partner": AGENTS,
    "check_messages": AGENTS,
    "wait_for_messages": AGENTS,
    "update_my_status": AGENTS,
    "heartbeat": AGENTS,
    "check_partner_status": frozenset({"coordinator", "worker"}),
    # the fleet and its tasks
    "fleet_status": frozenset({"admin", "coordinator", "lead"}),
    "assign_task": frozenset({"admin", "coordinator", "lead"}),
    "list_tasks": frozenset({"admin", "coordinator", "worker", "lead"}),
    "update_task": frozenset({"admin", "worker"}),
    "reassign_task": frozenset({"admin", "lead"}),
}


def may_call(kind: str, tool: str) -> bool:
    return kind in TOOL_CALLERS.get(tool, frozenset())


def tools_for(kind: str) -> tuple[str, ...]:
    """The tools this identity may call, in the table's order."""
    return tuple(name for name, kinds in TOOL_CALLERS.items() if kind in kinds)
