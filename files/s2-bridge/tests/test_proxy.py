"""`s2-bridge mcp-proxy` as a real subprocess, driven by the real MCP stdio client and by raw
JSON-RPC frames, forwarding to a real bridge (TLS where the identity of the server matters)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Bridge, call, connect, create_conversation, free_port, result_of, worker_file
from fixtures_client import admin_call, as_coordinator, cli_env, write_worker_credentials
from mcp import Client, StdioServerParameters
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from s2_bridge import __version__
from s2_bridge.agent import proxy
from s2_bridge.contract import catalog
from s2_bridge.contract.credentials import credentials_document, write_private_json
from s2_bridge.contract.permissions import tools_for
from s2_bridge.server import catalog_gen

pytestmark = pytest.mark.anyio

PROXY = [sys.executable, "-m", "s2_bridge.cli", "mcp-proxy", "--credentials"]
WORKER_TOOLS = tools_for("worker")
COORDINATOR_TOOLS = tools_for("coordinator")
LEAD_TOOLS = tools_for("lead")


@asynccontextmanager
async def proxy_client(credentials: Path, mode: str = "auto") -> AsyncIterator[Client]:
    params = StdioServerParameters(command=PROXY[0], args=[*PROXY[1:], str(credentials)], env=cli_env())
    async with Client(params, mode=mode) as client:
        yield client


class RawProxy:
    """The proxy process driven frame by frame; stdout lines are parsed as they arrive."""

    def __init__(self, credentials: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "s2_bridge.cli", *extra, "mcp-proxy", "--credentials", str(credentials)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._errors: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._errors.extend(self.process.stderr)

    @property
    def stderr(self) -> bytes:
        return b"".join(self._errors)

    def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, frame: dict[str, Any]) -> None:
        self.send_raw(json.dumps(frame).encode() + b"\n")

    def request(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.send(frame)

    def reply(self, timeout: float = 30.0) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        message = json.loads(line)  # anything but a JSON frame on stdout fails here
        assert message["jsonrpc"] == "2.0", message
        return message

    def ask(self, request_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.request(request_id, method, params)
        reply = self.reply()
        assert reply.get("id") == request_id, reply
        return reply

    def initialize(self, version: str = "2025-06-18") -> dict[str, Any]:
        params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
        result = self.ask("init", "initialize", params)["result"]
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def close(self, timeout: float = 30.0) -> int:
        """Close stdin (the MCP way to stop a stdio server) and wait for the exit code; every
        line the proxy wrote is in `lines` afterwards."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


@contextmanager
def raw_proxy(credentials: Path, *extra: str) -> Iterator[RawProxy]:
    raw = RawProxy(credentials, *extra)
    try:
        yield raw
    finally:
        if raw.process.poll() is None:
            raw.process.kill()
            raw.process.wait()


async def lead_file(bridge: Bridge, path: Path) -> Path:
    rotated = await admin_call(bridge, "rotate_lead")
    write_private_json(str(path), credentials_document(rotated, bridge.url, bridge.ca_file))
    return path


async def send_as_coordinator(created: dict[str, Any], bridge: Bridge, message: str) -> None:
    await as_coordinator(created, bridge, "send_to_partner", message=message)


def test_handshake_versions_are_the_sdk_values() -> None:
    """The proxy keeps a copy (importing mcp_types costs ~0.35 s); it must not drift."""
    assert proxy.HANDSHAKE_PROTOCOL_VERSIONS == HANDSHAKE_PROTOCOL_VERSIONS


