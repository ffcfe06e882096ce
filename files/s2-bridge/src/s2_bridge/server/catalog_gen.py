"""Regenerates and checks the committed tool catalog (see contract/catalog.py) against a live bridge.

    python -m s2_bridge.server.catalog_gen --write    # rewrite tool_catalog.json from the live server
    python -m s2_bridge.server.catalog_gen --check    # exit 1 when the committed file is stale

It imports the MCP SDK (through BridgeClient), so only this command and the tests load it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from s2_bridge.agent.client import BridgeClient
from s2_bridge.contract.catalog import (
    CATALOG_PATH,
    REGENERATE,
    WIRE_KEYS,
    CatalogError,
    difference,
    dumps,
    load,
    ordered,
)


def wire_form(tool: Any) -> dict[str, Any]:
    """An SDK Tool as it travels in tools/list, limited to WIRE_KEYS."""
    dumped = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    return {key: dumped[key] for key in WIRE_KEYS if key in dumped}


async def list_as(bridge_url: str, token: str, ca_file: str | None) -> list[dict[str, Any]]:
    """The tools the bridge shows the holder of `token`."""
    async with BridgeClient(bridge_url, token, ca_file=ca_file) as bridge:
        return [wire_form(tool) for tool in await bridge.list_tools()]


async def identity_tokens(bridge_url: str, admin_token: str, ca_file: str | None) -> dict[str, str]:
    """admin, coordinator and worker (a new conversation) and, when the bridge has rotate_lead,
    the lead. Creates a conversation and rotates the lead token: run against a test bridge."""
    async with BridgeClient(bridge_url, admin_token, ca_file=ca_file) as admin:
        created = await admin.call(
            "create_conversation", my_role="s2-orchestrator", partner_role="worker-catalog", worker_id="catalog"
        )
        names = {tool.name for tool in await admin.list_tools()}
        lead = await admin.call("rotate_lead") if "rotate_lead" in names else {}
    found = {"admin": admin_token, "coordinator": created["coordinator_token"], "worker": created["worker_token"]}
    if lead.get("lead_token"):
        found["lead"] = lead["lead_token"]
    return found


async def collect(
    bridge_url: str, tokens: dict[str, str], ca_file: str | None
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """(the merged catalog, the tool names each identity was shown). A tool whose definition
    differs between identities is a CatalogError: the catalog holds one per tool."""
    merged: dict[str, dict[str, Any]] = {}
    shown: dict[str, list[str]] = {}
    for kind, token in tokens.items():
        listed = await list_as(bridge_url, token, ca_file)
        shown[kind] = [tool["name"] for tool in listed]
        for tool in listed:
            known = merged.setdefault(tool["name"], tool)
            if known != tool:
                raise CatalogError(f"the bridge describes {tool['name']!r} differently to the {kind}")
    return ordered(merged), shown


@contextmanager
def throwaway_bridge() -> Iterator[tuple[str, str]]:
    """A bridge on a free loopback port over plain HTTP in a temporary directory: (url, admin token)."""
    with tempfile.TemporaryDirectory(prefix="s2-catalog-") as folder:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = Path(folder) / "bridge.toml"
        token_file = Path(folder) / "admin.token"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\n[storage]\npath = "{folder}/bridge.db"\n'
            f'[auth]\nadmin_token_file = "{token_file}"\n'
        )
        log = (Path(folder) / "bridge.log").open("wb")
        args = [sys.executable, "-m", "s2_bridge.cli", "serve", "--config", str(config), "--insecure-http"]
        process = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        tail = Path(log.name).read_text(errors="replace")[-2000:]
                        raise CatalogError(f"the throwaway bridge did not start:\n{tail}") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/mcp", token_file.read_text().strip()
        finally:
            process.terminate()
            process.wait(timeout=20)
            log.close()


async def live_catalog() -> list[dict[str, Any]]:
    with throwaway_bridge() as (url, admin_token):
        tokens = await identity_tokens(url, admin_token, None)
        tools, _ = await collect(url, tokens, None)
    return tools


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m s2_bridge.server.catalog_gen", description="check or rewrite the tool catalog"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite {CATALOG_PATH.name} from a live bridge")
    action.add_argument("--check", action="store_true", help="exit 1 when the committed catalog is stale (default)")
    args = parser.parse_args(argv)
    live = asyncio.run(live_catalog())
    if args.write:
        CATALOG_PATH.write_text(dumps(live), encoding="utf-8")
        print(f"wrote {len(live)} tools to {CATALOG_PATH}", file=sys.stderr)
        return 0
    try:
        changes = difference(load(), live)
    except CatalogError as exc:
        changes = [str(exc)]
    for line in changes:
        print(line, file=sys.stderr)
    if changes:
        print(f"the tool catalog is stale; fix: {REGENERATE}", file=sys.stderr)
        return 1
    print(f"the tool catalog matches the live bridge ({len(live)} tools)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
