"""The lead identity, worker-to-worker messages, replies, broadcasts and per-caller tool lists,
against the real bridge over TLS with the real MCP client."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import anyio
import httpx2
import pytest
from conftest import Bridge, call, connect, create_conversation, issue_lead
from s2_bridge.contract.permissions import TOOL_CALLERS, tools_for
from s2_bridge.server.store import SQLiteStore
from s2_bridge.server.store.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

ROLES = {"1": "backend", "3": "tests", "6": "review"}


async def fleet(bridge: Bridge) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    workers = {wid: await create_conversation(bridge, wid, role) for wid, role in ROLES.items()}
    return await issue_lead(bridge), workers


async def beat(bridge: Bridge, token: str) -> None:
    async with connect(bridge, token) as client:
        assert "error" not in await call(client, "heartbeat")


async def test_each_identity_lists_exactly_the_tools_it_may_call(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    tokens = {
        "admin": bridge.admin_token,
        "lead": lead["lead_token"],
        "coordinator": workers["1"]["coordinator_token"],
        "worker": workers["1"]["worker_token"],
    }
    for kind, token in tokens.items():
        async with connect(bridge, token) as client:
            listed = await client.list_tools()
            names = [tool.name for tool in listed.tools]
            assert set(names) == set(tools_for(kind)), kind
            for tool in listed.tools:  # an LLM reads these: each says what it is for
                assert len(tool.description or "") >= 40, tool.name
            # every tool outside the list is refused by name, not just hidden
            for forbidden_tool in sorted(set(TOOL_CALLERS) - set(names))[:4]:
                refused = await call(client, forbidden_tool)
                assert refused["error"]["code"] in ("forbidden", "invalid_argument"), (kind, forbidden_tool)
    assert "rotate_lead" not in tools_for("lead") and "create_conversation" not in tools_for("lead")
    assert "update_task" not in tools_for("lead")


async def test_server_info_names_the_version(bridge: Bridge) -> None:
    async with connect(bridge, bridge.admin_token, mode="legacy") as admin:
        info = admin.session.initialize_result
        assert info is not None and info.server_info.version not in ("", None)


async def test_worker_cannot_read_another_inbox_broadcast_or_assign(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    async with connect(bridge, lead["lead_token"]) as boss:
        await call(boss, "send_to_partner", to="1", message="for worker 1 only")
    async with connect(bridge, workers["3"]["worker_token"]) as three:
        inbox = await call(three, "check_messages")
        assert inbox["messages"] == []
        broadcast = await call(three, "send_to_partner", to="all", message="freeze main")
        assert broadcast["error"]["code"] == "forbidden" and broadcast["error"]["field"] == "to"
        listed = await call(three, "send_to_partner", to=["1", "6"], message="hi both")
        assert listed["error"]["code"] == "forbidden"
        assigned = await call(three, "assign_task", title="do it", worker_id="1")
        assert assigned["error"]["code"] == "forbidden"
        tasks = await call(three, "list_tasks", worker_id="1")
        assert tasks["error"]["code"] == "forbidden"
        fleet_view = await call(three, "fleet_status")
        assert fleet_view["error"]["code"] == "forbidden"
        # a message id of another worker's inbox cannot be replied to (nor probed)
        other = await call(three, "send_to_partner", reply_to=1, message="sneaky")
        assert other["error"]["code"] == "not_found" and other["error"]["field"] == "reply_to"


async def test_lead_drives_the_fleet(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    for wid in ("1", "3"):
        await beat(bridge, workers[wid]["worker_token"])  # 6 stays never_seen
    async with connect(bridge, lead["lead_token"]) as boss:
        status = await call(boss, "fleet_status")
        assert {w["worker_id"] for w in status["workers"]} == set(ROLES)
        by_role = await call(boss, "assign_task", title="Add tests", worker_id="worker-3-tests")
        assert by_role["worker_id"] == "3"
        first_any = await call(boss, "assign_task", title="Anything", worker_id="any")
        second_any = await call(boss, "assign_task", title="Anything else", worker_id="any")
        # least loaded healthy: 1 had none, then 1 and 3 tie at one each -> lowest id
        assert first_any["worker_id"] == "1" and second_any["worker_id"] == "1"
        sent = await call(boss, "send_to_partner", to="all", message="freeze main", action_type="info")
        assert sorted(sent["recipients"]) == sorted(ROLES) and len(sent["message_ids"]) == len(ROLES)
        listed = await call(boss, "send_to_partner", to=["1", "worker-6-review", "1"], message="you two")
        assert listed["recipients"] == ["1", "6"]
        moved = await call(boss, "reassign_task", task_id=by_role["task_id"], to_worker_id="1", reason="3 is busy")
        assert moved["worker_id"] == "1" and moved["reassigned_from"] == "3"
        everything = await call(boss, "list_tasks")
        assert len(everything["tasks"]) == 3
        for tool, args in (
            ("create_conversation", {"my_role": "xyz", "partner_role": "worker-9-x"}),
            ("rotate_lead", {}),
            ("revoke_conversation", {"conversation_id": workers["1"]["conversation_id"]}),
            ("update_task", {"task_id": by_role["task_id"], "state": "done"}),
        ):
            assert (await call(boss, tool, **args))["error"]["code"] == "forbidden", tool
        no_target = await call(boss, "send_to_partner", message="to whom?")
        assert no_target["error"]["field"] == "to" and "fix" in no_target["error"]
    async with connect(bridge, workers["1"]["worker_token"]) as one:
        inbox = await call(one, "check_messages")
        bodies = [m["message"] for m in inbox["messages"]]
        assert "freeze main" in bodies and "you two" in bodies
        assert all(m["from_role"] == lead["lead_role"] and m["from_worker"] is None for m in inbox["messages"])
    # every worker got the broadcast once
    async with connect(bridge, workers["6"]["worker_token"]) as six:
        bodies = [m["message"] for m in (await call(six, "check_messages"))["messages"]]
        assert bodies.count("freeze main") == 1


async def test_mesh_messages_replies_and_the_lead_sees_them(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    async with connect(bridge, workers["6"]["worker_token"]) as six:
        sent = await call(six, "send_to_partner", to="worker-1-backend", message="your change breaks GET /users")
        assert sent["recipients"] == ["1"]
        to_self = await call(six, "send_to_partner", to="6", message="me")
        assert to_self["error"]["field"] == "to"
        unknown = await call(six, "send_to_partner", to="worker-99-ghost", message="?")
        assert unknown["error"]["code"] == "not_found" and unknown["error"]["field"] == "to"
    async with connect(bridge, workers["1"]["worker_token"]) as one:
        got = (await call(one, "check_messages"))["messages"]
        assert [(m["from_worker"], m["to_worker"], m["message"]) for m in got] == [
            ("6", "1", "your change breaks GET /users")
        ]
        reply = await call(one, "send_to_partner", reply_to=got[0]["id"], message="fixed in abc123")
        assert reply["recipients"] == ["6"]
        to_lead = await call(one, "send_to_partner", message="status: done")
        assert to_lead["recipients"] == ["lead"]
    async with connect(bridge, workers["6"]["worker_token"]) as six:
        answer = (await call(six, "check_messages"))["messages"]
        assert answer[-1]["reply_to"] == got[0]["id"] and answer[-1]["from_worker"] == "1"
    async with connect(bridge, lead["lead_token"]) as boss:
        seen = (await call(boss, "check_messages"))["messages"]
        assert [(m["from_worker"], m["to_worker"]) for m in seen] == [("6", "1"), ("1", "6"), ("1", None)]
        # the lead answers the worker's note with reply_to alone
        back = await call(boss, "send_to_partner", reply_to=seen[-1]["id"], message="thanks")
        assert back["recipients"] == ["1"]
    # the per-conversation coordinator still sees only what its worker sent to the lead side
    async with connect(bridge, workers["1"]["coordinator_token"]) as coordinator:
        own = (await call(coordinator, "check_messages"))["messages"]
        assert [m["message"] for m in own] == ["status: done"]


async def test_star_fleet_refuses_direct_messages_naming_the_rule(tmp_path, pki) -> None:
    star = Bridge(workdir=tmp_path, tls=pki, extra_config='[fleet]\nmessaging = "star"\n')
    star.start()
    try:
        _, workers = await fleet(star)
        async with connect(star, workers["6"]["worker_token"]) as six:
            refused = await call(six, "send_to_partner", to="1", message="direct")
            error = refused["error"]
            assert error["code"] == "forbidden" and error["field"] == "to"
            assert "star" in error["message"] and "mesh" in error["fix"]
            assert (await call(six, "send_to_partner", message="via the lead"))["recipients"] == ["lead"]
    finally:
        star.stop()


async def test_lead_long_poll_wakes_on_any_worker(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    async with connect(bridge, lead["lead_token"]) as boss:
        result: dict[str, Any] = {}

        async def waiter() -> None:
            result.update(await call(boss, "wait_for_messages", timeout_s=20))

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.sleep(0.5)
            started = time.monotonic()
            async with connect(bridge, workers["6"]["worker_token"]) as six:
                await call(six, "send_to_partner", to="3", message="to another worker")
        assert not result["timed_out"] and time.monotonic() - started < 10
        assert result["messages"][0]["from_worker"] == "6"
        too_long = await call(boss, "wait_for_messages", timeout_s=51)
        assert too_long["error"]["field"] == "timeout_s"


async def test_partner_is_alive_when_the_lead_is_active(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    async with connect(bridge, workers["1"]["worker_token"]) as one:
        before = await call(one, "check_partner_status")
        assert before["alive"] is False
        async with connect(bridge, lead["lead_token"]) as boss:
            await call(boss, "fleet_status")
        after = await call(one, "check_partner_status")
        assert after["alive"] is True and after["partner_role"] == lead["lead_role"]


async def test_rotating_the_lead_refuses_the_old_token(bridge: Bridge) -> None:
    old = await issue_lead(bridge)
    new = await issue_lead(bridge, lead_role="the-lead")
    headers = {"Authorization": f"Bearer {old['lead_token']}"}
    refused = httpx2.get(f"{bridge.base_url}/v1/updates", headers=headers, verify=bridge.ssl_context())
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "token revoked"
    async with connect(bridge, bridge.admin_token) as admin:
        listing = await call(admin, "list_conversations")
    assert listing["lead"]["lead_role"] == "the-lead" and listing["lead"]["expires_at"] == new["expires_at"]
    assert old["lead_token"] not in str(listing) and new["lead_token"] not in str(listing)
    bad_role = await issue_lead_error(bridge, lead_role="x")
    assert bad_role["field"] == "lead_role"


async def issue_lead_error(bridge: Bridge, **arguments: Any) -> dict[str, Any]:
    async with connect(bridge, bridge.admin_token) as admin:
        return (await call(admin, "rotate_lead", **arguments))["error"]


async def test_updates_route_for_hooks(bridge: Bridge) -> None:
    lead, workers = await fleet(bridge)
    async with connect(bridge, lead["lead_token"]) as boss:
        task = await call(boss, "assign_task", title="Write docs", worker_id="3")
    headers = {"Authorization": f"Bearer {workers['3']['worker_token']}"}
    url = f"{bridge.base_url}/v1/updates"
    got = httpx2.get(url, headers=headers, verify=bridge.ssl_context()).json()
    assert [t["task_id"] for t in got["open_tasks"]] == [task["task_id"]]
    assert got["unread"] == 1 and got["last_id"] == got["messages"][0]["id"]
    assert got["messages"][0]["action_type"] == "task_assignment"
    after = httpx2.get(url, params={"after": got["last_id"]}, headers=headers, verify=bridge.ssl_context()).json()
    assert after["messages"] == [] and after["unread"] == 1
    for params, field in (({"after": "-1"}, "after"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit")):
        bad = httpx2.get(url, params=params, headers=headers, verify=bridge.ssl_context())
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field
    lead_view = httpx2.get(
        url, headers={"Authorization": f"Bearer {lead['lead_token']}"}, verify=bridge.ssl_context()
    ).json()
    assert lead_view["open_tasks"] == [] and lead_view["messages"] == []
    admin = httpx2.get(url, headers={"Authorization": f"Bearer {bridge.admin_token}"}, verify=bridge.ssl_context())
    assert admin.status_code == 403


def test_a_schema_1_database_is_migrated_with_its_messages(tmp_path, pki) -> None:
    """A bridge upgraded in place keeps every message, routed as before."""
    old = tmp_path / "data"
    old.mkdir()
    db = sqlite3.connect(old / "bridge.db")
    db.executescript(
        """
        CREATE TABLE conversations (id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, coordinator_role TEXT NOT NULL,
            worker_role TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL);
        CREATE TABLE tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('admin', 'coordinator',
            'worker')), conversation_id TEXT REFERENCES conversations(id), created_at REAL NOT NULL,
            expires_at REAL, revoked_at REAL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL
            REFERENCES conversations(id), from_side TEXT NOT NULL CHECK (from_side IN ('coordinator', 'worker')),
            from_role TEXT NOT NULL, action_type TEXT NOT NULL, body TEXT NOT NULL, files_json TEXT NOT NULL,
            created_at REAL NOT NULL);
        CREATE INDEX messages_inbox ON messages(conversation_id, from_side, id);
        INSERT INTO conversations VALUES ('conv_0123456789abcdef', '4', 's2-orchestrator', 'worker-4-docs', 1, 9e9,
            NULL);
        INSERT INTO messages(conversation_id, from_side, from_role, action_type, body, files_json, created_at)
            VALUES ('conv_0123456789abcdef', 'coordinator', 's2-orchestrator', 'info', 'to the worker', '[]', 2),
                   ('conv_0123456789abcdef', 'worker', 'worker-4-docs', 'info', 'to the lead', '[]', 3);
        PRAGMA user_version=1;
        """
    )
    db.close()
    store = SQLiteStore(str(old / "bridge.db"))
    try:
        to_worker = store.messages_for("conv_0123456789abcdef", "worker", 0, 10)
        to_coordinator = store.messages_for("conv_0123456789abcdef", "coordinator", 0, 10)
        to_lead = store.messages_for("", "lead", 0, 10)
        assert [(m.message, m.to_worker) for m in to_worker] == [("to the worker", "4")]
        assert [(m.message, m.from_worker) for m in to_coordinator] == [("to the lead", "4")]
        assert [m.message for m in to_lead] == ["to the lead"]
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
