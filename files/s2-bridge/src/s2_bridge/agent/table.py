"""Plain-text tables for terminal output: left-aligned columns, two spaces apart; the fleet
table (`s2-bridge status`, and the collection's fleet_status_info through the runtime) and its
one age format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from s2_bridge.contract.logsafe import escape_controls
from s2_bridge.contract.models import worker_sort_key

FLEET_HEADERS = ("WORKER", "ROLE", "STATUS", "HEALTH", "HEARTBEAT", "OPEN TASKS")


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


def fleet_table(fleet: Mapping[str, Any]) -> str:
    """A fleet_status result as a table: one row per worker in worker id order."""
    workers = sorted(fleet.get("workers", []), key=lambda w: worker_sort_key(str(w["worker_id"])))
    rows = [
        (
            w["worker_id"],
            w.get("worker_role", ""),
            w.get("status") or "-",
            w.get("health", "?"),
            format_age(w.get("heartbeat_age_s")),
            w.get("open_tasks", 0),
        )
        for w in workers
    ]
    return format_table(FLEET_HEADERS, rows)
