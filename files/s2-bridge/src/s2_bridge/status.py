"""`s2-bridge status`: the fleet table (or its JSON) from fleet_status, as the admin."""

from __future__ import annotations

import argparse
import json
from typing import Any

from s2_bridge import exitcodes
from s2_bridge.client import BridgeClient
from s2_bridge.config import load_admin_config
from s2_bridge.oneshot import run_command
from s2_bridge.table import format_age, format_table
from s2_bridge.watchdog import worker_sort_key

HEADERS = ("WORKER", "ROLE", "STATUS", "HEALTH", "HEARTBEAT", "OPEN TASKS")


def fleet_table(fleet: dict[str, Any]) -> str:
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
    return format_table(HEADERS, rows)


def run(args: argparse.Namespace) -> int:
    config = load_admin_config(args.config)
    bridge = BridgeClient.for_admin(config)  # reads the token file now: a bad one exits 78

    async def main() -> int:
        async with bridge:
            fleet = await bridge.call("fleet_status")
        print(json.dumps(fleet, indent=2) if args.json else fleet_table(fleet))
        return exitcodes.OK

    return run_command("status", main)
