"""Messages and presence: send (to a partner, a worker, the lead, or a broadcast), read by
cursor, long-poll, the hooks' updates, status and heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from s2_bridge.contract.errors import BridgeError, invalid, not_found
from s2_bridge.contract.models import (
    OPEN_TASK_STATES,
    ActionType,
    AgentStatus,
    Box,
    HeartbeatAck,
    Inbox,
    Message,
    PartnerStatus,
    Sent,
    Side,
    StatusUpdate,
    Updates,
    WaitResult,
    iso,
)
from s2_bridge.server import routing
from s2_bridge.server.caller import Caller
from s2_bridge.server.redact import redact_list, redact_text
from s2_bridge.server.service_core import LEAD_KEY, ServiceCore, check_edges
from s2_bridge.server.store.base import (
    ADMIN_SENDER,
    LEAD_SENDER,
    MessageDraft,
    coordinator_sender,
    stored_size,
    worker_sender,
)

CHECK_LIMIT_MAX = 200
UPDATES_LIMIT_MAX = 50
# Below the clients' default tool timeouts (Codex: 60 s): a long poll must never be cut off
# by the agent's own client.
WAIT_DEFAULT_S = 20.0
WAIT_MAX_S = 50.0
# Long polls one token may have parked at once; past it, too_many_waits.
# A body longer than this is redacted on the redaction thread, not on the event loop: up to ~30 ms
# for 50,000 characters that hold every rule's key words (2 ms for ordinary text), during which
# the loop would serve nobody. The thread holds the GIL too, but Python hands it back every 5 ms.
REDACT_ON_LOOP_MAX_CHARS = 8_000


def sender_of(caller: Caller) -> str:
    """Whose quota ([limits] stored_bytes_per_sender) what the caller sends counts against."""
    if caller.kind == "lead":
        return LEAD_SENDER
    if caller.kind == "admin" or caller.conversation is None:
        return ADMIN_SENDER
    if caller.kind == "worker":
        return worker_sender(caller.conversation.worker_id)
    return coordinator_sender(caller.conversation.conversation_id)


def _sender_name(sender: str) -> str:
    kind, _, key = sender.partition(":")
    if kind == "worker":
        return f"worker {key!r}"
    if kind == "coordinator":
        return f"the coordinator side of {key}"
    return f"the {sender}"


class Messaging(ServiceCore):
    # One thread, so at most one redaction competes with the event loop for the GIL; later
    # large sends queue for it (each caller is rate-limited).
    _redactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s2-redact")

    # storing and waking
    def _check_quota(self, drafts: list[MessageDraft], field: str) -> None:
        """Refuse a send that would take its sender past [limits] stored_bytes_per_sender. Every
        copy of a broadcast counts; the whole send is refused, so nothing is stored."""
        senders = {draft.sender for draft in drafts}
        for sender in senders - {ADMIN_SENDER}:  # the operator's own assignments are never refused
            adding = sum(stored_size(d.body, d.files) for d in drafts if d.sender == sender)
            stored = self.store.stored_bytes(sender)
            if stored + adding > self.limits.stored_bytes_per_sender:
                copies = sum(1 for d in drafts if d.sender == sender)
                raise self._quota_exceeded(sender, stored, adding, copies, field)

    def _refuse_if_full(self, caller: Caller, message: str) -> None:
        """A sender already at its quota cannot store anything: refused before redaction."""
        sender = sender_of(caller)
        stored = self.store.stored_bytes(sender)
        if sender != ADMIN_SENDER and stored >= self.limits.stored_bytes_per_sender:
            raise self._quota_exceeded(sender, stored, len(message.encode("utf-8", "surrogatepass")), 1, "message")

    def _quota_exceeded(self, sender: str, stored: int, adding: int, copies: int, field: str) -> BridgeError:
        cap = self.limits.stored_bytes_per_sender
        retention = self.config.retention
        return BridgeError(
            "quota_exceeded",
            f"{_sender_name(sender)} has {stored:,} bytes of messages stored; this send adds {adding:,}"
            f" ({copies} cop{'y' if copies == 1 else 'ies'}), over the cap of {cap:,} bytes per sender",
            field=field,
            fix="wait until the recipients read their messages and retention removes them (read messages"
            f" after {retention.read_messages_days:g} days, any message after {retention.unread_messages_days:g}"
            f" days, swept every {retention.sweep_interval_s:g} s), send less, or have the operator raise"
            " [limits] stored_bytes_per_sender (role variable mcp_bridge_limits.stored_bytes_per_sender)",
        )

    def _deliver(self, drafts: list[MessageDraft], field: str = "message") -> list[int]:
        """Store messages (validated, redacted) inside the caller's transaction; wake readers.
        Past the sender's quota nothing is stored (quota_exceeded, naming `field`)."""
        self._check_quota(drafts, field)
        now = self.clock()
        ids = [self.store.add_message(draft, now) for draft in drafts]
        for draft in drafts:
            self.signals.notify(draft.conversation_id, draft.to_side)
            if draft.from_side == "worker":
                self.signals.notify(LEAD_KEY, "lead")
        return ids

    def _sender_fields(self, caller: Caller) -> tuple[Side, str, str | None]:
        """from_side, from_role and from_worker of what the caller sends."""
        if caller.kind == "lead":
            return "coordinator", caller.lead_role or "lead", None
        conversation = self._require_side(caller)
        if caller.kind == "worker":
            return "worker", conversation.worker_role, conversation.worker_id
        return "coordinator", conversation.coordinator_role, None

    def _draft(
        self,
        caller: Caller,
        recipient: routing.Recipient,
        action_type: str,
        body: str,
        files: list[str],
        reply_to: int | None,
    ) -> MessageDraft:
        from_side, from_role, from_worker = self._sender_fields(caller)
        target = recipient.conversation
        if target is None:  # a worker writing to the lead: its own conversation's coordinator side
            own = self._require_side(caller)
            conversation_id, to_side, to_worker = own.conversation_id, "coordinator", None
        else:
            conversation_id, to_side, to_worker = target.conversation_id, "worker", target.worker_id
        return MessageDraft(
            conversation_id=conversation_id,
            to_side=to_side,
            from_side=from_side,
            from_role=from_role,
            from_worker=from_worker,
            to_worker=to_worker,
            action_type=action_type,
            body=body,
            files=files,
            reply_to=reply_to,
            sender=sender_of(caller),
        )

    def post_from(self, caller: Caller, target_conversation_id: str, action_type: str, body: str) -> int:
        """A system message (a task assignment) from the caller to one worker."""
        target = self.store.get_conversation(target_conversation_id)
        if target is None:
            raise not_found("worker_id", f"no conversation {target_conversation_id!r}")
        from_role = target.coordinator_role if caller.kind == "admin" else self._sender_fields(caller)[1]
        draft = MessageDraft(
            conversation_id=target.conversation_id,
            to_side="worker",
            from_side="coordinator",
            from_role=from_role,
            from_worker=None,
            to_worker=target.worker_id,
            action_type=action_type,
            body=body,
            files=[],
            reply_to=None,
            sender=sender_of(caller),
        )
        return self._deliver([draft], field="detail")[0]

    # sending
    def _check_body(self, message: str, files_involved: list[str]) -> None:
        check_edges("message", message)
        check_edges("files_involved", files_involved)
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

    def _visible_message(self, caller: Caller, message_id: int) -> Message:
        check_edges("reply_to", message_id)
        if message_id < 1:
            raise invalid("reply_to", "reply_to must be a message id (1 or more)", "pass the id of the message")
        original = self.store.get_message(message_id)
        if original is None or not routing.can_see(caller, original):
            raise not_found("reply_to", f"no message {message_id} that you received or sent")
        return original

    async def redact_off_loop(self, caller: Caller, message: str, files_involved: list[str]) -> tuple[str, int] | None:
        """redact_text(message) for send_to_partner's `redacted`, run off the event loop when the body
        is long; None for a short one (the send redacts it inline). A sender already at its quota is
        refused before any redaction is spent on its message."""
        if not REDACT_ON_LOOP_MAX_CHARS < len(message) <= self.limits.message_max_chars:
            return None
        self._check_body(message, files_involved)
        self._refuse_if_full(caller, message)
        return await asyncio.get_running_loop().run_in_executor(self._redactor, redact_text, message)

    def send_to_partner(
        self,
        caller: Caller,
        message: str,
        action_type: ActionType,
        files_involved: list[str],
        to: str | list[str] | None = None,
        reply_to: int | None = None,
        *,
        redacted: tuple[str, int] | None = None,
    ) -> Sent:
        """Send a message; `redacted` is redact_text(message) when the caller already ran it (the
        tool passes redact_off_loop's result)."""
        if caller.kind == "admin":
            self._require_side(caller)
        self._check_body(message, files_involved)
        original = None if reply_to is None else self._visible_message(caller, reply_to)
        recipients = routing.resolve(self.store, caller, to, original, self.config.fleet.messaging, self.clock())
        body, body_redactions = redact_text(message) if redacted is None else redacted
        files, file_redactions = redact_list(list(files_involved))
        redactions = body_redactions + file_redactions
        drafts = [self._draft(caller, r, action_type, body, files, reply_to) for r in recipients]
        with self.store.atomic():
            ids = self._deliver(drafts)
            for draft, message_id in zip(drafts, ids, strict=True):
                self._audit(
                    caller,
                    "message.send",
                    draft.conversation_id,
                    message_id=message_id,
                    action_type=action_type,
                    to=draft.to_worker or routing.LEAD,
                    redactions=redactions,
                )
        return Sent(
            message_id=ids[0],
            message_ids=ids,
            recipients=[r.label for r in recipients],
            conversation_id=drafts[0].conversation_id,
            redactions=redactions,
            created_at=iso(self.clock()) or "",
        )

    # reading
    def check_messages(self, caller: Caller, ack_through: int | None, limit: int) -> Inbox:
        key, box = self._inbox_of(caller)
        if not 1 <= limit <= CHECK_LIMIT_MAX:
            raise invalid("limit", f"limit {limit} is out of range", f"use 1 to {CHECK_LIMIT_MAX}")
        if ack_through is not None:
            check_edges("ack_through", ack_through)
            if ack_through < 0:
                raise invalid("ack_through", "ack_through is negative", "pass the id of the last message you handled")
            with self.store.atomic():
                before = self.store.read_cursor(key, box)
                cursor = self.store.advance_cursor(key, box, ack_through)
                if cursor != before:
                    self._audit(caller, "message.ack", key or "lead", acked_through=cursor)
        else:
            cursor = self.store.read_cursor(key, box)
        messages = self.store.messages_for(key, box, cursor, limit)
        remaining = self.store.count_for(key, box, cursor) - len(messages)
        return Inbox(messages=messages, acked_through=cursor, unread=remaining)

    @property
    def parked_waits_per_caller(self) -> int:
        return self.limits.parked_waits_per_caller

    async def wait_for_messages(self, caller: Caller, after_id: int | None, timeout_s: float) -> WaitResult:
        key, box = self._inbox_of(caller)
        if not 0 <= timeout_s <= WAIT_MAX_S:
            raise invalid("timeout_s", f"timeout_s {timeout_s} is out of range", f"use 0 to {WAIT_MAX_S:g} seconds")
        if after_id is not None:
            check_edges("after_id", after_id)
        after = self.store.read_cursor(key, box) if after_id is None else after_id
        # Take the event before reading, so a message stored in between still wakes us.
        event = self.signals.event(key, box)
        messages = self.store.messages_for(key, box, after, CHECK_LIMIT_MAX)
        if messages or timeout_s <= 0:
            return WaitResult(messages=messages, timed_out=not messages)
        parked = self._parked.get(caller.token_hash, 0)
        cap = self.parked_waits_per_caller
        if parked >= cap:
            raise BridgeError(
                "too_many_waits",
                f"this token already has {parked} wait_for_messages parked (at most {cap})",
                field="timeout_s",
                fix="let an earlier wait_for_messages return (or cancel it) before starting another; "
                "check_messages reads without waiting",
            )
        self._parked[caller.token_hash] = parked + 1
        try:
            return await self._park(caller, key, box, after, event, timeout_s)
        finally:
            left = self._parked.get(caller.token_hash, 1) - 1
            if left > 0:
                self._parked[caller.token_hash] = left
            else:
                self._parked.pop(caller.token_hash, None)

    async def _park(
        self, caller: Caller, key: str, box: Box, after: int, event: asyncio.Event, timeout_s: float
    ) -> WaitResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, deadline - loop.time()))
            if event.is_set():  # woken by a message, maybe with 1,000 others: wait for a turn
                await self.signals.turns.turn()
            # The token may have been rotated or revoked while this call was parked.
            refused = self.still_authenticated(caller)
            if refused is not None:
                raise BridgeError(
                    "unauthenticated",
                    f"your token was refused while you waited: {refused}",
                    fix="reread your credentials file (a rotation writes new tokens) and call again",
                )
            fresh = self.signals.event(key, box)
            # Every reader woken by the same message and asking the same gets the same result
            # object: the store is read and the answer built once (tools.py encodes it once).
            found = self.signals.shared_read(event, (key, box, after), lambda: self._found(key, box, after))
            if found is not None:
                return found
            if deadline - loop.time() <= 0:
                return WaitResult(messages=[], timed_out=True)
            event = fresh

    def _found(self, key: str, box: Box, after: int) -> WaitResult | None:
        messages = self.store.messages_for(key, box, after, CHECK_LIMIT_MAX)
        return WaitResult(messages=messages, timed_out=False) if messages else None

    def updates(self, caller: Caller, after: int | None, limit: int) -> Updates:
        """What the hook command shows: messages after `after` (default: the read cursor)."""
        key, box = self._inbox_of(caller)
        if not 1 <= limit <= UPDATES_LIMIT_MAX:
            raise invalid("limit", f"limit {limit} is out of range", f"use 1 to {UPDATES_LIMIT_MAX}")
        if after is not None:
            check_edges("after", after)
        if after is not None and after < 0:
            raise invalid("after", "after is negative", "pass the last message id you showed, or leave it out")
        cursor = self.store.read_cursor(key, box)
        since = cursor if after is None else after
        open_tasks = []
        if caller.kind == "worker" and caller.conversation is not None:
            open_tasks = self.store.list_tasks(
                worker_id=caller.conversation.worker_id, conversation_id=None, states=OPEN_TASK_STATES
            )
        return Updates(
            messages=self.store.messages_for(key, box, since, limit),
            last_id=self.store.newest_id(key, box),
            unread=self.store.count_for(key, box, cursor),
            acked_through=cursor,
            open_tasks=open_tasks,
            server_time=iso(self.clock()) or "",
        )

    # presence
    def update_my_status(self, caller: Caller, status: AgentStatus) -> StatusUpdate:
        key, box = self._inbox_of(caller)
        now = self.clock()
        with self.store.atomic():
            self.store.heartbeat(key, box, now, status)
            self._audit(caller, "status.update", key or "lead", status=status)
        return StatusUpdate(status=status, updated_at=iso(now) or "")

    def check_partner_status(self, caller: Caller) -> PartnerStatus:
        conversation = self._require_side(caller)
        now = self.clock()
        if caller.side == "worker":
            # The partner is the orchestrator's side: its coordinator, or the lead that drives
            # the whole fleet; whichever was seen last speaks for it.
            own = self.store.presence(conversation.conversation_id, "coordinator")
            lead = self.store.presence(LEAD_KEY, "lead")
            presence = max((own, lead), key=lambda p: p.last_heartbeat or 0.0)
            role = conversation.coordinator_role
            live_lead = self.store.live_lead(now)
            if presence is lead and live_lead is not None:
                role = live_lead.lead_role
        else:
            presence = self.store.presence(conversation.conversation_id, "worker")
            role = conversation.worker_role
        age = None if presence.last_heartbeat is None else max(0.0, now - presence.last_heartbeat)
        return PartnerStatus(
            partner_role=role,
            status=presence.status,
            last_heartbeat_at=iso(presence.last_heartbeat),
            heartbeat_age_s=None if age is None else round(age, 3),
            alive=age is not None and age <= self.silent_after_s,
        )

    def heartbeat(self, caller: Caller, status: AgentStatus | None) -> HeartbeatAck:
        key, box = self._inbox_of(caller)
        now = self.clock()
        # Routine heartbeats are not audited: at thousands a second they would drown the log;
        # health transitions are audited by the watchdog instead.
        if status is not None and self.store.presence(key, box).status != status:
            with self.store.atomic():
                self._audit(caller, "status.update", key or "lead", status=status)
                self.store.heartbeat(key, box, now, status)
        else:
            self.store.heartbeat(key, box, now, status)
        unread = self.store.unread_count(key, box)
        return HeartbeatAck(unread=unread, server_time=iso(now) or "")
