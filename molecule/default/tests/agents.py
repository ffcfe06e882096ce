"""Driving a fleet host the way its agent does: as the agent user, through the s2-bridge MCP
server entry in the agent's own client config (the real stdio proxy), with the MCP Python
client. Shared by the default and wsl scenarios' tests."""

from __future__ import annotations

import json
import shlex
from typing import Any

from s2_bridge.contract.tokens import TOKEN_RE

VENV_PYTHON = "/opt/s2-bridge/venv/bin/python"

# Runs inside a container as the agent: start the s2-bridge MCP server the way the agent's client
# would (command and args from its own config), call the planned tools in order, print results.
AGENT_SCRIPT = r"""
import asyncio, json, os, sys, tomllib
from mcp import Client, StdioServerParameters
kind, plan = sys.argv[1], json.loads(sys.argv[2])
home = os.path.expanduser("~")
if kind == "codex":
    with open(f"{home}/.codex/config.toml", "rb") as handle:
        entry = tomllib.load(handle)["mcp_servers"]["s2-bridge"]
else:
    with open(f"{home}/.claude.json") as handle:
        entry = json.load(handle)["mcpServers"]["s2-bridge"]
async def main():
    results = []
    async with Client(StdioServerParameters(command=entry["command"], args=entry["args"])) as client:
        for tool, arguments in plan:
            result = await client.call_tool(tool, arguments)
            text = "".join(getattr(block, "text", "") for block in result.content)
            results.append(json.loads(text[text.index("{"):]) if result.is_error else result.structured_content)
    print(json.dumps(results))
asyncio.run(main())
"""


def as_agent(host, *argv: str, stdin: str | None = None):
    command = "runuser -u agent -- " + " ".join(shlex.quote(a) for a in argv)
    if stdin is not None:
        command = f"printf %s {shlex.quote(stdin)} | {command}"
    return host.run(command)


def agent_calls(host, kind: str, plan: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    result = as_agent(host, VENV_PYTHON, "-c", AGENT_SCRIPT, kind, json.dumps(plan))
    assert result.rc == 0, result.stderr
    assert not TOKEN_RE.search(result.stdout + result.stderr)
    return json.loads(result.stdout)
