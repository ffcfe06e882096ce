"""Bearer tokens: made with `secrets`, stored only as SHA-256 hashes, compared in constant time.

A plain hash (not a slow KDF) is right here: tokens carry 256 bits of randomness, so there is
nothing to brute-force, and every call must verify one cheaply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final, Literal

TokenKind = Literal["admin", "coordinator", "worker"]

PREFIXES: Final[dict[TokenKind, str]] = {"admin": "s2a_", "coordinator": "s2c_", "worker": "s2w_"}
TOKEN_BYTES: Final = 32  # 256 bits
TOKEN_CHARS: Final = 4 + 43  # prefix + base64url of 32 bytes


def new_token(kind: TokenKind) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hashes_match(stored_hash: str, presented_token: str) -> bool:
    return hmac.compare_digest(stored_hash, token_hash(presented_token))


def looks_like_token(value: str) -> bool:
    """Cheap shape check that rejects junk before it reaches the store."""
    return len(value) == TOKEN_CHARS and value[:4] in PREFIXES.values()
