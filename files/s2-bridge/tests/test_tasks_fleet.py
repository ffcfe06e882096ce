"""Tasks, fleet status, presence and the audit trail of every state change."""

from __future__ import annotations

import sqlite3
import time

import pytest
from conftest import Bridge, call, connect, create_conversation

pytestmark = pytest.mark.anyio


async def test_task_lifecycle_and_reassignment(plain_bridge: Bridge) -> None:
    three = await create_conversation(plain_bridge, "3")
    four = await create_conversation(plain_bridge, "4", role="docs")
    async with connect(plain_bridge, three["coordinator_token"]) as coordinator:
        task = await call(coordinator, "assign_task", title="write the tests", detail="cover the watchdog")
    assert task["worker_id"] == "3"
    assert task["state"] == "assigned"
    async with connect(plain_bridge, three["worker_token"]) as worker:
        inbox = await call(worker, "check_messages")
        assert inbox["messages"][-1]["action_type"] == "task_assignment"
        assert "write the tests" in inbox["messages"][-1]["message"]
        listed = await call(worker, "list_tasks")
        assert [t["task_id"] for t in listed["tasks"]] == [task["task_id"]]
        started = await call(worker, "update_task", task_id=task["task_id"], state="in_progress", note="on it")
        assert started["state"] == "in_progress"
        bad = await call(worker, "update_task", task_id=task["task_id"], state="assigned")
        assert bad["error"]["field"] == "state"
        missing = await call(worker, "update_task", task_id=999, state="done")
        assert missing["error"]["code"] == "not_found"
        assert (await call(worker, "assign_task", title="self"))["error"]["code"] == "forbidden"
    async with connect(plain_bridge, four["worker_token"]) as other:
        refused = await call(other, "update_task", task_id=task["task_id"], state="done")
        assert refused["error"]["code"] == "forbidden"
    async with connect(plain_bridge, plain_bridge.admin_token) as admin:
        moved = await call(admin, "reassign_task", task_id=task["task_id"], to_worker_id="4", reason="3 is silent")
        assert moved["worker_id"] == "4"
        assert moved["reassigned_from"] == "3"
        assert moved["state"] == "assigned"
        unknown = await call(admin, "reassign_task", task_id=task["task_id"], to_worker_id="99")
        assert unknown["error"]["field"] == "to_worker_id"
        fleet = await call(admin, "fleet_status")
        assert {w["worker_id"]: w["open_tasks"] for w in fleet["workers"]} == {"3": 0, "4": 1}
    async with connect(plain_bridge, four["worker_token"]) as worker_four:
        told = (await call(worker_four, "check_messages"))["messages"]
        assert "reassigned to you from worker 3" in told[-1]["message"]
        assert "3 is silent" in told[-1]["message"]
        done = await call(worker_four, "update_task", task_id=task["task_id"], state="done")
        assert done["state"] == "done"
    async with connect(plain_bridge, plain_bridge.admin_token) as admin:
        closed = await call(admin, "reassign_task", task_id=task["task_id"], to_worker_id="3")
        assert closed["error"]["field"] == "task_id"


async def test_fleet_health_moves_from_never_seen_to_healthy_to_silent(tmp_path) -> None:
    bridge = Bridge(workdir=tmp_path, tls=None, extra_config="[health]\nsilent_after_s = 1\n")
    bridge.start()
    try:
        created = await create_conversation(bridge, "3")
        await create_conversation(bridge, "4", role="docs")
        async with connect(bridge, bridge.admin_token) as admin:
            before = {w["worker_id"]: w["health"] for w in (await call(admin, "fleet_status"))["workers"]}
            assert before == {"3": "never_seen", "4": "never_seen"}
            async with connect(bridge, created["worker_token"]) as worker:
                assert (await call(worker, "heartbeat", status="working"))["ok"] is True
            healthy = {w["worker_id"]: w for w in (await call(admin, "fleet_status"))["workers"]}
            assert healthy["3"]["health"] == "healthy"
            assert healthy["3"]["status"] == "working"
            time.sleep(1.5)
            silent = {w["worker_id"]: w["health"] for w in (await call(admin, "fleet_status"))["workers"]}
            assert silent == {"3": "silent", "4": "never_seen"}
    finally:
        bridge.stop()


async def test_every_state_change_is_audited(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    await create_conversation(plain_bridge, "4", role="docs")
    async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
        task = await call(coordinator, "assign_task", title="t")
    async with connect(plain_bridge, created["worker_token"]) as worker:
        await call(worker, "send_to_partner", message="hi")
        inbox = await call(worker, "check_messages")
        await call(worker, "check_messages", ack_through=inbox["messages"][-1]["id"])
        await call(worker, "update_my_status", status="blocked")
        await call(worker, "update_task", task_id=task["task_id"], state="blocked")
    async with connect(plain_bridge, plain_bridge.admin_token) as admin:
        await call(admin, "reassign_task", task_id=task["task_id"], to_worker_id="4")
        await call(admin, "record_alert", worker_id="3", kind="silent", detail="no heartbeat for 50 s")
        await call(admin, "rotate_conversation", conversation_id=created["conversation_id"])
        await call(admin, "revoke_conversation", conversation_id=created["conversation_id"])
    with sqlite3.connect(plain_bridge.db_path) as db:
        rows = db.execute("SELECT actor, action, target FROM audit_log ORDER BY id").fetchall()
    actions = [action for _, action, _ in rows]
    for expected in (
        "conversation.create",
        "task.assign",
        "message.send",
        "message.ack",
        "status.update",
        "task.update",
        "task.reassign",
        "watchdog.silent",
        "conversation.rotate",
        "conversation.revoke",
    ):
        assert expected in actions, expected
    actors = {actor for actor, _, _ in rows}
    assert "admin" in actors
    assert f"worker:{created['conversation_id']}" in actors
    assert f"coordinator:{created['conversation_id']}" in actors
