"""Hostile inputs against the real bridge (TLS on loopback): edge values, a long poll that
outlives its token, a token parking many waits, and the admin's state-change edge cases
(issue 14, items 6, 10, 12 and the per-caller wait cap of item 1)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import PKI, Bridge, call, connect, create_conversation, issue_lead, raw_call
from s2_bridge.agent.check_messages import message_line
from s2_bridge.agent.table import fleet_table

pytestmark = pytest.mark.anyio


EDGE_INTS = [2**63, -(2**63) - 1, 2**70]


async def test_edge_integers_and_lone_surrogates_get_structured_errors(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    worker, admin = created["worker_token"], bridge.admin_token
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    for value in EDGE_INTS:
        cases += [
            (worker, "wait_for_messages", {"after_id": value, "timeout_s": 0}, "after_id"),
            (worker, "check_messages", {"ack_through": value}, "ack_through"),
            (worker, "send_to_partner", {"message": "hi", "reply_to": value}, "reply_to"),
            (worker, "update_task", {"task_id": value, "state": "done"}, "task_id"),
            (admin, "reassign_task", {"task_id": value, "to_worker_id": "3"}, "task_id"),
            (admin, "create_conversation", {"my_role": "abc", "partner_role": "defg", "ttl_s": value}, "ttl_s"),
        ]
    cases += [
        (worker, "send_to_partner", {"message": "hello \ud800 there"}, "message"),
        (worker, "send_to_partner", {"message": "ok", "files_involved": ["a.py", "b\udfff.py"]}, "files_involved[1]"),
        (admin, "create_conversation", {"my_role": "ab\udc00c", "partner_role": "worker-9-x"}, "my_role"),
        (admin, "record_alert", {"worker_id": "3", "kind": "silent", "detail": "\ud83d"}, "detail"),
    ]
    for token, tool, arguments, field in cases:
        answer = await raw_call(bridge, token, tool, arguments)
        assert answer.get("error", {}).get("code") == "invalid_argument", (tool, arguments, answer)
        assert answer["error"]["field"] == field, (tool, answer)
    log = bridge.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "OverflowError" not in log and "UnicodeEncodeError" not in log
    # The server is still fine: a normal send and read work.
    sent = await raw_call(bridge, worker, "send_to_partner", {"message": "still here"})
    assert "error" not in sent, sent


async def test_lean_updates_refuse_an_after_beyond_64_bits(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=30) as http:
        response = await http.get(
            f"{bridge.base_url}/v1/updates",
            params={"after": str(2**63)},
            headers={"authorization": f"Bearer {created['worker_token']}"},
        )
    assert response.status_code == 400, response.text
    assert "after" in response.text
    assert "Traceback" not in bridge.log_text()


async def test_a_parked_wait_is_refused_after_rotation(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    async with connect(bridge, created["worker_token"]) as waiter:
        wait = asyncio.ensure_future(call(waiter, "wait_for_messages", timeout_s=20))
        await asyncio.sleep(0.5)  # parked
        async with connect(bridge, bridge.admin_token) as admin:
            rotated = await call(admin, "rotate_conversation", conversation_id=created["conversation_id"])
        assert "error" not in rotated
        async with connect(bridge, rotated["coordinator_token"]) as coordinator:
            await call(coordinator, "send_to_partner", message="sent after the rotation")
        answer = await asyncio.wait_for(wait, 15)
    assert answer.get("error", {}).get("code") == "unauthenticated", answer
    assert "sent after the rotation" not in json.dumps(answer)


async def test_a_parked_wait_is_refused_after_revocation(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    async with connect(bridge, created["worker_token"]) as waiter:
        wait = asyncio.ensure_future(call(waiter, "wait_for_messages", timeout_s=20))
        await asyncio.sleep(0.5)
        async with connect(bridge, bridge.admin_token) as admin:
            revoked = await call(admin, "revoke_conversation", conversation_id=created["conversation_id"])
        assert "error" not in revoked
        answer = await asyncio.wait_for(wait, 15)  # woken by the revocation itself
    assert answer.get("error", {}).get("code") == "unauthenticated", answer


async def test_one_token_parks_at_most_four_waits(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    token = created["worker_token"]
    parked = [asyncio.ensure_future(raw_call(bridge, token, "wait_for_messages", {"timeout_s": 20})) for _ in range(4)]
    await asyncio.sleep(1.0)
    refused = await raw_call(bridge, token, "wait_for_messages", {"timeout_s": 20})
    assert refused.get("error", {}).get("code") == "too_many_waits", refused
    assert "fix" in refused["error"]
    # Another token is not affected, and a wait with timeout_s=0 never parks.
    assert "error" not in await raw_call(bridge, token, "wait_for_messages", {"timeout_s": 0})
    async with connect(bridge, created["coordinator_token"]) as coordinator:
        await call(coordinator, "send_to_partner", message="wake up")
    answers = await asyncio.wait_for(asyncio.gather(*parked), 15)
    assert all(a["messages"][0]["message"] == "wake up" for a in answers), answers
    # The slots are free again.
    again = await raw_call(bridge, token, "wait_for_messages", {"timeout_s": 0.2})
    assert "error" not in again, again


async def test_many_waiters_woken_by_one_message_all_get_it(tmp_path: Path, pki: PKI) -> None:
    """The shared read of a wake (item 2) gives every waiter the same, complete answer."""
    bridge = Bridge(workdir=tmp_path, tls=pki, extra_config="[limits]\ncalls_per_s = 1000\ncalls_burst = 1000\n")
    bridge.start()
    try:
        created = await create_conversation(bridge, "3")
        async with connect(bridge, created["coordinator_token"]) as coordinator:
            first = await call(coordinator, "send_to_partner", message="one")
            waits = [
                asyncio.ensure_future(
                    raw_call(bridge, created["worker_token"], "wait_for_messages", {"after_id": first["message_id"]})
                )
                for _ in range(4)
            ]
            await asyncio.sleep(0.8)
            await call(coordinator, "send_to_partner", message="x" * 45_000)
            answers = await asyncio.wait_for(asyncio.gather(*waits), 15)
    finally:
        bridge.stop()
    assert [len(a["messages"]) for a in answers] == [1, 1, 1, 1]
    assert all(a["messages"][0]["message"] == "x" * 45_000 for a in answers)


async def test_permission_refusals_are_audited(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    answer = await raw_call(bridge, created["worker_token"], "revoke_conversation", {"conversation_id": "x"})
    assert answer["error"]["code"] == "forbidden"
    answer = await raw_call(bridge, created["worker_token"], "assign_task", {"title": "t", "worker_id": "3"})
    assert answer["error"]["code"] == "forbidden"
    with sqlite3.connect(bridge.db_path) as db:
        rows = db.execute("SELECT actor, target FROM audit_log WHERE action='denied' ORDER BY id").fetchall()
    assert [target for _, target in rows] == ["revoke_conversation", "assign_task"], rows
    assert all(actor.startswith("worker") for actor, _ in rows), rows


def test_terminal_output_escapes_control_characters() -> None:
    line = message_line(
        {"id": 1, "from_role": "evil\x1b]0;x\x07", "action_type": "info", "message": "a\x1b[2Jb\x00c\x9bd"}
    )
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in line), repr(line)
    assert "\\x1b[2J" in line and "\\x00" in line
    table = fleet_table({"workers": [{"worker_id": "3", "worker_role": "w-3\r\nFAKE ROW\x1b[31m", "health": "ok"}]})
    assert len(table.splitlines()) == 2, table
    assert "\x1b" not in table and "\r" not in table


async def test_revoke_twice_is_idempotent(bridge: Bridge) -> None:
    created = await create_conversation(bridge, "3")
    conversation_id = created["conversation_id"]

    def stored() -> list[tuple[Any, ...]]:
        with sqlite3.connect(bridge.db_path) as db:
            return db.execute(
                "SELECT 'conversation', revoked_at FROM conversations WHERE id=? UNION ALL"
                " SELECT kind, revoked_at FROM tokens WHERE conversation_id=? ORDER BY 1",
                (conversation_id, conversation_id),
            ).fetchall()

    async with connect(bridge, bridge.admin_token) as admin:
        first = await call(admin, "revoke_conversation", conversation_id=conversation_id)
        after_first = stored()
        await asyncio.sleep(1.1)  # a second revocation would carry a later time, even in whole seconds
        second = await call(admin, "revoke_conversation", conversation_id=conversation_id)
    assert "error" not in first, first
    assert second == first  # the first revocation's time, not a new one
    assert stored() == after_first and all(at is not None for _, at in after_first), after_first
    with sqlite3.connect(bridge.db_path) as db:
        rows = db.execute(
            "SELECT COUNT(*) FROM audit_log WHERE action='conversation.revoke' AND target=?", (conversation_id,)
        ).fetchone()[0]
    assert rows == 1


async def test_expired_conversation_is_not_live(bridge: Bridge) -> None:
    three = await create_conversation(bridge, "3")
    four = await create_conversation(bridge, "4", role="docs")
    lead = await issue_lead(bridge)
    for created in (three, four):  # both healthy: "any" would pick 3 (the lowest id) were it live
        async with connect(bridge, created["worker_token"]) as worker:
            assert (await call(worker, "heartbeat"))["ok"] is True
    old = three["conversation_id"]
    with sqlite3.connect(bridge.db_path) as db:  # worker 3's conversation expires, as time would do it
        db.execute("UPDATE conversations SET expires_at=? WHERE id=?", (time.time() - 1, old))
        db.execute("UPDATE tokens SET expires_at=? WHERE conversation_id=?", (time.time() - 1, old))
    async with connect(bridge, lead["lead_token"]) as client:
        by_id = await call(client, "assign_task", title="for 3", worker_id="3")
        by_role = await call(client, "assign_task", title="for 3", worker_id="worker-3-tests")
        message = await call(client, "send_to_partner", to="3", message="for 3")
        everyone = await call(client, "send_to_partner", to="all", message="to every live worker")
        anyone = await call(client, "assign_task", title="for any", worker_id="any")
        fleet = await call(client, "fleet_status")
    for refused, field in ((by_id, "worker_id"), (by_role, "worker_id"), (message, "to")):
        error = refused.get("error", {})
        assert error.get("code") == "worker_expired" and error["field"] == field, refused
        assert "worker '3'" in error["message"] and "expired" in error["message"], error
        assert "rotate its credentials" in error["fix"] and old in error["fix"], error
    assert everyone["recipients"] == ["4"], everyone
    assert anyone["worker_id"] == "4", anyone
    assert {w["worker_id"]: w["health"] for w in fleet["workers"]} == {"3": "silent", "4": "healthy"}, fleet
    with sqlite3.connect(bridge.db_path) as db:
        assert db.execute("SELECT worker_id, title FROM tasks").fetchall() == [("4", "for any")]
        assert db.execute("SELECT COUNT(*) FROM messages WHERE to_worker='3'").fetchone()[0] == 0

    # A new conversation for worker 3: the expired one gives way, revoked in the same transaction.
    renewed = await create_conversation(bridge, "3")
    assert renewed["conversation_id"] != old
    with sqlite3.connect(bridge.db_path) as db:
        assert db.execute("SELECT revoked_at IS NOT NULL FROM conversations WHERE id=?", (old,)).fetchone() == (1,)
        audit = db.execute(
            "SELECT action, target, detail FROM audit_log WHERE action LIKE 'conversation.%' AND id >"
            " (SELECT MAX(id) FROM audit_log WHERE action='lead.rotate') ORDER BY id"
        ).fetchall()
    assert [(action, target) for action, target, _ in audit] == [
        ("conversation.revoke", old),
        ("conversation.create", renewed["conversation_id"]),
    ]
    assert json.loads(audit[0][2]) == {"reason": "expired", "worker_id": "3"}
    assert json.loads(audit[1][2])["replaces"] == old
    async with connect(bridge, renewed["worker_token"]) as worker:
        assert (await call(worker, "heartbeat"))["ok"] is True
