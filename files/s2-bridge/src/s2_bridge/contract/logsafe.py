"""The one helper for caller-supplied text that reaches a log line or an audit row: control
characters escaped (a newline cannot forge a log line, an ESC cannot drive a terminal reading
the journal) and the length capped (a 60 KB path is not logged or stored whole)."""

from __future__ import annotations

import logging
import unicodedata

LOG_TEXT_MAX_CHARS = 200
# C0/C1 controls, DEL, format characters (bidi overrides, zero-width), line/paragraph separators
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str, keep: str) -> str:
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES or char in keep:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str, *, keep: str = "") -> str:
    """`text` with every control, format (bidi, zero-width) and separator character shown as an
    escape (`\\x1b`, `\\u202e`), except those in `keep`; nothing else changed, nothing cut. The
    one definition of what terminal output, hook output and log lines must not carry as is."""
    if text.isprintable():
        return text
    return "".join(_escape(char, keep) for char in text)


def log_text(value: object, limit: int = LOG_TEXT_MAX_CHARS) -> str:
    """`value` as one printable line of at most `limit` characters (before escaping) plus a
    marker saying how much was cut."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    # Backslashes doubled first, so an escape in the log always means a control character.
    shown = escape_controls(text[:limit].replace("\\", "\\\\"))
    return f"{shown}...(+{cut} chars)" if cut > 0 else shown


class SafeFormatter(logging.Formatter):
    """Every log line's message is one line: control characters escaped whatever the caller
    passed (a role name, a reason, a peer's error). Tracebacks, ours, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)
