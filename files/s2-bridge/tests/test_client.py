"""BridgeClient against the real bridge over real TLS: results, structured errors, refused
tokens, the wrong CA, a dead or silent bridge, and recovery after a restart."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import mcp_types
import pytest
from conftest import PKI, Bridge, create_conversation, shaped_token
from s2_bridge.agent.client import (
    AuthRefused,
    BridgeClient,
    BridgeUnavailable,
    ToolCallError,
    heartbeat_url,
    parse_tool_error,
    tool_result_to_dict,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "text",
    [
        '{"error": {"code": "invalid_argument", "field": "status", "message": "bad", "fix": "use working"}}',
        'Error executing tool update_my_status: {"error": {"code": "invalid_argument", "field": "status", '
        '"message": "bad", "fix": "use working"}}',
    ],
)
def test_tool_error_json_is_parsed_with_or_without_a_prefix(text: str) -> None:
    error = parse_tool_error(text)
    assert (error.code, error.field, error.message, error.fix) == ("invalid_argument", "status", "bad", "use working")
    assert error.to_dict() == {
        "error": {"code": "invalid_argument", "field": "status", "message": "bad", "fix": "use working"}
    }


def test_free_text_errors_still_become_tool_call_errors() -> None:
    error = parse_tool_error("Unknown tool: nope")
    assert error.code == "tool_error" and error.message == "Unknown tool: nope"
    assert parse_tool_error("{not json").code == "tool_error"


def test_results_without_structured_content_are_read_from_the_text() -> None:
    result = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text='{"ok": true}')])
    assert tool_result_to_dict(result) == {"ok": True}
    broken = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="fine")])
    with pytest.raises(ToolCallError, match="non-JSON"):
        tool_result_to_dict(broken)


def test_heartbeat_route_is_on_the_bridge_origin() -> None:
    assert heartbeat_url("https://orchestrator:8443/mcp") == "https://orchestrator:8443/v1/heartbeat"
    assert heartbeat_url("http://10.0.0.1:8080/some/mcp?x=1") == "http://10.0.0.1:8080/v1/heartbeat"


async def test_calls_heartbeats_and_errors_over_tls(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "1")
    async with BridgeClient(bridge.url, created["worker_token"], ca_file=bridge.ca_file) as client:
        sent = await client.call("send_to_partner", message="hello", action_type="info")
        assert sent["conversation_id"] == created["conversation_id"]
        beat = await client.heartbeat(status="working")
        assert beat["ok"] is True and beat["unread"] == 0
        with pytest.raises(ToolCallError) as caught:
            await client.call("update_my_status", status="asleep")
        assert caught.value.code == "invalid_argument" and caught.value.field == "status"
        with pytest.raises(ToolCallError):
            await client.call("fleet_status")  # a worker may not
        names = {tool.name for tool in await client.list_tools()}
        assert {"send_to_partner", "heartbeat", "check_messages"} <= names
        assert created["worker_token"] not in repr(client)


async def test_a_refused_token_is_auth_refused_on_both_paths(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "2")
    async with BridgeClient(bridge.url, created["worker_token"], ca_file=bridge.ca_file) as client:
        await client.heartbeat()
        async with BridgeClient(bridge.url, bridge.admin_token, ca_file=bridge.ca_file) as admin:
            await admin.call("revoke_conversation", conversation_id=created["conversation_id"])
        with pytest.raises(AuthRefused):
            await client.heartbeat()
        with pytest.raises(AuthRefused):
            await client.call("check_messages")


async def test_a_certificate_from_another_ca_is_refused(bridge: Bridge, pki: PKI) -> None:
    async with BridgeClient(bridge.url, bridge.admin_token, ca_file=pki.other_ca_file) as client:
        with pytest.raises(BridgeUnavailable, match=r"TLS failure"):
            await client.heartbeat()
        with pytest.raises(BridgeUnavailable):
            await client.call("fleet_status")


async def test_the_same_client_recovers_after_a_bridge_restart(plain_bridge: Bridge) -> None:
    async with BridgeClient(plain_bridge.url, plain_bridge.admin_token) as client:
        assert "workers" in await client.call("fleet_status")
        plain_bridge.stop()
        with pytest.raises(BridgeUnavailable):
            await client.call("fleet_status")
        with pytest.raises(BridgeUnavailable):
            await client.heartbeat()
        plain_bridge.start()
        assert "workers" in await client.call("fleet_status")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers: a hung bridge."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


async def test_a_bridge_that_never_answers_times_out_as_unavailable(silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/mcp"
    async with BridgeClient(url, shaped_token("worker"), call_timeout_s=1.0, heartbeat_timeout_s=1.0) as client:
        with pytest.raises(BridgeUnavailable, match=r"timed out|no answer"):
            await client.heartbeat()
        with pytest.raises(BridgeUnavailable, match=r"timed out|no answer"):
            await client.call("check_messages")