def test_the_front_imports_no_sdk() -> None:
    """What runs before the first answer loads neither the MCP SDK, pydantic nor httpx2."""
    code = (
        "import sys; import s2_bridge.cli, s2_bridge.agent.proxy, s2_bridge.contract.credentials; "
        "heavy = [m for m in ('mcp', 'mcp_types', 'pydantic', 'httpx2', 'anyio', 'asyncio') if m in sys.modules]; "
        "print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=cli_env())
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_initialize_and_tools_list_are_answered_with_the_bridge_down(tmp_path: Path, pki: Any, scheme: str) -> None:
    """No round trip: nothing listens on the bridge's port, and the answers still come."""
    url = f"{scheme}://127.0.0.1:{free_port()}/mcp"
    creds = worker_file(tmp_path / "c.json", url, pki.ca_file if scheme == "https" else None)
    with raw_proxy(creds) as raw:
        result = raw.initialize("2025-06-18")
        assert result["protocolVersion"] == "2025-06-18"
        assert result["capabilities"] == {"tools": {"listChanged": False}}
        assert result["serverInfo"] == {"name": "s2-bridge-proxy", "version": __version__}
        assert "worker 3" in result["instructions"]
        tools = raw.ask(2, "tools/list")["result"]["tools"]
        assert tools == catalog.tools_for("worker", catalog.load())
        assert [tool["name"] for tool in tools] == list(WORKER_TOOLS)
        assert raw.ask(3, "ping") == {"jsonrpc": "2.0", "id": 3, "result": {}}
        down = raw.ask(4, "tools/call", {"name": "heartbeat", "arguments": {}})["result"]
        assert down["isError"] is True
        assert json.loads(down["content"][0]["text"])["error"]["code"] == "bridge_unavailable"
        assert raw.close() == 0
    assert b"s2w_" not in raw.stderr


@pytest.mark.parametrize(
    ("requested", "answered"),
    [("2024-11-05", "2024-11-05"), ("2025-11-25", "2025-11-25"), ("2026-07-28", "2025-11-25"), ("1999", "2025-11-25")],
)
def test_protocol_version_negotiation(tmp_path: Path, requested: str, answered: str) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    with raw_proxy(creds) as raw:
        assert raw.initialize(requested)["protocolVersion"] == answered
        assert raw.close() == 0


def test_malformed_and_unknown_frames_get_json_rpc_errors(tmp_path: Path) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")

    def error_of(reply: dict[str, Any]) -> tuple[Any, int]:
        return reply["id"], reply["error"]["code"]

    with raw_proxy(creds) as raw:
        raw.send_raw(b"{not json\n")
        assert error_of(raw.reply()) == (None, -32700)
        raw.send_raw(b"[1, 2]\n")  # a batch: not supported
        assert error_of(raw.reply()) == (None, -32600)
        raw.send({"id": 5, "method": "ping"})  # no "jsonrpc": "2.0"
        assert error_of(raw.reply()) == (5, -32600)
        raw.send({"jsonrpc": "2.0", "id": [1], "method": "ping"})
        assert error_of(raw.reply()) == (None, -32600)
        raw.send({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": ["heartbeat"]})
        assert error_of(raw.reply()) == (6, -32602)
        raw.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"arguments": {}}})
        assert error_of(raw.reply()) == (7, -32602)
        # server/discover: the SDK's auto mode falls back to initialize on -32601
        reply = raw.ask("d", "server/discover", {})
        assert reply["error"] == {"code": -32601, "message": "Method not found", "data": "server/discover"}
        assert error_of(raw.ask(8, "resources/list")) == (8, -32601)
        # Notifications are never answered, known or not, well-formed or not.
        raw.send({"jsonrpc": "2.0", "method": "notifications/whatever", "params": {}})
        raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": "junk"})
        raw.send({"jsonrpc": "2.0", "id": 99, "result": {}})  # an answer to a request never sent
        raw.send_raw(b"\n   \n")  # blank lines
        # A frame over the size bound is dropped whole, and the next one is read normally.
        raw.send_raw(b"x" * (proxy.MAX_FRAME_BYTES + 10) + b"\n")
        assert error_of(raw.reply()) == (None, -32700)
        assert raw.ask(9, "ping")["result"] == {}
        assert raw.close() == 0


def test_unknown_tool_is_a_structured_is_error_result(tmp_path: Path) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    with raw_proxy(creds) as raw:
        for name in ("fleet_status", "create_conversation", "no_such_tool"):
            result = raw.ask(name, "tools/call", {"name": name, "arguments": {}})["result"]
            assert result["isError"] is True
            error = json.loads(result["content"][0]["text"])["error"]
            assert error["code"] == "unknown_tool" and error["field"] == "name"
            assert "update_task" in error["fix"]
        assert raw.close() == 0


def test_sigterm_stops_the_proxy_with_exit_0(tmp_path: Path) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    with raw_proxy(creds) as raw:
        raw.initialize()
        raw.process.send_signal(signal.SIGTERM)
        assert raw.process.wait(timeout=20) == 0


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_proxy_mirrors_the_worker_tools_and_forwards_send_and_check(
    bridge: Bridge, tmp_path: Path, mode: str
) -> None:
    """The SDK's own stdio client, both connect modes (auto probes server/discover first),
    through the proxy to the real TLS bridge."""
    created = await create_conversation(bridge, "3")
    creds = write_worker_credentials(bridge, created, tmp_path / "s2-worker-3-credentials.json")
    async with connect(bridge, created["worker_token"]) as direct:
        bridge_tools = {tool.name: tool for tool in (await direct.list_tools()).tools}

    async with proxy_client(creds, mode) as client:
        assert client.protocol_version in proxy.HANDSHAKE_PROTOCOL_VERSIONS
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == set(WORKER_TOOLS)
        for name, tool in tools.items():  # same names, descriptions and parameters as the bridge
            assert tool.description == bridge_tools[name].description
            assert tool.input_schema == bridge_tools[name].input_schema
            assert tool.output_schema == bridge_tools[name].output_schema

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


