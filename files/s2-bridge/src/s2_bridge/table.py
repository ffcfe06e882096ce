"""Plain-text tables for terminal output: left-aligned columns, two spaces apart."""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 controls, DEL, and the line/paragraph separators: a partner's text must never move
# the operator's cursor, change colours or forge a line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Show every control character as a visible escape (`\\x1b`, `\\n`), nothing else changed."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[escape_controls(str(value)) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = [headers, *cells]
    return "\n".join("  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in lines)


def format_age(seconds: float | None) -> str:
    """12s, 4m05s, 3h02m; "never" for a worker that never sent a heartbeat."""
    if seconds is None:
        return "never"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
