"""The bridge's data shapes: what the store returns and what the tools answer with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

Side = Literal["coordinator", "worker"]
# Whose inbox: a conversation's worker or coordinator side, or the lead's (the whole fleet).
Box = Literal["coordinator", "worker", "lead"]
ActionType = Literal["question", "info", "proposal", "blocked", "complete", "task_assignment"]
AgentStatus = Literal["working", "waiting", "blocked", "complete", "idle"]
TaskState = Literal["assigned", "in_progress", "done", "blocked"]
WorkerTaskState = Literal["in_progress", "done", "blocked"]
# A worker that cannot work: no heartbeat for too long, or none yet (the watchdog's alerts).
Unhealthy = Literal["silent", "never_seen"]
Health = Literal["healthy", Unhealthy]
AlertKind = Literal["silent", "recovered", "never_seen"]

OPEN_TASK_STATES: tuple[TaskState, ...] = ("assigned", "in_progress", "blocked")


def worker_sort_key(worker_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("2" before "10"), then other ids alphabetically."""
    if worker_id.isdigit():
        return (0, int(worker_id), "")
    return (1, 0, worker_id)


def health_of(heartbeat_age_s: float | None, silent_after_s: float) -> Health:
    if heartbeat_age_s is None:
        return "never_seen"
    return "silent" if heartbeat_age_s > silent_after_s else "healthy"


def is_expired(expires_at: float | None, now: float) -> bool:
    """A token or conversation is expired from its expires_at on (None: never expires). The
    stores' SQL keeps the same rule: live means expires_at > now."""
    return expires_at is not None and expires_at <= now


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch to ISO 8601 UTC, the format every result uses."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Conversation(BaseModel):
    conversation_id: str
    worker_id: str
    coordinator_role: str
    worker_role: str
    created_at: str
    expires_at: str
    revoked: bool = False


class ConversationCredentials(BaseModel):
    """Only create/rotate return tokens, and only to the admin who asked."""

    conversation_id: str
    worker_id: str
    worker_role: str
    coordinator_token: str
    worker_token: str
    created_at: str
    expires_at: str


class LeadInfo(BaseModel):
    lead_role: str
    created_at: str
    expires_at: str


class LeadCredentials(BaseModel):
    """Only rotate_lead returns the lead token, and only to the admin who asked."""

    lead_role: str
    lead_token: str
    created_at: str
    expires_at: str


class ConversationList(BaseModel):
    conversations: list[Conversation]
    lead: LeadInfo | None = Field(default=None, description="the live lead token's role and lifetime, if any")


class Revoked(BaseModel):
    conversation_id: str
    revoked_at: str


class Message(BaseModel):
    id: int
    conversation_id: str
    from_side: Side
    from_role: str
    from_worker: str | None = Field(description="the sending worker's id; null when the lead or a coordinator sent it")
    to_worker: str | None = Field(description="the receiving worker's id; null when it went to the lead")
    action_type: ActionType
    message: str
    files_involved: list[str]
    reply_to: int | None = Field(description="the id of the message this one answers, if any")
    created_at: str


class Sent(BaseModel):
    message_id: int = Field(description="the id of the (first) stored message")
    message_ids: list[int] = Field(description="one id per recipient, in the order of recipients")
    recipients: list[str] = Field(description='worker ids, or "lead"')
    conversation_id: str
    redactions: int = Field(description="secret-looking strings replaced before storage")
    created_at: str


class Inbox(BaseModel):
    messages: list[Message]
    acked_through: int = Field(description="pass this as ack_through next time to mark these read")
    unread: int = Field(description="unread messages after this batch")


class WaitResult(BaseModel):
    messages: list[Message]
    timed_out: bool
    # The MCP layer's encoded answer (tools.py). Readers woken by one message are handed the
    # same WaitResult, so they share one encoding too.
    _encoded: Any = PrivateAttr(default=None)


class StatusUpdate(BaseModel):
    status: AgentStatus
    updated_at: str


class PartnerStatus(BaseModel):
    partner_role: str
    status: str | None
    last_heartbeat_at: str | None
    heartbeat_age_s: float | None
    alive: bool


class HeartbeatAck(BaseModel):
    ok: bool = True
    unread: int
    server_time: str


class WorkerHealth(BaseModel):
    worker_id: str
    worker_role: str
    conversation_id: str
    status: str | None
    last_heartbeat_at: str | None
    heartbeat_age_s: float | None
    health: Health
    open_tasks: int


class FleetStatus(BaseModel):
    workers: list[WorkerHealth]
    silent_after_s: float
    generated_at: str


class Task(BaseModel):
    task_id: int
    worker_id: str
    conversation_id: str
    title: str
    detail: str
    state: TaskState
    note: str
    created_by: str
    created_at: str
    updated_at: str
    reassigned_from: str | None = None


class TaskList(BaseModel):
    tasks: list[Task]


class AlertRecorded(BaseModel):
    audit_id: int


class Updates(BaseModel):
    """GET /v1/updates: what the hook command shows the agent."""

    messages: list[Message]
    last_id: int = Field(description="the newest message id in the caller's inbox (0 when empty)")
    unread: int
    acked_through: int
    open_tasks: list[Task]
    server_time: str
