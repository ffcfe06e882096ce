"""The bridge's behaviour, independent of MCP: every tool and the lean routes call in here.

Each method takes the authenticated Caller first, checks what that caller may do, validates
the arguments into BridgeErrors that name the field, and records every state change in the
audit log. The parts: service_core.py (state, audit, authentication), messaging.py (messages
and presence), taskboard.py (fleet and tasks); this file adds provisioning (conversations and
the lead's token) and is the one class the app and the tools use.
"""

from __future__ import annotations

from s2_bridge.contract import ids, tokens
from s2_bridge.contract.errors import invalid
from s2_bridge.contract.models import (
    Conversation,
    ConversationCredentials,
    ConversationList,
    LeadCredentials,
    LeadInfo,
    Revoked,
    iso,
)
from s2_bridge.server.caller import Caller
from s2_bridge.server.service_core import LEAD_KEY, ROLE_MAX, ROLE_MIN, check_length, store_error
from s2_bridge.server.store import StoreError
from s2_bridge.server.taskboard import TaskBoard

DEFAULT_LEAD_ROLE = "s2-orchestrator"


class BridgeService(TaskBoard):
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
        check_length("my_role", my_role, ROLE_MIN, ROLE_MAX)
        check_length("partner_role", partner_role, ROLE_MIN, ROLE_MAX)
        worker = partner_role if worker_id is None else worker_id
        if not ids.is_worker_id(worker):
            raise invalid("worker_id", f"{worker!r} is not a valid worker id", ids.WORKER_ID_FIX)
        ttl = self._ttl(ttl_s)
        coordinator_token, worker_token = self._issue_pair()
        now = self.clock()
        stale = None
        try:
            with self.store.atomic():
                # An expired conversation is not live: it gives way to the new one, revoked in this
                # same transaction (a conflict below rolls the revocation back too).
                stale = self.store.expired_conversation_of_worker(worker, now)
                if stale is not None:
                    self.store.revoke_conversation(stale.conversation_id, now)
                    self._audit(
                        caller, "conversation.revoke", stale.conversation_id, worker_id=worker, reason="expired"
                    )
                conversation = self.store.create_conversation(
                    worker_id=worker,
                    coordinator_role=my_role,
                    worker_role=partner_role,
                    coordinator_hash=tokens.token_hash(coordinator_token),
                    worker_hash=tokens.token_hash(worker_token),
                    now=now,
                    expires_at=now + ttl,
                )
                self._audit(
                    caller,
                    "conversation.create",
                    conversation.conversation_id,
                    worker_id=worker,
                    ttl_s=ttl,
                    **({"replaces": stale.conversation_id} if stale is not None else {}),
                )
        except StoreError as exc:
            raise store_error(exc) from None
        if stale is not None:
            self._forget_conversation(stale.conversation_id)
        return self._credentials(conversation, coordinator_token, worker_token)

    def list_conversations(self, caller: Caller, include_revoked: bool) -> ConversationList:
        self._require_admin(caller)
        lead = self.store.live_lead(self.clock())
        return ConversationList(
            conversations=self.store.list_conversations(include_revoked),
            lead=None
            if lead is None
            else LeadInfo(
                lead_role=lead.lead_role, created_at=iso(lead.created_at) or "", expires_at=iso(lead.expires_at) or ""
            ),
        )

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
            raise store_error(exc) from None
        self._forget_conversation(conversation_id)
        return self._credentials(conversation, coordinator_token, worker_token)

    def revoke_conversation(self, caller: Caller, conversation_id: str) -> Revoked:
        self._require_admin(caller)
        now = self.clock()
        try:
            with self.store.atomic():
                revocation = self.store.revoke_conversation(conversation_id, now)
                if revocation.changed:  # revoking again is a no-op: no new time, no second audit row
                    self._audit(caller, "conversation.revoke", conversation_id)
        except StoreError as exc:
            raise store_error(exc) from None
        if revocation.changed:
            self._forget_conversation(conversation_id)
        return Revoked(conversation_id=conversation_id, revoked_at=iso(revocation.revoked_at) or "")

    # the lead (admin)
    def rotate_lead(self, caller: Caller, lead_role: str, ttl_s: int | None) -> LeadCredentials:
        """Issue the fleet's lead token; every earlier lead token is refused from now on."""
        self._require_admin(caller)
        check_length("lead_role", lead_role, ROLE_MIN, ROLE_MAX)
        ttl = self._ttl(ttl_s)
        token = tokens.new_token("lead")
        now = self.clock()
        with self.store.atomic():
            self.store.replace_lead_token(tokens.token_hash(token), lead_role=lead_role, now=now, expires_at=now + ttl)
            self._audit(caller, "lead.rotate", "lead", lead_role=lead_role, ttl_s=ttl)
        self._forget(lambda cached: cached.kind == "lead")
        self.signals.notify(LEAD_KEY, "lead")  # parked waits of the old token re-check and are refused
        return LeadCredentials(
            lead_role=lead_role, lead_token=token, created_at=iso(now) or "", expires_at=iso(now + ttl) or ""
        )
