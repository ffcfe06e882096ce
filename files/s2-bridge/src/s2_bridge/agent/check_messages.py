"""`s2-bridge check-messages`: show the unread messages of a worker, a coordinator or the lead.

Peeks by default: the messages stay unread for the agent, which acknowledges them itself
(ack_through) once it has handled them. `--consume` marks exactly the shown messages read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from s2_bridge.agent.client import BridgeClient
from s2_bridge.agent.oneshot import run_command
from s2_bridge.contract import exitcodes
from s2_bridge.contract.credentials import Credentials, load_credentials
from s2_bridge.contract.logsafe import escape_controls

PREVIEW_CHARS = 200


def message_line(message: dict[str, Any]) -> str:
    """One line per message: id, sender's role (and worker id when a worker sent it, which
    is how the lead tells its workers apart), action type, the first 200 characters."""
    text = " ".join(str(message.get("message", "")).split())  # newlines would break one-line output
    if len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS] + "..."
    sender = str(message.get("from_role", "?"))
    if message.get("from_worker") is not None:
        sender += f" (worker {message['from_worker']})"
        if message.get("to_worker") is not None:
            sender += f" to worker {message['to_worker']}"
    reply = f" (reply to #{message['reply_to']})" if message.get("reply_to") is not None else ""
    line = f"#{message['id']} from {sender} [{message.get('action_type', '?')}]{reply} {text}"
    return escape_controls(line)


async def check(credentials: Credentials, *, consume: bool) -> dict[str, Any]:
    async with BridgeClient.for_credentials(credentials) as bridge:
        inbox = await bridge.call("check_messages")
        messages = inbox.get("messages", [])
        if consume and messages:
            # Acknowledge exactly what was shown; anything that arrived since stays unread.
            acked = await bridge.call("check_messages", ack_through=messages[-1]["id"], limit=1)
            inbox = {**inbox, "acked_through": acked["acked_through"], "unread": acked["unread"]}
    return {**inbox, "consumed": consume and bool(messages)}


def run(args: argparse.Namespace) -> int:
    credentials = load_credentials(args.credentials)

    async def main() -> int:
        inbox = await check(credentials, consume=args.consume)
        if args.json:
            print(json.dumps(inbox, indent=2))
            return exitcodes.OK
        for message in inbox.get("messages", []):
            print(message_line(message))
        shown = len(inbox.get("messages", []))
        if shown == 0:
            print("no unread messages", file=sys.stderr)
        elif inbox.get("consumed"):
            print(f"marked {shown} message(s) read; {inbox.get('unread', 0)} still unread", file=sys.stderr)
        return exitcodes.OK

    return run_command("check-messages", main)
