"""Authentication and authorization against the real server over TLS."""

from __future__ import annotations

import sqlite3
import ssl
import time

import httpx2
import pytest
from conftest import Bridge, call, connect, create_conversation, shaped_token
from s2_bridge.contract.permissions import tools_for

pytestmark = pytest.mark.anyio

ADMIN_TOOLS = {
    "create_conversation": {"my_role": "s2-orchestrator", "partner_role": "worker-9-x"},
    "list_conversations": {},
    "rotate_conversation": {"conversation_id": "conv_0000000000000000"},
    "revoke_conversation": {"conversation_id": "conv_0000000000000000"},
    "reassign_task": {"task_id": 1, "to_worker_id": "4"},
    "record_alert": {"worker_id": "3", "kind": "silent"},
}


def audit_actions(bridge: Bridge) -> list[tuple[str, str, str]]:
    with sqlite3.connect(bridge.db_path) as db:
        return db.execute("SELECT actor, action, detail FROM audit_log ORDER BY id").fetchall()


def post_mcp(bridge: Bridge, token: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return httpx2.post(bridge.url, json=body, headers=headers, verify=bridge.ssl_context())


async def test_tools_are_listed_over_modern_and_legacy_protocols(bridge: Bridge) -> None:
    for mode in ("auto", "legacy"):
        async with connect(bridge, bridge.admin_token, mode=mode) as admin:
            names = {tool.name for tool in (await admin.list_tools()).tools}
        # the admin is shown its own tools only (tools/list follows permissions.TOOL_CALLERS)
        assert names == set(tools_for("admin"))
        assert {"create_conversation", "rotate_lead", "fleet_status", "reassign_task"} <= names
        assert not {"send_to_partner", "check_messages", "heartbeat"} & names
        assert not any("exec" in name or "command" in name or "yolo" in name for name in names)


def test_missing_and_wrong_tokens_are_refused_and_audited(bridge: Bridge) -> None:
    missing = post_mcp(bridge, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = post_mcp(bridge, shaped_token("worker"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "unknown token"
    junk = post_mcp(bridge, "not-a-token")
    assert junk.status_code == 401
    failures = [detail for actor, action, detail in audit_actions(bridge) if action == "auth.failed"]
    assert len(failures) == 3
    assert any("missing bearer token" in d for d in failures)


async def test_expired_token_is_refused(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    # Move the conversation's expiry into the past, as time would.
    with sqlite3.connect(bridge.db_path) as db:
        db.execute(
            "UPDATE tokens SET expires_at=? WHERE conversation_id=?", (time.time() - 1, created["conversation_id"])
        )
    response = post_mcp(bridge, created["worker_token"])
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "token expired"


async def test_revoked_and_rotated_tokens_are_refused(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    # Used once first, so the server has it in its authentication cache.
    assert post_mcp(bridge, created["worker_token"]).status_code == 200
    async with connect(bridge, bridge.admin_token) as admin:
        rotated = await call(admin, "rotate_conversation", conversation_id=created["conversation_id"])
    assert rotated["conversation_id"] == created["conversation_id"]
    assert rotated["worker_token"] != created["worker_token"]
    assert post_mcp(bridge, created["worker_token"]).json()["error"]["message"] == "token revoked"
    assert post_mcp(bridge, rotated["worker_token"]).status_code == 200
    async with connect(bridge, bridge.admin_token) as admin:
        revoked = await call(admin, "revoke_conversation", conversation_id=created["conversation_id"])
    assert revoked["conversation_id"] == created["conversation_id"]
    assert post_mcp(bridge, rotated["worker_token"]).status_code == 401
    assert post_mcp(bridge, rotated["coordinator_token"]).status_code == 401


async def test_workers_and_coordinators_cannot_call_admin_tools(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    for token in (created["worker_token"], created["coordinator_token"]):
        async with connect(bridge, token) as client:
            for tool, arguments in ADMIN_TOOLS.items():
                result = await call(client, tool, **arguments)
                assert result["error"]["code"] == "forbidden", (tool, result)


async def test_a_token_reaches_its_own_conversation_only(bridge: Bridge) -> None:
    three = await create_conversation(bridge, "3")
    four = await create_conversation(bridge, "4", role="docs")
    async with connect(bridge, three["coordinator_token"]) as coordinator:
        await call(coordinator, "send_to_partner", message="for worker 3 only")
        other = await call(coordinator, "assign_task", title="x", worker_id="4")
        assert other["error"]["code"] == "forbidden"
        fleet = await call(coordinator, "fleet_status")
        assert [w["worker_id"] for w in fleet["workers"]] == ["3"]
    async with connect(bridge, four["worker_token"]) as worker_four:
        inbox = await call(worker_four, "check_messages")
        assert inbox["messages"] == []
        assert (await call(worker_four, "list_tasks", worker_id="3"))["error"]["code"] == "forbidden"
        assert (await call(worker_four, "fleet_status"))["error"]["code"] == "forbidden"
    async with connect(bridge, three["worker_token"]) as worker_three:
        inbox = await call(worker_three, "check_messages")
        assert [m["message"] for m in inbox["messages"]] == ["for worker 3 only"]


async def test_a_flood_of_bad_tokens_does_not_lock_out_a_good_caller(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    codes = [post_mcp(bridge, "s2w_" + f"{i:043d}").status_code for i in range(45)]
    assert codes[:30] == [401] * 30
    assert set(codes[31:]) == {429}
    # Same address, valid token: served.
    assert post_mcp(bridge, created["worker_token"]).status_code == 200
    actions = [action for _, action, _ in audit_actions(bridge)]
    assert actions.count("auth.failed") == 30
    assert actions.count("auth.rate_limited") == 1


def test_tls_verifies_against_the_fleet_ca_only(bridge: Bridge) -> None:
    assert bridge.tls is not None
    good = httpx2.get(f"{bridge.base_url}/healthz", verify=ssl.create_default_context(cafile=bridge.tls.ca_file))
    assert good.status_code == 200
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{bridge.base_url}/healthz", verify=ssl.create_default_context(cafile=bridge.tls.other_ca_file))
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{bridge.base_url}/healthz")  # the system trust store does not know the fleet CA


async def test_no_plaintext_token_in_the_database_or_log(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    async with connect(bridge, created["worker_token"]) as worker:
        await call(worker, "send_to_partner", message="hello")
    secrets = [bridge.admin_token, created["worker_token"], created["coordinator_token"]]
    stored = b"".join(
        path.read_bytes() for path in bridge.db_path.parent.iterdir() if path.name.startswith("bridge.db")
    )
    log = bridge.log_text()
    for secret in secrets:
        assert secret.encode() not in stored
        assert secret not in log
    assert bridge.admin_token_file.stat().st_mode & 0o777 == 0o600
    assert bridge.db_path.stat().st_mode & 0o077 == 0


async def test_lean_heartbeat_route(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    url = f"{bridge.base_url}/v1/heartbeat"
    headers = {"Authorization": f"Bearer {created['worker_token']}"}
    verify = bridge.ssl_context()
    ok = httpx2.post(url, json={"status": "working"}, headers=headers, verify=verify)
    assert ok.status_code == 200
    assert ok.json()["unread"] == 0
    bad = httpx2.post(url, json={"status": "sleeping"}, headers=headers, verify=verify)
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "status"
    extra = httpx2.post(url, json={"token": "x"}, headers=headers, verify=verify)
    assert extra.status_code == 400
    assert httpx2.post(url, json={}, verify=verify).status_code == 401
    admin = httpx2.post(url, json={}, headers={"Authorization": f"Bearer {bridge.admin_token}"}, verify=verify)
    assert admin.status_code == 403
    async with connect(bridge, created["coordinator_token"]) as coordinator:
        partner = await call(coordinator, "check_partner_status")
    assert partner["alive"] is True
    assert partner["status"] == "working"


async def test_admin_token_survives_restart_and_is_replaced_when_lost(bridge: Bridge) -> None:
    first = bridge.admin_token
    bridge.stop()
    bridge.start()
    assert bridge.admin_token == first
    bridge.stop()
    bridge.admin_token_file.unlink()
    bridge.start()
    second = bridge.admin_token
    assert second != first
    assert post_mcp(bridge, first).status_code == 401
    assert post_mcp(bridge, second).status_code == 200
