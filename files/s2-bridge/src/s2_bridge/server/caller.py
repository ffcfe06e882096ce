"""Who is calling: derived from the bearer token alone, never from an argument."""

from __future__ import annotations

from dataclasses import dataclass

from s2_bridge.contract.models import Box, Conversation, Side
from s2_bridge.contract.tokens import TokenKind


@dataclass(frozen=True)
class Caller:
    kind: TokenKind
    token_hash: str
    remote: str
    conversation: Conversation | None = None
    lead_role: str | None = None  # the lead's role name (kind "lead" only)

    @property
    def side(self) -> Side:
        """The caller's side of its conversation (coordinator or worker tokens only)."""
        if self.kind not in ("coordinator", "worker"):
            raise ValueError(f"the {self.kind} is not a side of a conversation")
        return self.kind  # type: ignore[return-value]

    @property
    def box(self) -> Box:
        """Which inbox the caller reads."""
        if self.kind == "admin":
            raise ValueError("the admin has no inbox")
        return self.kind  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """How the audit log names the caller (never the token)."""
        if self.kind == "lead":
            return "lead"
        if self.conversation is None:
            return "admin"
        return f"{self.kind}:{self.conversation.conversation_id}"

    @property
    def key(self) -> str:
        """Rate-limit key: one budget per token."""
        return self.token_hash
