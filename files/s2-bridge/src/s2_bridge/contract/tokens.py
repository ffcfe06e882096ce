"""Bearer tokens: made with `secrets`, stored only as SHA-256 hashes, looked up by that hash.

A plain hash (not a slow KDF) is right here: tokens carry 256 bits of randomness, so there is
nothing to brute-force, and every call must verify one cheaply. The store is queried by the
hash (an index lookup), so no secret is ever compared byte by byte.

This module is the one home of the token shape: the prefixes, the length and the pattern that
credentials files, redaction and the tests' leak scans use.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final, Literal

TokenKind = Literal["admin", "coordinator", "worker", "lead"]

PREFIXES: Final[dict[TokenKind, str]] = {"admin": "s2a_", "coordinator": "s2c_", "worker": "s2w_", "lead": "s2l_"}
PREFIX_CHARS: Final = 4  # every prefix is s2?_
TOKEN_BYTES: Final = 32  # 256 bits
BODY_CHARS: Final = 43  # base64url of 32 bytes
TOKEN_CHARS: Final = PREFIX_CHARS + BODY_CHARS
_BODY: Final = rf"[A-Za-z0-9_-]{{{BODY_CHARS}}}"  # the base64url alphabet
# Any bridge token inside a text (leak scans); `PATTERNS[kind]` matches one whole token.
TOKEN_RE: Final = re.compile("(?:" + "|".join(map(re.escape, PREFIXES.values())) + ")" + _BODY)
PATTERNS: Final[dict[TokenKind, re.Pattern[str]]] = {
    kind: re.compile(f"^{re.escape(prefix)}{_BODY}$") for kind, prefix in PREFIXES.items()
}


def new_token(kind: TokenKind) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(value: str) -> bool:
    """Cheap shape check that rejects junk before it reaches the store."""
    return len(value) == TOKEN_CHARS and value[:PREFIX_CHARS] in PREFIXES.values()


def describe(kind: TokenKind) -> str:
    """How an error message names a token's shape (never its value)."""
    return f"{PREFIXES[kind]} + {BODY_CHARS} characters"
