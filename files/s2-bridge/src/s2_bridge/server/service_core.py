"""The service's common ground: state, audit, argument checks and authentication.

`BridgeService` (service.py) is this core plus the messaging (messaging.py) and task board
(taskboard.py) parts; each part is a class over this one, so a reader finds a tool's rules in
the file named after its topic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

from s2_bridge.contract import tokens
from s2_bridge.contract.config import BridgeConfig
from s2_bridge.contract.errors import BridgeError, forbidden, invalid
from s2_bridge.contract.models import Box, Conversation, is_expired
from s2_bridge.server.caller import Caller
from s2_bridge.server.inbox import InboxSignals
from s2_bridge.server.store import Store, StoreError

ROLE_MIN, ROLE_MAX = 3, 100
TTL_MIN_S, TTL_MAX_S = 60, 366 * 24 * 3600
CALLER_CACHE_MAX = 200_000
# The lead's inbox, cursor and presence are keyed by this conversation id (no conversation).
LEAD_KEY = ""
# A lead call refreshes the lead's presence at most this often (it is the lead's heartbeat).
LEAD_TOUCH_EVERY_S = 1.0


def store_error(exc: StoreError) -> BridgeError:
    fixes = {
        "conflict": "rotate or revoke the existing conversation instead of creating another",
        "not_found": "list_conversations or list_tasks shows the ids that exist",
    }
    return BridgeError(exc.code, str(exc), field=exc.field, fix=fixes.get(exc.code))


# SQLite's INTEGER is signed 64-bit: a larger id or count cannot reach the store at all.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_edges(field: str, value: object) -> None:
    """Refuse what the store cannot hold, naming the field: an integer outside SQLite's signed
    64-bit range, or a string holding a lone surrogate (not encodable as UTF-8). Lists and
    dicts are checked item by item (`field[2]`, `field.key`)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise invalid(field, f"{field} is out of range", f"use an integer from {INT64_MIN} to {INT64_MAX}")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise invalid(
                field,
                f"{field} holds a lone UTF-16 surrogate at character {exc.start}",
                "send valid Unicode text (pair every surrogate, or drop it)",
            ) from None
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_edges(f"{field}[{index}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_edges(f"{field}.{key}" if isinstance(key, str) and key.isidentifier() else field, item)
            check_edges(field, key)


def check_length(field: str, value: str, low: int, high: int) -> None:
    if not low <= len(value) <= high:
        raise invalid(field, f"{field} has {len(value)} characters", f"use {low} to {high} characters")


class ServiceCore:
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
        self._lead_touched_at = 0.0
        # token hash -> long polls it has parked now (the per-caller cap of wait_for_messages)
        self._parked: dict[str, int] = {}

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
                f"the {caller.kind} token is not a side of a conversation",
                "call this with a coordinator or worker token",
            )
        return caller.conversation

    @staticmethod
    def _inbox_of(caller: Caller) -> tuple[str, Box]:
        """The (conversation id, inbox) the caller reads and heartbeats as."""
        if caller.kind == "lead":
            return LEAD_KEY, "lead"
        if caller.conversation is None:
            raise forbidden("the admin token has no inbox", "call this with the lead's, a coordinator's or a worker's")
        return caller.conversation.conversation_id, caller.box

    def _ttl(self, ttl_s: int | None) -> int:
        ttl = self.config.conversations.default_ttl_s if ttl_s is None else ttl_s
        if not TTL_MIN_S <= ttl <= TTL_MAX_S:
            raise invalid("ttl_s", f"ttl_s {ttl} is out of range", f"use {TTL_MIN_S} to {TTL_MAX_S} seconds")
        return ttl

    # authentication
    def _forget(self, matches: Callable[[Caller], bool]) -> None:
        for key in [key for key, (cached, _) in self._callers.items() if matches(cached)]:
            del self._callers[key]

    def _forget_conversation(self, conversation_id: str) -> None:
        self._forget(lambda c: c.conversation is not None and c.conversation.conversation_id == conversation_id)
        # Wake the conversation's parked long polls: each re-checks its token and is refused.
        for side in ("coordinator", "worker"):
            self.signals.notify(conversation_id, side)

    def _touch_lead(self) -> None:
        """Every lead call is the lead's heartbeat: workers see their partner alive."""
        now = self.clock()
        if now - self._lead_touched_at >= LEAD_TOUCH_EVERY_S:
            self._lead_touched_at = now
            self.store.heartbeat(LEAD_KEY, "lead", now, None)

    def authenticate(self, token: str, remote: str) -> Caller | str:
        """Return the caller, or the reason the token is refused (never echoing the token)."""
        caller = self._authenticate(token, remote)
        if isinstance(caller, Caller) and caller.kind == "lead":
            self._touch_lead()
        return caller

    def _authenticate(self, token: str, remote: str) -> Caller | str:
        if not tokens.looks_like_token(token):
            return "malformed token"
        return self._caller_by_hash(tokens.token_hash(token), remote)

    def still_authenticated(self, caller: Caller) -> str | None:
        """None while the caller's token is still good, else why not (rotated, revoked or expired
        since it was authenticated): a long poll asks this when it wakes."""
        if caller.kind == "admin":
            return None
        found = self._caller_by_hash(caller.token_hash, caller.remote)
        return found if isinstance(found, str) else None

    def _caller_by_hash(self, digest: str, remote: str) -> Caller | str:
        cached = self._callers.get(digest)
        if cached is not None:
            caller, expires_at = cached
            if not is_expired(expires_at, self.clock()):
                return replace(caller, remote=remote)
            del self._callers[digest]
        record = self.store.lookup_token(digest)
        if record is None:
            return "unknown token"
        if record.revoked:
            return "token revoked"
        if is_expired(record.expires_at, self.clock()):
            return "token expired"
        conversation = None
        if record.conversation_id is not None:
            conversation = self.store.get_conversation(record.conversation_id)
            if conversation is None or conversation.revoked:
                return "conversation revoked"
        caller = Caller(
            kind=record.kind, token_hash=digest, remote=remote, conversation=conversation, lead_role=record.label
        )
        if len(self._callers) >= CALLER_CACHE_MAX:
            self._callers.clear()  # bounded memory; the next calls simply look up again
        self._callers[digest] = (caller, record.expires_at)
        return caller

    def audit_denied(self, caller: Caller, tool: str, reason: str) -> None:
        """A call refused for lack of permission: who tried which tool."""
        self._audit(caller, "denied", tool, reason=reason[:200])

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
