"""The `s2-bridge` command: argument parsing only; each subcommand lives in its own module.

Tokens are never accepted on the command line (ps shows it to every user): every command
reads them from a 0600 file named by --config or --credentials.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from s2_bridge import __version__, exitcodes
from s2_bridge.errors import ConfigError

# subcommand -> module whose run(args) -> int implements it
COMMANDS = {
    "serve": "s2_bridge.serve",
    "keepalive": "s2_bridge.keepalive",
    "watchdog": "s2_bridge.watchdog",
    "check-messages": "s2_bridge.check_messages",
    "status": "s2_bridge.status",
    "mcp-proxy": "s2_bridge.proxy",
    "admin": "s2_bridge.admin",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s2-bridge", description="S2 fleet MCP bridge runtime")
    parser.add_argument("--version", action="version", version=f"s2-bridge {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the bridge server")
    serve.add_argument("--config", required=True, help="bridge config file (TOML)")
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP (tests on loopback only); ignores [tls]",
    )

    keepalive = sub.add_parser("keepalive", help="send heartbeats for one worker")
    keepalive.add_argument("--credentials", required=True, help="the worker's credentials file (0600 JSON)")
    keepalive.add_argument("--interval", type=float, default=15.0, help="seconds between heartbeats")

    watchdog = sub.add_parser("watchdog", help="watch worker heartbeats, alert and reassign tasks")
    watchdog.add_argument("--config", required=True, help="admin client config file (TOML)")

    check = sub.add_parser("check-messages", help="show unread messages (peek unless --consume)")
    check.add_argument("--credentials", required=True)
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument("--consume", action="store_true", help="mark the shown messages as read")

    status = sub.add_parser("status", help="print the fleet table")
    status.add_argument("--config", required=True, help="admin client config file (TOML)")
    status.add_argument("--json", action="store_true")

    proxy = sub.add_parser("mcp-proxy", help="stdio MCP server that forwards to the bridge")
    proxy.add_argument("--credentials", required=True)

    admin = sub.add_parser("admin", help="create, rotate, revoke and list conversations")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    create = admin_sub.add_parser("create-conversation")
    create.add_argument("--config", required=True)
    create.add_argument("--my-role", required=True)
    create.add_argument("--partner-role", required=True)
    create.add_argument("--worker-id")
    create.add_argument("--ttl-s", type=int)
    create.add_argument("--out", required=True, help="full credentials file (both tokens), written 0600")
    create.add_argument("--worker-out", help="worker's copy (no coordinator token), written 0600")
    rotate = admin_sub.add_parser("rotate-conversation")
    rotate.add_argument("--config", required=True)
    rotate.add_argument("--conversation-id", required=True)
    rotate.add_argument("--ttl-s", type=int)
    rotate.add_argument("--out", required=True)
    rotate.add_argument("--worker-out")
    revoke = admin_sub.add_parser("revoke-conversation")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("--conversation-id", required=True)
    listing = admin_sub.add_parser("list-conversations")
    listing.add_argument("--config", required=True)
    listing.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # httpx2 logs every request URL at INFO; keep the journal to our own lines.
    for noisy in ("httpx2", "httpcore2", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args))
    except ConfigError as exc:
        print(f"s2-bridge {args.command}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    except KeyboardInterrupt:
        return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
