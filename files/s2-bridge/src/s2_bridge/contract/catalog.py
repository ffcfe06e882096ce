"""The bridge's tool catalog: every tool's wire definition (name, description, inputSchema,
outputSchema, annotations), committed as `tool_catalog.json` beside this module so that
`mcp-proxy` answers tools/list without a round trip to the bridge or an MCP SDK import.

Loading it needs json and pathlib only. Regenerating it (server/catalog_gen.py) starts a throwaway
bridge (plain HTTP on 127.0.0.1, a temporary directory) and lists the tools as the admin, a
coordinator, a worker and the lead, because each identity is shown only the tools it may call:

    python -m s2_bridge.server.catalog_gen --write    # rewrite tool_catalog.json from the live server
    python -m s2_bridge.server.catalog_gen --check    # exit 1 when the committed file is stale

tests/test_catalog.py fails when the committed file differs from what a live bridge serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from s2_bridge.contract import permissions

CATALOG_PATH = Path(__file__).with_name("tool_catalog.json")
WIRE_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
REGENERATE = "python -m s2_bridge.server.catalog_gen --write"


class CatalogError(Exception):
    """The catalog file is missing or broken, or the live bridge disagrees with itself."""


def load(path: Path = CATALOG_PATH) -> list[dict[str, Any]]:
    """The committed tool definitions, in the permission table's order."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tools = document["tools"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CatalogError(f"{path}: unreadable tool catalog ({exc}); fix: reinstall, or run {REGENERATE}") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise CatalogError(f"{path}: 'tools' is not a list of tool objects; fix: run {REGENERATE}")
    return tools


def tools_for(kind: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The definitions this identity may call (permissions.TOOL_CALLERS), in the table's order."""
    by_name = {tool["name"]: tool for tool in tools}
    return [by_name[name] for name in permissions.tools_for(kind) if name in by_name]


def ordered(tools: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The permission table's order, then any tool the table does not know, by name."""
    known = [tools[name] for name in permissions.TOOL_CALLERS if name in tools]
    extra = [tools[name] for name in sorted(tools) if name not in permissions.TOOL_CALLERS]
    return known + extra


def dumps(tools: list[dict[str, Any]]) -> str:
    document = {"generated_by": REGENERATE, "tools": tools}
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def difference(committed: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[str]:
    """Human-readable lines naming what differs (empty when equal)."""
    old = {tool["name"]: tool for tool in committed}
    new = {tool["name"]: tool for tool in live}
    lines = [f"missing from the catalog: {name}" for name in new if name not in old]
    lines += [f"no longer served: {name}" for name in old if name not in new]
    for name in new.keys() & old.keys():
        keys = sorted(k for k in set(old[name]) | set(new[name]) if old[name].get(k) != new[name].get(k))
        if keys:
            lines.append(f"{name}: {', '.join(keys)} differ")
    if not lines and [t["name"] for t in committed] != [t["name"] for t in live]:
        lines.append("the order differs")
    return sorted(lines)
