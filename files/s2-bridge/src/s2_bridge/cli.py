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

from s2_bridge import __version__
from s2_bridge.contract import exitcodes
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.logsafe import SafeFormatter

# subcommand -> module whose run(args) -> int implements it
COMMANDS = {
    "serve": "s2_bridge.server.serve",
    "keepalive": "s2_bridge.agent.keepalive",
    "supervise": "s2_bridge.agent.supervise",
    "watchdog": "s2_bridge.agent.watchdog",
    "check-messages": "s2_bridge.agent.check_messages",
    "status": "s2_bridge.agent.status",
    "mcp-proxy": "s2_bridge.agent.proxy",
    "hook": "s2_bridge.agent.hook",
    "codex-trust-hooks": "s2_bridge.agent.codex_trust",
    "admin": "s2_bridge.agent.admin",
    "backup": "s2_bridge.server.backup",
    "restore": "s2_bridge.server.restore",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; `command` (the subcommand about to run) lets a heavy one add its options lazily."""
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

    hook = sub.add_parser("hook", help="agent hook: new bridge messages and open tasks into the agent's context")
    hook.add_argument("--credentials", required=True)
    hook.add_argument("--client", default="claude-code", choices=["claude-code", "codex"], help="the agent's client")
    hook.add_argument(
        "--timeout-s", type=_hook_timeout, default=1.5, help="one deadline for the whole run, 0.2-10 s (default 1.5)"
    )

    trust = sub.add_parser("codex-trust-hooks", help="trust the s2-bridge hooks in Codex (through codex app-server)")
    if command == "codex-trust-hooks":  # its options live in its module; nothing else pays for the import
        importlib.import_module(COMMANDS[command]).add_arguments(trust)

    _add_supervise(sub)
    _add_admin(sub)
    _add_backup(sub)
    return parser


def _add_supervise(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    supervise = sub.add_parser("supervise", help="keep `keepalive` running where systemd does not (WSL)")
    supervise.add_argument(
        "action",
        choices=["start", "restart", "replace", "stop", "status", "run"],
        help="start/replace: detached; restart: the keepalive now; stop; status: exit 3 when not running; run: here",
    )
    supervise.add_argument("--credentials", required=True, help="the worker's credentials file (for the keepalive)")
    supervise.add_argument("--interval", type=float, default=15.0, help="the keepalive's seconds between heartbeats")
    supervise.add_argument("--user", help="the agent user: whose home holds the files; a root `start` runs as it")
    supervise.add_argument("--run-dir", help="lock and pid file (default ~USER/.s2/run)")
    supervise.add_argument("--log-dir", help="s2-keepalive.log (default ~USER/.s2/log)")
    supervise.add_argument("--backoff-min-s", type=int, default=2, help="first restart delay; doubles after each")
    supervise.add_argument("--backoff-max-s", type=int, default=300, help="longest restart delay")
    supervise.add_argument("--log-max-bytes", type=int, default=1048576, help="rotate the log past this size")


def _add_backup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser("backup", help="copy the bridge's database while it serves (one consistent snapshot)")
    backup.add_argument("--config", required=True, help="bridge config file (TOML): the database is storage.path")
    backup.add_argument("--output", required=True, help="the backup file to write (0600)")
    backup.add_argument("--force", action="store_true", help="replace --output if it exists")
    restore = sub.add_parser("restore", help="replace the bridge's database with a backup (the bridge stopped)")
    restore.add_argument("--config", required=True, help="bridge config file (TOML): the database is storage.path")
    restore.add_argument("--from", dest="source", required=True, metavar="FILE", help="the backup file")


def _add_admin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _hook_timeout(text: str) -> float:
    from s2_bridge.agent.hook import timeout_arg  # noqa: PLC0415 - only `hook` pays for this import

    return timeout_arg(text)


def _subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand: the first word that is not an option or its value."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        args = build_parser(_subcommand(words)).parse_args(argv)
    except SystemExit as exc:
        # Claude Code reads exit 2 from a hook as "block the prompt" (or "do not stop"): a
        # mistyped hook command must cost the agent nothing, so it exits 1 instead.
        if exc.code == exitcodes.USAGE and _subcommand(words) == "hook":
            return exitcodes.UNEXPECTED
        raise
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
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
