"""The bridge's behaviour, independent of MCP: every tool and the lean heartbeat route call in here.

Each method takes the authenticated Caller first, checks what that caller may do, validates
the arguments into BridgeErrors that name the field, and records every state change in the
audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace

from s2_bridge import tokens
from s2_bridge.caller import Caller
from s2_bridge.config import BridgeConfig
from s2_bridge.errors import BridgeError, forbidden, invalid, not_found
from s2_bridge.inbox import InboxSignals
from s2_bridge.models import (
    OPEN_TASK_STATES,
    ActionType,
    AgentStatus,
    AlertKind,
    AlertRecorded,
    Conversation,
    ConversationCredentials,
    ConversationList,
    FleetStatus,
    HeartbeatAck,
    Inbox,
    PartnerStatus,
    Revoked,
    Sent,
    Side,
    StatusUpdate,
    Task,
    TaskList,
    TaskState,
    WaitResult,
    WorkerHealth,
    WorkerTaskState,
    iso,
)
from s2_bridge.redact import redact_list, redact_text
from s2_bridge.store import Store, StoreError

WORKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ROLE_MIN, ROLE_MAX = 3, 100
TITLE_MAX = 200
DETAIL_MAX = 10_000
NOTE_MAX = 2_000
TTL_MIN_S, TTL_MAX_S = 60, 366 * 24 * 3600
CHECK_LIMIT_MAX = 200
WAIT_MAX_S = 60.0
CALLER_CACHE_MAX = 200_000
OTHER: dict[Side, Side] = {"coordinator": "worker", "worker": "coordinator"}


def _store_error(exc: StoreError) -> BridgeError:
    fixes = {
        "conflict": "rotate or revoke the existing conversation instead of creating another",
        "not_found": "list_conversations or list_tasks shows the ids that exist",
    }
    return BridgeError(exc.code, str(exc), field=exc.field, fix=fixes.get(exc.code))


def _check_length(field: str, value: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise invalid(field, f"{field} has {len(value)} characters", f"use {low} to {high} characters")


class BridgeService:
    def __init__(self, store: Store, config: BridgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.limits = config.limits
        self.silent_after_s = float(config.health.silent_after_s)
        self.clock = clock
        self.signals = InboxSignals()
        # token hash -> (caller, expires_at). Every call authenticates, and the two lookups it
        # needs were a quarter of a heartbeat's cost. Rotation and revocation drop entries here
        # at once (one process owns the store), and expiry is checked on every hit.
        self._callers: dict[str, tuple[Caller, float | None]] = {}

    # helpers
    def _audit(self, caller: Caller | None, action: str, target: str, **detail: object) -> int:
        return self.store.audit(
            actor=caller.name if caller else "anonymous",
            action=action,
            target=target,
            detail=json.dumps(detail, sort_keys=True, default=str),
            remote=caller.remote if caller else "",
            now=self.clock(),
        )

    @staticmethod
    def _require_admin(caller: Caller) -> None:
        if caller.kind != "admin":
            raise forbidden("this tool is for the admin token only", "run it on the orchestrator host")

    @staticmethod
    def _require_side(caller: Caller) -> Conversation:
        if caller.conversation is None:
            raise forbidden(
                "the admin token is not a side of a conversation",
                "call this with a coordinator or worker token",
            )
        return caller.conversation

    def _ttl(self, ttl_s: int | None) -> int:
        ttl = self.config.conversations.default_ttl_s if ttl_s is None else ttl_s
        if not TTL_MIN_S <= ttl <= TTL_MAX_S:
            raise invalid("ttl_s", f"ttl_s {ttl} is out of range", f"use {TTL_MIN_S} to {TTL_MAX_S} seconds")
        return ttl

    def _live_conversation(self, worker_id: str, field: str) -> Conversation:
        conversation = self.store.live_conversation_of_worker(worker_id)
        if conversation is None:
            raise not_found(field, f"worker {worker_id!r} has no live conversation")
        return conversation

    def _issue_pair(self) -> tuple[str, str]:
        return tokens.new_token("coordinator"), tokens.new_token("worker")

    @staticmethod
    def _credentials(conversation: Conversation, coordinator: str, worker: str) -> ConversationCredentials:
        return ConversationCredentials(
            conversation_id=conversation.conversation_id,
            worker_id=conversation.worker_id,
            worker_role=conversation.worker_role,
            coordinator_token=coordinator,
            worker_token=worker,
            created_at=conversation.created_at,
            expires_at=conversation.expires_at,
        )

    # conversations (admin)
    def create_conversation(
        self, caller: Caller, my_role: str, partner_role: str, worker_id: str | None, ttl_s: int | None
    ) -> ConversationCredentials:
        self._require_admin(caller)
        _check_length("my_role", my_role, ROLE_MIN, ROLE_MAX)
        _check_length("partner_role", partner_role, ROLE_MIN, ROLE_MAX)
        worker = partner_role if worker_id is None else worker_id
        if not WORKER_ID_RE.match(worker):
            raise invalid("worker_id", f"{worker!r} is not a valid worker id", "use letters, digits, '.', '_', '-'")
        ttl = self._ttl(ttl_s)
        coordinator_token, worker_token = self._issue_pair()
        now = self.clock()
        try:
            with self.store.atomic():
                conversation = self.store.create_conversation(
                    worker_id=worker,
                    coordinator_role=my_role,
                    worker_role=partner_role,
                    coordinator_hash=tokens.token_hash(coordinator_token),
                    worker_hash=tokens.token_hash(worker_token),
                    now=now,
                    expires_at=now + ttl,
                )
                self._audit(caller, "conversation.create", conversation.conversation_id, worker_id=worker, ttl_s=ttl)
        except StoreError as exc:
            raise _store_error(exc) from None
        return self._credentials(conversation, coordinator_token, worker_token)

    def list_conversations(self, caller: Caller, include_revoked: bool) -> ConversationList:
        self._require_admin(caller)
        return ConversationList(conversations=self.store.list_conversations(include_revoked))

    def rotate_conversation(self, caller: Caller, conversation_id: str, ttl_s: int | None) -> ConversationCredentials:
        self._require_admin(caller)
        ttl = self._ttl(ttl_s)
        coordinator_token, worker_token = self._issue_pair()
        now = self.clock()
        try:
            with self.store.atomic():
                conversation = self.store.rotate_conversation(
                    conversation_id,
                    coordinator_hash=tokens.token_hash(coordinator_token),
                    worker_hash=tokens.token_hash(worker_token),
                    now=now,
                    expires_at=now + ttl,
                )
                self._audit(caller, "conversation.rotate", conversation_id, ttl_s=ttl)
        except StoreError as exc:
            raise _store_error(exc) from None
        self._forget_conversation(conversation_id)
        return self._credentials(conversation, coordinator_token, worker_token)

    def revoke_conversation(self, caller: Caller, conversation_id: str) -> Revoked:
        self._require_admin(caller)
        now = self.clock()
        try:
            with self.store.atomic():
                self.store.revoke_conversation(conversation_id, now)
                self._audit(caller, "conversation.revoke", conversation_id)
        except StoreError as exc:
            raise _store_error(exc) from None
        self._forget_conversation(conversation_id)
        return Revoked(conversation_id=conversation_id, revoked_at=iso(now) or "")

    # messages
    def _post(self, conversation: Conversation, from_side: Side, action_type: str, body: str, files: list[str]) -> int:
        """Store a message (already validated and redacted) and wake the other side's waiters."""
        from_role = conversation.coordinator_role if from_side == "coordinator" else conversation.worker_role
        message_id = self.store.add_message(
            conversation.conversation_id,
            from_side=from_side,
            from_role=from_role,
            action_type=action_type,
            body=body,
            files=files,
            now=self.clock(),
        )
        self.signals.notify(conversation.conversation_id, OTHER[from_side])
        return message_id

    def send_to_partner(self, caller: Caller, message: str, action_type: ActionType, files_involved: list[str]) -> Sent:
        conversation = self._require_side(caller)
        if not message.strip():
            raise invalid("message", "message is empty", "send some text")
        if len(message) > self.limits.message_max_chars:
            raise invalid(
                "message",
                f"message has {len(message)} characters",
                f"split it: at most {self.limits.message_max_chars} characters per message",
            )
        if len(files_involved) > self.limits.files_involved_max:
            raise invalid(
                "files_involved",
                f"files_involved has {len(files_involved)} entries",
                f"list at most {self.limits.files_involved_max}",
            )
        for index, name in enumerate(files_involved):
            if not 1 <= len(name) <= self.limits.file_name_max_chars or "\x00" in name:
                raise invalid(
                    f"files_involved[{index}]",
                    "a file name is empty, too long or holds a NUL",
                    f"use 1 to {self.limits.file_name_max_chars} characters",
                )
        body, body_redactions = redact_text(message)
        files, file_redactions = redact_list(list(files_involved))
        redactions = body_redactions + file_redactions
        with self.store.atomic():
            message_id = self._post(conversation, caller.side, action_type, body, files)
            self._audit(
                caller,
                "message.send",
                conversation.conversation_id,
                message_id=message_id,
                action_type=action_type,
                redactions=redactions,
            )
        return Sent(
            message_id=message_id,
            conversation_id=conversation.conversation_id,
            redactions=redactions,
            created_at=iso(self.clock()) or "",
        )

    def check_messages(self, caller: Caller, ack_through: int | None, limit: int) -> Inbox:
        conversation = self._require_side(caller)
        conversation_id = conversation.conversation_id
        if not 1 <= limit <= CHECK_LIMIT_MAX:
            raise invalid("limit", f"limit {limit} is out of range", f"use 1 to {CHECK_LIMIT_MAX}")
        if ack_through is not None:
            if ack_through < 0:
                raise invalid("ack_through", "ack_through is negative", "pass the id of the last message you handled")
            with self.store.atomic():
                before = self.store.read_cursor(conversation_id, caller.side)
                cursor = self.store.advance_cursor(conversation_id, caller.side, ack_through)
                if cursor != before:
                    self._audit(caller, "message.ack", conversation_id, acked_through=cursor)
        else:
            cursor = self.store.read_cursor(conversation_id, caller.side)
        messages = self.store.messages_for(conversation_id, caller.side, cursor, limit)
        remaining = self.store.count_for(conversation_id, caller.side, cursor) - len(messages)
        return Inbox(messages=messages, acked_through=cursor, unread=remaining)

    async def wait_for_messages(self, caller: Caller, after_id: int | None, timeout_s: float) -> WaitResult:
        conversation = self._require_side(caller)
        conversation_id = conversation.conversation_id
        if not 0 <= timeout_s <= WAIT_MAX_S:
            raise invalid("timeout_s", f"timeout_s {timeout_s} is out of range", f"use 0 to {WAIT_MAX_S:g} seconds")
        after = self.store.read_cursor(conversation_id, caller.side) if after_id is None else after_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            # Take the event before reading, so a message stored in between still wakes us.
            event = self.signals.event(conversation_id, caller.side)
            messages = self.store.messages_for(conversation_id, caller.side, after, CHECK_LIMIT_MAX)
            remaining = deadline - loop.time()
            if messages or remaining <= 0:
                return WaitResult(messages=messages, timed_out=not messages)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)

    # presence
    def update_my_status(self, caller: Caller, status: AgentStatus) -> StatusUpdate:
        conversation = self._require_side(caller)
        now = self.clock()
        with self.store.atomic():
            self.store.heartbeat(conversation.conversation_id, caller.side, now, status)
            self._audit(caller, "status.update", conversation.conversation_id, status=status)
        return StatusUpdate(status=status, updated_at=iso(now) or "")

    def check_partner_status(self, caller: Caller) -> PartnerStatus:
        conversation = self._require_side(caller)
        partner = OTHER[caller.side]
        presence = self.store.presence(conversation.conversation_id, partner)
        age = None if presence.last_heartbeat is None else max(0.0, self.clock() - presence.last_heartbeat)
        return PartnerStatus(
            partner_role=conversation.worker_role if partner == "worker" else conversation.coordinator_role,
            status=presence.status,
            last_heartbeat_at=iso(presence.last_heartbeat),
            heartbeat_age_s=None if age is None else round(age, 3),
            alive=age is not None and age <= self.silent_after_s,
        )

    def heartbeat(self, caller: Caller, status: AgentStatus | None) -> HeartbeatAck:
        conversation = self._require_side(caller)
        conversation_id = conversation.conversation_id
        now = self.clock()
        # Routine heartbeats are not audited: at thousands a second they would drown the log;
        # health transitions are audited by the watchdog instead.
        if status is not None and self.store.presence(conversation_id, caller.side).status != status:
            with self.store.atomic():
                self._audit(caller, "status.update", conversation_id, status=status)
                self.store.heartbeat(conversation_id, caller.side, now, status)
        else:
            self.store.heartbeat(conversation_id, caller.side, now, status)
        unread = self.store.unread_count(conversation_id, caller.side)
        return HeartbeatAck(unread=unread, server_time=iso(now) or "")

    def fleet_status(self, caller: Caller) -> FleetStatus:
        if caller.kind == "worker":
            raise forbidden("fleet_status is for the admin and coordinators", "use check_partner_status")
        now = self.clock()
        rows = self.store.fleet()
        if caller.conversation is not None:
            rows = [r for r in rows if r.conversation.conversation_id == caller.conversation.conversation_id]
        workers = []
        for row in rows:
            heartbeat = row.worker_presence.last_heartbeat
            age = None if heartbeat is None else max(0.0, now - heartbeat)
            if age is None:
                health = "never_seen"
            elif age > self.silent_after_s:
                health = "silent"
            else:
                health = "healthy"
            workers.append(
                WorkerHealth(
                    worker_id=row.conversation.worker_id,
                    worker_role=row.conversation.worker_role,
                    conversation_id=row.conversation.conversation_id,
                    status=row.worker_presence.status,
                    last_heartbeat_at=iso(heartbeat),
                    heartbeat_age_s=None if age is None else round(age, 3),
                    health=health,
                    open_tasks=row.open_tasks,
                )
            )
        return FleetStatus(workers=workers, silent_after_s=self.silent_after_s, generated_at=iso(now) or "")

    # tasks
    def assign_task(self, caller: Caller, title: str, detail: str, worker_id: str | None) -> Task:
        if caller.kind == "worker":
            raise forbidden("workers cannot assign tasks", "ask your coordinator with send_to_partner")
        if caller.kind == "admin":
            if worker_id is None:
                raise invalid("worker_id", "worker_id is required for the admin", "name the worker to assign to")
            conversation = self._live_conversation(worker_id, "worker_id")
        else:
            conversation = self._require_side(caller)
            if worker_id is not None and worker_id != conversation.worker_id:
                raise forbidden(
                    f"this coordinator token reaches worker {conversation.worker_id!r} only",
                    "omit worker_id or use that worker's conversation",
                )
        _check_length("title", title, 1, TITLE_MAX)
        _check_length("detail", detail, 0, DETAIL_MAX)
        title, _ = redact_text(title)
        detail, _ = redact_text(detail)
        with self.store.atomic():
            task = self.store.create_task(
                worker_id=conversation.worker_id,
                conversation_id=conversation.conversation_id,
                title=title,
                detail=detail,
                created_by=caller.name,
                now=self.clock(),
            )
            self._audit(caller, "task.assign", f"task:{task.task_id}", worker_id=task.worker_id)
            body = f"Task #{task.task_id} assigned to you: {title}" + (f"\n\n{detail}" if detail else "")
            self._post(conversation, "coordinator", "task_assignment", body, [])
        return task

    def list_tasks(self, caller: Caller, state: TaskState | None, worker_id: str | None) -> TaskList:
        if caller.conversation is not None:
            own = caller.conversation.worker_id
            if worker_id is not None and worker_id != own:
                raise forbidden(f"this token reaches worker {own!r} only", "omit worker_id")
            worker_id = own
        states = (state,) if state else None
        found = self.store.list_tasks(worker_id=worker_id, conversation_id=None, states=states)
        return TaskList(tasks=found)

    def _require_task(self, task_id: int) -> Task:
        task = self.store.get_task(task_id)
        if task is None:
            raise not_found("task_id", f"no task {task_id}")
        return task

    def update_task(self, caller: Caller, task_id: int, state: WorkerTaskState, note: str) -> Task:
        if caller.kind == "coordinator":
            raise forbidden("the assignee updates a task's state", "ask the worker, or reassign with the admin token")
        task = self._require_task(task_id)
        if caller.conversation is not None and task.worker_id != caller.conversation.worker_id:
            raise forbidden(f"task {task_id} is not assigned to you", "list_tasks shows your tasks")
        _check_length("note", note, 0, NOTE_MAX)
        note, _ = redact_text(note)
        with self.store.atomic():
            updated = self.store.update_task(task_id, state=state, note=note, now=self.clock())
            self._audit(caller, "task.update", f"task:{task_id}", state=state)
        return updated

    def reassign_task(self, caller: Caller, task_id: int, to_worker_id: str, reason: str) -> Task:
        self._require_admin(caller)
        task = self._require_task(task_id)
        if task.state not in OPEN_TASK_STATES:
            raise invalid("task_id", f"task {task_id} is {task.state}", "only open tasks can be reassigned")
        if to_worker_id == task.worker_id:
            raise invalid("to_worker_id", f"task {task_id} is already {to_worker_id}'s", "name another worker")
        _check_length("reason", reason, 0, NOTE_MAX)
        target = self._live_conversation(to_worker_id, "to_worker_id")
        with self.store.atomic():
            moved = self.store.move_task(
                task_id, to_worker_id=to_worker_id, to_conversation_id=target.conversation_id, now=self.clock()
            )
            self._audit(
                caller,
                "task.reassign",
                f"task:{task_id}",
                from_worker=task.worker_id,
                to_worker=to_worker_id,
                reason=reason,
            )
            body = (
                f"Task #{task_id} reassigned to you from worker {task.worker_id}: {moved.title}"
                + (f"\nReason: {reason}" if reason else "")
                + (f"\n\n{moved.detail}" if moved.detail else "")
            )
            self._post(target, "coordinator", "task_assignment", body, [])
        return moved

    def record_alert(self, caller: Caller, worker_id: str, kind: AlertKind, detail: str) -> AlertRecorded:
        self._require_admin(caller)
        _check_length("detail", detail, 0, NOTE_MAX)
        audit_id = self._audit(caller, f"watchdog.{kind}", f"worker:{worker_id}", detail=detail)
        return AlertRecorded(audit_id=audit_id)

    # authentication
    def _forget_conversation(self, conversation_id: str) -> None:
        stale = [
            key
            for key, (cached, _) in self._callers.items()
            if cached.conversation and cached.conversation.conversation_id == conversation_id
        ]
        for key in stale:
            del self._callers[key]

    def authenticate(self, token: str, remote: str) -> Caller | str:
        """Return the caller, or the reason the token is refused (never echoing the token)."""
        if not tokens.looks_like_token(token):
            return "malformed token"
        digest = tokens.token_hash(token)
        cached = self._callers.get(digest)
        if cached is not None:
            caller, expires_at = cached
            if expires_at is None or expires_at > self.clock():
                return replace(caller, remote=remote)
            del self._callers[digest]
        record = self.store.lookup_token(digest)
        if record is None:
            return "unknown token"
        if record.revoked:
            return "token revoked"
        if record.expires_at is not None and record.expires_at <= self.clock():
            return "token expired"
        conversation = None
        if record.conversation_id is not None:
            conversation = self.store.get_conversation(record.conversation_id)
            if conversation is None or conversation.revoked:
                return "conversation revoked"
        caller = Caller(kind=record.kind, token_hash=digest, remote=remote, conversation=conversation)
        if len(self._callers) >= CALLER_CACHE_MAX:
            self._callers.clear()  # bounded memory; the next calls simply look up again
        self._callers[digest] = (caller, record.expires_at)
        return caller

    def audit_auth_failure(self, remote: str, reason: str, path: str) -> None:
        self.store.audit(
            actor="anonymous",
            action="auth.failed",
            target=path,
            detail=json.dumps({"reason": reason}),
            remote=remote,
            now=self.clock(),
        )

    def audit_auth_flood(self, remote: str, path: str) -> None:
        self.store.audit(
            actor="anonymous",
            action="auth.rate_limited",
            target=path,
            detail=json.dumps({"per_minute": self.limits.auth_failures_per_min}),
            remote=remote,
            now=self.clock(),
        )