async def test_each_identity_gets_exactly_the_tools_the_bridge_shows_it(bridge: Bridge, tmp_path: Path) -> None:
    """Worker, coordinator and lead: the proxy's catalog-backed list equals the live bridge's
    own list for the same token, definition for definition."""
    created = await create_conversation(bridge, "4")
    worker = write_worker_credentials(bridge, created, tmp_path / "worker.json")
    coordinator = tmp_path / "coordinator.json"
    document = credentials_document(created, bridge.url, bridge.ca_file) | {"worker_token": ""}
    write_private_json(str(coordinator), document)
    lead = await lead_file(bridge, tmp_path / "s2-lead-credentials.json")
    expected = {worker: WORKER_TOOLS, coordinator: COORDINATOR_TOOLS, lead: LEAD_TOOLS}
    for path, names in expected.items():
        token = json.loads(path.read_text())
        token = token.get("lead_token") or token["worker_token"] or token["coordinator_token"]
        live = await catalog_gen.list_as(bridge.url, token, bridge.ca_file)
        with raw_proxy(path) as raw:
            raw.initialize()
            listed = raw.ask(1, "tools/list")["result"]["tools"]
            assert raw.close() == 0
        assert [tool["name"] for tool in listed] == list(names), path.name
        assert {tool["name"]: tool for tool in listed} == {tool["name"]: tool for tool in live}, path.name


async def test_lead_credentials_reach_the_whole_fleet(bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(bridge, "5")
    lead = await lead_file(bridge, tmp_path / "s2-lead-credentials.json")
    async with proxy_client(lead) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == set(LEAD_TOOLS)
        fleet = result_of(await client.call_tool("fleet_status", {}))
        assert "5" in [w["worker_id"] for w in fleet["workers"]]
        sent = result_of(await client.call_tool("send_to_partner", {"message": "hello 5", "to": "5"}))
        assert "error" not in sent, sent
    async with connect(bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages")
    assert [m["message"] for m in inbox["messages"]] == ["hello 5"]


async def test_bridge_errors_come_back_as_structured_is_error_results(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "4")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy_client(creds) as client:
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
        error = json.loads(admin_only.content[0].text)["error"]
        assert error["code"] == "unknown_tool" and error["field"] == "name"


async def test_proxy_survives_a_bridge_restart(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "5")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy_client(creds) as client:
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
    async with proxy_client(creds) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == set(COORDINATOR_TOOLS)
        fleet = result_of(await client.call_tool("fleet_status", {}))
        assert [w["worker_id"] for w in fleet["workers"]] == ["6"]


async def test_revoked_token_is_reported_per_call_and_a_rotated_file_is_picked_up(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(plain_bridge, "7")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    async with proxy_client(creds) as client:
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
    with raw_proxy(creds, "--log-level", "DEBUG") as raw:
        raw.initialize()
        assert {t["name"] for t in raw.ask(2, "tools/list")["result"]["tools"]} == set(WORKER_TOOLS)
        beat = raw.ask(3, "tools/call", {"name": "heartbeat", "arguments": {}})
        assert beat["result"]["structuredContent"]["ok"] is True
        assert raw.close() == 0
    stderr = raw.stderr.decode()
    assert "proxying stdio to" in stderr
    assert created["worker_token"] not in stderr
    assert raw.lines.empty()


def test_calls_run_concurrently_and_a_cancelled_call_is_never_answered(tmp_path: Path, plain_bridge: Bridge) -> None:
    """A parked wait_for_messages holds up neither a ping nor another call; cancelling it
    stops it without an answer; a call in flight at end of input still answers."""
    created = anyio.run(create_conversation, plain_bridge, "9")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    with raw_proxy(creds) as raw:
        raw.initialize()
        raw.request("long", "tools/call", {"name": "wait_for_messages", "arguments": {"timeout_s": 30}})
        assert raw.ask("p", "ping")["result"] == {}
        beat = raw.ask("b", "tools/call", {"name": "heartbeat", "arguments": {}})
        assert beat["result"]["isError"] is False
        raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "long"}})
        assert raw.ask("b2", "tools/call", {"name": "heartbeat", "arguments": {}})["result"]["isError"] is False
        # A message now would wake a wait still parked; "long" must stay silent all the same.
        anyio.run(send_as_coordinator, created, plain_bridge, "wake up")
        woken = raw.ask("w", "tools/call", {"name": "wait_for_messages", "arguments": {"after_id": 0}})
        assert [m["message"] for m in woken["result"]["structuredContent"]["messages"]] == ["wake up"]
        raw.request("last", "tools/call", {"name": "wait_for_messages", "arguments": {"timeout_s": 0.5}})
        assert raw.close() == 0  # stdin closed with "last" in flight: it answers within the grace
        replies = []
        while not raw.lines.empty():
            replies.append(json.loads(raw.lines.get()))
    assert [reply["id"] for reply in replies] == ["last"]
    assert "call long cancelled by the client" in raw.stderr.decode()
