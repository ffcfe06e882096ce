"""`s2-bridge mcp-proxy` as a real subprocess, driven by the real MCP stdio client, forwarding
to a real bridge."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Bridge, call, connect, create_conversation, result_of
from fixtures_client import as_coordinator, cli_env, write_worker_credentials
from mcp import Client, StdioServerParameters
from s2_bridge.credentials import credentials_document, write_private_json
from s2_bridge.proxy import COORDINATOR_TOOLS, WORKER_TOOLS

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def proxy(credentials: Path, mode: str = "auto") -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "s2_bridge.cli", "mcp-proxy", "--credentials", str(credentials)],
        env=cli_env(),
    )
    async with Client(params, mode=mode) as client:
        yield client


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_proxy_mirrors_the_worker_tools_and_forwards_send_and_check(
    bridge: Bridge, tmp_path: Path, mode: str
) -> None:
    created = await create_conversation(bridge, "3")
    creds = write_worker_credentials(bridge, created, tmp_path / "s2-worker-3-credentials.json")
    async with connect(bridge, created["worker_token"]) as direct:
        bridge_tools = {tool.name: tool for tool in (await direct.list_tools()).tools}

    async with proxy(creds, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == set(WORKER_TOOLS)
        for name, tool in tools.items():  # same names, descriptions and parameters as the bridge
            assert tool.description == bridge_tools[name].description
            assert tool.input_schema == bridge_tools[name].input_schema

        sent = result_of(
            await client.call_tool("send_to_partner", {"message": "tests pass", "action_type": "complete"})
        )
        assert sent["message_id"] > 0

        await as_coordinator(created, bridge, "send_to_partner", message="next: lint", action_type="question")
        first = await client.call_tool("check_messages", {})
        assert not first.is_error
        assert [m["message"] for m in first.structured_content["messages"]] == ["next: lint"]
        # Peek: reading through the proxy does not consume either.
        again = result_of(await client.call_tool("check_messages", {}))
        assert [m["message"] for m in again["messages"]] == ["next: lint"]
        acked = result_of(await client.call_tool("check_messages", {"ack_through": again["messages"][-1]["id"]}))
        assert acked["messages"] == [] and acked["unread"] == 0

    async with connect(bridge, created["coordinator_token"]) as coordinator:
        inbox = await call(coordinator, "check_messages")
    assert [(m["message"], m["action_type"], m["from_side"]) for m in inbox["messages"]] == [
        ("tests pass", "complete", "worker")
    ]


async def test_bridge_errors_come_back_as_structured_is_error_results(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "4")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy(creds) as client:
        await client.list_tools()
        bad_status = await client.call_tool("update_my_status", {"status": "sleeping"})
        assert bad_status.is_error
        error = json.loads(bad_status.content[0].text)["error"]
        assert error["code"] == "invalid_argument" and error["field"] == "status"

        missing = await client.call_tool("update_task", {"task_id": 999999, "state": "done"})
        assert missing.is_error
        assert "code" in json.loads(missing.content[0].text)["error"]

        admin_only = await client.call_tool("fleet_status", {})
        assert admin_only.is_error
        assert json.loads(admin_only.content[0].text)["error"]["code"] == "unknown_tool"


async def test_proxy_survives_a_bridge_restart(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "5")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy(creds) as client:
        assert not (await client.call_tool("heartbeat", {})).is_error
        plain_bridge.stop()
        down = await client.call_tool("heartbeat", {})
        assert down.is_error
        assert json.loads(down.content[0].text)["error"]["code"] == "bridge_unavailable"
        plain_bridge.start()
        back = await client.call_tool("heartbeat", {"status": "working"})
        assert not back.is_error, back.content
        assert back.structured_content["ok"] is True


async def test_coordinator_credentials_get_the_coordinator_tools(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "6")
    document = credentials_document(created, plain_bridge.url, None) | {"worker_token": ""}
    creds = tmp_path / "coordinator.json"
    write_private_json(str(creds), document)
    async with proxy(creds) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == set(COORDINATOR_TOOLS)
        fleet = result_of(await client.call_tool("fleet_status", {}))
        assert [w["worker_id"] for w in fleet["workers"]] == ["6"]


async def test_revoked_token_is_reported_per_call_and_a_rotated_file_is_picked_up(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(plain_bridge, "7")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy(creds) as client:
        assert not (await client.call_tool("heartbeat", {})).is_error
        async with connect(plain_bridge, plain_bridge.admin_token) as admin:
            rotated = await call(admin, "rotate_conversation", conversation_id=created["conversation_id"])
        refused = await client.call_tool("heartbeat", {})
        assert refused.is_error
        error = json.loads(refused.content[0].text)["error"]
        assert error["code"] == "unauthenticated" and str(creds) in error["fix"]
        write_worker_credentials(plain_bridge, rotated, creds)
        assert not (await client.call_tool("heartbeat", {})).is_error


def test_stdout_carries_only_mcp_frames(tmp_path: Path, plain_bridge: Bridge) -> None:
    """Raw pipe check: every stdout line is a JSON-RPC message; the logs went to stderr."""
    created = anyio.run(create_conversation, plain_bridge, "8")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "heartbeat", "arguments": {}}},
    ]
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    process = subprocess.Popen(
        [sys.executable, "-m", "s2_bridge.cli", "--log-level", "DEBUG", "mcp-proxy", "--credentials", str(creds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(stdin)
    process.stdin.flush()
    replies: dict[int, Any] = {}
    while len(replies) < 3:
        line = process.stdout.readline()
        assert line, "proxy closed stdout early"
        message = json.loads(line)  # anything but a JSON-RPC frame would fail here
        assert message["jsonrpc"] == "2.0"
        if "id" in message:
            replies[message["id"]] = message
    rest, stderr = process.communicate(timeout=30)  # closes stdin: the proxy ends
    assert process.returncode == 0, stderr
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert {t["name"] for t in replies[2]["result"]["tools"]} == set(WORKER_TOOLS)
    assert replies[3]["result"]["structuredContent"]["ok"] is True
    assert "proxying stdio to" in stderr
    assert created["worker_token"] not in stderr + rest


async def test_long_poll_wait_is_forwarded(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "9")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy(creds) as client:
        quiet = result_of(await client.call_tool("wait_for_messages", {"timeout_s": 0.5}))
        assert quiet == {"messages": [], "timed_out": True}
        received: dict[str, Any] = {}

        async def wait() -> None:
            received.update(result_of(await client.call_tool("wait_for_messages", {"timeout_s": 30})))

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.sleep(1.0)
            await as_coordinator(created, plain_bridge, "send_to_partner", message="wake up")
        assert received["timed_out"] is False
        assert [m["message"] for m in received["messages"]] == ["wake up"]
