"""The storage interface. SQLite implements it; a PostgreSQL store can replace it for a fleet
that outgrows one bridge host. Methods are synchronous: a SQLite write costs 12-30 us, far
less than a hop to a thread, so the server calls them straight from the event loop.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from s2_bridge.models import (
    Box,
    Conversation,
    Message,
    Side,
    Task,
    TaskState,
)
from s2_bridge.tokens import TokenKind


@dataclass(frozen=True)
class TokenRecord:
    kind: TokenKind
    conversation_id: str | None
    expires_at: float | None
    revoked: bool
    label: str | None = None  # the lead's role


@dataclass(frozen=True)
class LeadRecord:
    lead_role: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class MessageDraft:
    """A validated, redacted message for one inbox: `conversation_id` + `to_side`."""

    conversation_id: str
    to_side: Side
    from_side: Side
    from_role: str
    from_worker: str | None
    to_worker: str | None
    action_type: str
    body: str
    files: list[str]
    reply_to: int | None


@dataclass(frozen=True)
class Presence:
    status: str | None
    status_at: float | None
    last_heartbeat: float | None


@dataclass(frozen=True)
class FleetRow:
    conversation: Conversation
    worker_presence: Presence
    open_tasks: int


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    detail: str
    remote: str


class StoreError(Exception):
    """A request the store cannot satisfy as asked (unknown id, conflict)."""

    def __init__(self, code: str, field: str, message: str) -> None:
        self.code = code
        self.field = field
        super().__init__(message)


class Store(Protocol):
    def close(self) -> None: ...

    # One transaction around a change and its audit row: a crash between them (kill -9) must
    # not leave a message, task or token change that the audit table does not show. Nested
    # use joins the outer block.
    def atomic(self) -> AbstractContextManager[None]: ...

    # tokens
    def replace_admin_token(self, token_hash: str, now: float) -> None: ...
    def lookup_token(self, token_hash: str) -> TokenRecord | None: ...
    # a new lead token; every earlier lead token is revoked in the same transaction
    def replace_lead_token(self, token_hash: str, *, lead_role: str, now: float, expires_at: float) -> None: ...
    def live_lead(self, now: float) -> LeadRecord | None: ...

    # conversations
    def create_conversation(
        self,
        *,
        worker_id: str,
        coordinator_role: str,
        worker_role: str,
        coordinator_hash: str,
        worker_hash: str,
        now: float,
        expires_at: float,
    ) -> Conversation: ...
    def rotate_conversation(
        self, conversation_id: str, *, coordinator_hash: str, worker_hash: str, now: float, expires_at: float
    ) -> Conversation: ...
    def revoke_conversation(self, conversation_id: str, now: float) -> Conversation: ...
    def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    def list_conversations(self, include_revoked: bool) -> list[Conversation]: ...
    def live_conversation_of_worker(self, worker_id: str) -> Conversation | None: ...

    # messages; `side` names an inbox: a conversation's worker or coordinator side, or "lead"
    # (every message a worker sent; conversation_id is then ignored)
    def add_message(self, draft: MessageDraft, now: float) -> int: ...
    def get_message(self, message_id: int) -> Message | None: ...
    def messages_for(self, conversation_id: str, side: Box, after_id: int, limit: int) -> list[Message]: ...
    def count_for(self, conversation_id: str, side: Box, after_id: int) -> int: ...
    def newest_id(self, conversation_id: str, side: Box) -> int: ...
    def unread_count(self, conversation_id: str, side: Box) -> int: ...
    def read_cursor(self, conversation_id: str, side: Box) -> int: ...
    def advance_cursor(self, conversation_id: str, side: Box, ack_through: int) -> int: ...

    # presence
    def heartbeat(self, conversation_id: str, side: Box, now: float, status: str | None) -> None: ...
    def presence(self, conversation_id: str, side: Box) -> Presence: ...
    def fleet(self) -> list[FleetRow]: ...

    # tasks
    def create_task(
        self, *, worker_id: str, conversation_id: str, title: str, detail: str, created_by: str, now: float
    ) -> Task: ...
    def get_task(self, task_id: int) -> Task | None: ...
    def list_tasks(
        self, *, worker_id: str | None, conversation_id: str | None, states: tuple[TaskState, ...] | None
    ) -> list[Task]: ...
    def update_task(self, task_id: int, *, state: TaskState, note: str, now: float) -> Task: ...
    def move_task(self, task_id: int, *, to_worker_id: str, to_conversation_id: str, now: float) -> Task: ...

    # audit
    def audit(self, *, actor: str, action: str, target: str, detail: str, remote: str, now: float) -> int: ...
    def audit_log(self, limit: int = 1000) -> list[AuditEntry]: ...
