"""The one helper for caller-supplied text that reaches a log line or an audit row: control
characters escaped (a newline cannot forge a log line, an ESC cannot drive a terminal reading
the journal) and the length capped (a 60 KB path is not logged or stored whole)."""

from __future__ import annotations

import unicodedata

LOG_TEXT_MAX_CHARS = 200
# C0/C1 controls, DEL, format characters (bidi overrides, zero-width), line/paragraph separators
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def log_text(value: object, limit: int = LOG_TEXT_MAX_CHARS) -> str:
    """`value` as one printable line of at most `limit` characters (before escaping) plus a
    marker saying how much was cut."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    shown = "".join(_escape(char) for char in text[:limit])
    return f"{shown}...(+{cut} chars)" if cut > 0 else shown
