"""The storage interface. SQLite implements it; a PostgreSQL store can replace it for a fleet
that outgrows one bridge host. Methods are synchronous: a SQLite write costs 12-30 us, far
less than a hop to a thread, so the server calls them straight from the event loop.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from s2_bridge.contract.models import (
    Box,
    Conversation,
    Message,
    Side,
    Task,
    TaskState,
)
from s2_bridge.contract.tokens import TokenKind


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


# Who a stored message counts against (`[limits] stored_bytes_per_sender`): one key per sender.
LEAD_SENDER = "lead"
ADMIN_SENDER = "admin"  # the operator's own task assignments: counted, never refused


def worker_sender(worker_id: str) -> str:
    """A worker, by worker id: its quota follows it across rotations and new conversations."""
    return f"worker:{worker_id}"


def coordinator_sender(conversation_id: str) -> str:
    """A conversation's coordinator side, by conversation id."""
    return f"coordinator:{conversation_id}"


def stored_size(body: str, files: list[str]) -> int:
    """What one stored copy of a message counts against its sender's quota: the UTF-8 bytes of
    the body and of the files list as stored (JSON). Every store counts exactly this."""
    return len(body.encode("utf-8")) + len(json.dumps(files).encode("utf-8"))


@dataclass(frozen=True)
class MessageDraft:
    """A validated, redacted message for one inbox: `conversation_id` + `to_side`, stored on
    behalf of `sender` (a key from worker_sender, coordinator_sender, LEAD_SENDER, ADMIN_SENDER)."""

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
    sender: str


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
    expired: bool = False  # past expires_at, not revoked: listed, never live (its tokens are refused)


@dataclass(frozen=True)
class Revocation:
    conversation: Conversation
    revoked_at: float  # the first revocation's time: revoking again changes nothing
    changed: bool  # False when the conversation was revoked already (nothing was written)


@dataclass(frozen=True)
class SweepCutoffs:
    """Retention as absolute times (seconds since the epoch): what is older goes."""

    read_before: float  # a message its recipients have read, created before this
    unread_before: float  # any message, read or not, created before this
    audit_before: float  # an audit row written before this


@dataclass(frozen=True)
class SweepMark:
    """Where the next step of a sweep starts: its phase ("unread", "read", "audit") and, in the
    read phase, the (created_at, id) of the last message examined."""

    phase: str = "unread"
    created_at: float = float("-inf")
    message_id: int = 0


@dataclass(frozen=True)
class SweepStep:
    """One step of a sweep, one transaction: what it deleted, how many rows it looked at, and
    where the next step starts (None: the sweep is complete)."""

    messages: int
    bytes: int
    audit_rows: int
    examined: int
    resume: SweepMark | None


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
    # revoking a revoked conversation writes nothing and answers the first revocation's time
    def revoke_conversation(self, conversation_id: str, now: float) -> Revocation: ...
    def get_conversation(self, conversation_id: str) -> Conversation | None: ...
    def list_conversations(self, include_revoked: bool) -> list[Conversation]: ...
    # live: not revoked and expires_at > now (models.is_expired is the same rule)
    def live_conversation_of_worker(self, worker_id: str, now: float) -> Conversation | None: ...
    # not revoked but past expires_at: its tokens are refused until it is rotated
    def expired_conversation_of_worker(self, worker_id: str, now: float) -> Conversation | None: ...

    # messages; `side` names an inbox: a conversation's worker or coordinator side, or "lead"
    # (every message a worker sent; conversation_id is then ignored). Adding and deleting a
    # message moves its sender's stored-bytes counter (stored_size) in the same transaction.
    def add_message(self, draft: MessageDraft, now: float) -> int: ...
    def stored_bytes(self, sender: str) -> int: ...
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
    # every conversation that is not revoked; an expired one is listed with expired=True
    def fleet(self, now: float) -> list[FleetRow]: ...

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

    # retention: one step of a sweep per call, in one transaction, looking at `limit` rows at
    # most. A message goes when created before cutoffs.unread_before, or before
    # cutoffs.read_before and read: its id is at most its inbox's read cursor and, for a message
    # a worker sent, at most the lead's cursor too (the lead's inbox holds every such message).
    # Audit rows go when written before cutoffs.audit_before.
    def sweep(self, cutoffs: SweepCutoffs, limit: int, mark: SweepMark | None = None) -> SweepStep: ...
    # give back up to `max_pages` of the space deleted rows left; returns how much is still to give
    # back (0: done). A store without such a step returns 0.
    def compact(self, max_pages: int) -> int: ...
