"""Who is calling: derived from the bearer token alone, never from an argument."""

from __future__ import annotations

from dataclasses import dataclass

from s2_bridge.models import Conversation, Side
from s2_bridge.tokens import TokenKind


@dataclass(frozen=True)
class Caller:
    kind: TokenKind
    token_hash: str
    remote: str
    conversation: Conversation | None = None

    @property
    def side(self) -> Side:
        if self.kind == "admin":
            raise ValueError("the admin is not a side of a conversation")
        return self.kind

    @property
    def role(self) -> str:
        if self.conversation is None:
            return "admin"
        if self.kind == "coordinator":
            return self.conversation.coordinator_role
        return self.conversation.worker_role

    @property
    def name(self) -> str:
        """How the audit log names the caller (never the token)."""
        if self.conversation is None:
            return "admin"
        return f"{self.kind}:{self.conversation.conversation_id}"

    @property
    def key(self) -> str:
        """Rate-limit key: one budget per token."""
        return self.token_hash
