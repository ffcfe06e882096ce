"""`s2-bridge status`: the fleet table (or its JSON) from fleet_status, as the admin."""

from __future__ import annotations

import argparse
import json

from s2_bridge.agent.client import BridgeClient
from s2_bridge.agent.oneshot import run_command
from s2_bridge.agent.table import fleet_table
from s2_bridge.contract import exitcodes
from s2_bridge.contract.config import load_admin_config


def run(args: argparse.Namespace) -> int:
    config = load_admin_config(args.config)
    bridge = BridgeClient.for_admin(config)  # reads the token file now: a bad one exits 78

    async def main() -> int:
        async with bridge:
            fleet = await bridge.call("fleet_status")
        print(json.dumps(fleet, indent=2) if args.json else fleet_table(fleet))
        return exitcodes.OK

    return run_command("status", main)
