"""Messages: ordering, cursors, limits, redaction, long-poll and no loss across restarts."""

from __future__ import annotations

import json
import sqlite3
import time

import anyio
import httpx2
import pytest
from conftest import Bridge, call, connect, create_conversation

pytestmark = pytest.mark.anyio


async def test_messages_are_ordered_and_peek_until_acknowledged(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
        sent = [await call(coordinator, "send_to_partner", message=f"m{i}") for i in range(12)]
    ids = [s["message_id"] for s in sent]
    assert ids == sorted(ids)
    async with connect(plain_bridge, created["worker_token"]) as worker:
        first = await call(worker, "check_messages", limit=5)
        again = await call(worker, "check_messages", limit=5)
        assert first == again  # a lost reply is simply read again
        assert [m["message"] for m in first["messages"]] == [f"m{i}" for i in range(5)]
        assert first["unread"] == 7
        rest = await call(worker, "check_messages", ack_through=first["messages"][-1]["id"], limit=50)
        assert [m["message"] for m in rest["messages"]] == [f"m{i}" for i in range(5, 12)]
        assert rest["acked_through"] == ids[4]
        # The cursor never moves backwards, nor past the newest message.
        back = await call(worker, "check_messages", ack_through=1)
        assert back["acked_through"] == ids[4]
        done = await call(worker, "check_messages", ack_through=10**9)
        assert done["acked_through"] == ids[-1]
        assert done["messages"] == []
        negative = await call(worker, "check_messages", ack_through=-1)
        assert negative["error"]["field"] == "ack_through"
    # The sender's own messages are not in its inbox.
    async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
        assert (await call(coordinator, "check_messages"))["messages"] == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"message": "x" * 50_001}, "message"),
        ({"message": "   "}, "message"),
        ({"message": "ok", "files_involved": [f"f{i}" for i in range(21)]}, "files_involved"),
        ({"message": "ok", "files_involved": ["a" * 513]}, "files_involved[0]"),
        ({"message": "ok", "files_involved": [""]}, "files_involved[0]"),
        ({"message": "ok", "action_type": "shout"}, "action_type"),
        ({"message": 42}, "message"),
        ({"message": "ok", "files_involved": "not-a-list"}, "files_involved"),
        ({}, "message"),
    ],
)
async def test_bad_arguments_get_structured_errors_naming_the_field(
    plain_bridge: Bridge, arguments: dict[str, object], field: str
) -> None:
    created = await create_conversation(plain_bridge, "3")
    async with connect(plain_bridge, created["worker_token"]) as worker:
        result = await call(worker, "send_to_partner", **arguments)
        assert result["error"]["code"] == "invalid_argument", result
        assert result["error"]["field"] == field
        assert result["error"]["fix"]
        # Nothing was stored.
        async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
            assert (await call(coordinator, "check_messages"))["messages"] == []


async def test_limits_accept_the_largest_valid_message(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    async with connect(plain_bridge, created["worker_token"]) as worker:
        sent = await call(
            worker,
            "send_to_partner",
            message="y" * 50_000,
            action_type="task_assignment",
            files_involved=[f"src/f{i}.py" for i in range(20)],
        )
    assert sent["message_id"] >= 1


async def test_secrets_are_redacted_before_storage(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    key = "sk-proj-" + "Ab3_" * 12
    async with connect(plain_bridge, created["worker_token"]) as worker:
        sent = await call(
            worker,
            "send_to_partner",
            message=f"My API key is {key} and the secret sauce is love",
            files_involved=[f"notes/{key}.txt", "src/main.py"],
        )
    assert sent["redactions"] >= 2
    async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
        message = (await call(coordinator, "check_messages"))["messages"][0]
    assert key not in message["message"]
    assert "the secret sauce is love" in message["message"]
    assert len(message["files_involved"]) == 2
    assert key not in json.dumps(message["files_involved"])
    assert message["files_involved"][1] == "src/main.py"
    with sqlite3.connect(plain_bridge.db_path) as db:
        stored = db.execute("SELECT body || files_json FROM messages").fetchall()
    assert key not in str(stored)


async def test_long_poll_wakes_as_soon_as_a_message_arrives(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    woke: dict[str, object] = {}

    async def wait() -> None:
        async with connect(plain_bridge, created["worker_token"]) as worker:
            started = time.monotonic()
            woke["result"] = await call(worker, "wait_for_messages", timeout_s=30)
            woke["elapsed"] = time.monotonic() - started

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await anyio.sleep(1.0)
        async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
            await call(coordinator, "send_to_partner", message="wake up")
    result = woke["result"]
    assert isinstance(result, dict)
    assert result["timed_out"] is False
    assert [m["message"] for m in result["messages"]] == ["wake up"]
    # Far below the 30 s timeout: the send woke it (generous bound for a loaded machine).
    assert float(woke["elapsed"]) < 15  # type: ignore[arg-type]


async def test_long_poll_times_out_and_validates_its_bound(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    async with connect(plain_bridge, created["worker_token"]) as worker:
        result = await call(worker, "wait_for_messages", timeout_s=0.3)
        assert result == {"messages": [], "timed_out": True}
        too_long = await call(worker, "wait_for_messages", timeout_s=3600)
        assert too_long["error"]["field"] == "timeout_s"


async def test_no_message_is_lost_or_duplicated_across_kill_and_restart(plain_bridge: Bridge) -> None:
    created = await create_conversation(plain_bridge, "3")
    async with connect(plain_bridge, created["coordinator_token"]) as coordinator:
        ids = [(await call(coordinator, "send_to_partner", message=f"before {i}"))["message_id"] for i in range(20)]
    plain_bridge.kill9()
    plain_bridge.start()
    async with connect(plain_bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages", limit=200)
        assert [m["id"] for m in inbox["messages"]] == ids
        await call(worker, "check_messages", ack_through=ids[9])
    plain_bridge.stop()
    plain_bridge.start()
    async with connect(plain_bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages", limit=200)
    # The acknowledged cursor survived the restart too.
    assert [m["id"] for m in inbox["messages"]] == ids[10:]
    with sqlite3.connect(plain_bridge.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_per_caller_rate_limit(tmp_path, pki) -> None:
    bridge = Bridge(workdir=tmp_path, tls=None, extra_config="[limits]\ncalls_per_s = 0.5\ncalls_burst = 3\n")
    bridge.start()
    try:
        created = await create_conversation(bridge, "3")
        headers = {"Authorization": f"Bearer {created['worker_token']}"}
        url = f"{bridge.base_url}/v1/heartbeat"
        codes = [httpx2.post(url, json={}, headers=headers).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200]
        assert codes[3] == 429
        # Another caller has its own budget.
        other = {"Authorization": f"Bearer {created['coordinator_token']}"}
        assert httpx2.post(url, json={}, headers=other).status_code == 200
    finally:
        bridge.stop()
