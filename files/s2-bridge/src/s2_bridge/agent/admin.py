"""`s2-bridge admin ...`: create, rotate, revoke and list conversations as the admin.

Tokens go only into 0600 files (--out: both tokens, the orchestrator's copy; --worker-out:
the worker's copy without the coordinator token). Nothing printed here contains a token.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from s2_bridge.agent.client import BridgeClient
from s2_bridge.agent.oneshot import run_command
from s2_bridge.agent.table import format_table
from s2_bridge.contract import exitcodes
from s2_bridge.contract.config import AdminConfig, load_admin_config
from s2_bridge.contract.credentials import credentials_document, write_private_json
from s2_bridge.contract.errors import ConfigError

LIST_HEADERS = ("CONVERSATION", "WORKER", "COORDINATOR ROLE", "WORKER ROLE", "EXPIRES", "REVOKED")


def _check_writable(path: str, option: str) -> None:
    """Check an output path before asking the bridge for tokens that could not be saved."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise ConfigError(path, option, f"directory {directory} does not exist", f"mkdir -m 700 {directory}")
    if not os.access(directory, os.W_OK):
        raise ConfigError(path, option, f"directory {directory} is not writable", "run as its owner")


def write_credentials(config: AdminConfig, result: dict[str, Any], out: str, worker_out: str | None) -> None:
    document = credentials_document(result, config.bridge_url, config.ca_file)
    write_private_json(out, document)
    if worker_out:
        write_private_json(worker_out, {**document, "coordinator_token": ""})


def _summary(verb: str, result: dict[str, Any], out: str, worker_out: str | None) -> str:
    files = f"{out} (both tokens)" + (f", {worker_out} (worker copy)" if worker_out else "")
    return (
        f"{verb} {result['conversation_id']} for worker {result['worker_id']} ({result['worker_role']}), "
        f"expires {result['expires_at']}; wrote {files}"
    )


def _optional(**arguments: Any) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if value is not None}


async def create(bridge: BridgeClient, config: AdminConfig, args: argparse.Namespace) -> int:
    result = await bridge.call(
        "create_conversation",
        my_role=args.my_role,
        partner_role=args.partner_role,
        **_optional(worker_id=args.worker_id, ttl_s=args.ttl_s),
    )
    write_credentials(config, result, args.out, args.worker_out)
    print(_summary("created", result, args.out, args.worker_out))
    return exitcodes.OK


async def rotate(bridge: BridgeClient, config: AdminConfig, args: argparse.Namespace) -> int:
    result = await bridge.call(
        "rotate_conversation", conversation_id=args.conversation_id, **_optional(ttl_s=args.ttl_s)
    )
    write_credentials(config, result, args.out, args.worker_out)
    print(_summary("rotated", result, args.out, args.worker_out))
    return exitcodes.OK


async def revoke(bridge: BridgeClient, config: AdminConfig, args: argparse.Namespace) -> int:
    result = await bridge.call("revoke_conversation", conversation_id=args.conversation_id)
    print(f"revoked {result['conversation_id']} at {result['revoked_at']}")
    return exitcodes.OK


async def listing(bridge: BridgeClient, config: AdminConfig, args: argparse.Namespace) -> int:
    result = await bridge.call("list_conversations", include_revoked=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return exitcodes.OK
    rows = [
        (
            c["conversation_id"],
            c["worker_id"],
            c["coordinator_role"],
            c["worker_role"],
            c["expires_at"],
            "yes" if c.get("revoked") else "no",
        )
        for c in result.get("conversations", [])
    ]
    print(format_table(LIST_HEADERS, rows))
    return exitcodes.OK


ACTIONS = {
    "create-conversation": create,
    "rotate-conversation": rotate,
    "revoke-conversation": revoke,
    "list-conversations": listing,
}


def run(args: argparse.Namespace) -> int:
    config = load_admin_config(args.config)
    for option in ("out", "worker_out"):
        path = getattr(args, option, None)
        if path:
            _check_writable(path, "--" + option.replace("_", "-"))
    bridge = BridgeClient.for_admin(config)  # reads the token file now: a bad one exits 78
    action = ACTIONS[args.admin_command]

    async def main() -> int:
        async with bridge:
            return await action(bridge, config, args)

    return run_command(f"admin {args.admin_command}", main)
