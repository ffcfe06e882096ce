"""Bounded storage (issue 14): the per-sender quota, retention, incremental vacuum and the
schema 2 -> 3 migration.

The quota and the server's own sweep are tested against the real bridge (TLS on loopback, real
SQLite); the retention rules, batches and file size against the real SQLite store in process,
with a clock the test sets (days pass in a millisecond)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PKI, Bridge, call, connect, create_conversation, issue_lead, serve_once
from inprocess import T0, Fleet, make_fleet
from s2_bridge.contract import exitcodes
from s2_bridge.contract.config import RetentionSection, load_bridge_config
from s2_bridge.contract.errors import BridgeError, ConfigError
from s2_bridge.server import messaging
from s2_bridge.server.caller import Caller
from s2_bridge.server.retention import DAY_S, Retention
from s2_bridge.server.store.base import stored_size
from s2_bridge.server.store.sqlite import JOURNAL_SIZE_LIMIT, SCHEMA_VERSION, SWEEP_STEP_MAX_BYTES, SQLiteStore


def usage(db_path: Path | str) -> dict[str, tuple[int, int]]:
    """sender -> (stored bytes, messages) as the counters say."""
    with sqlite3.connect(db_path) as db:
        return {s: (b, n) for s, b, n in db.execute("SELECT sender, stored_bytes, messages FROM sender_usage")}


def recount(db_path: Path | str) -> dict[str, tuple[int, int]]:
    """sender -> (stored bytes, messages) summed from the messages themselves."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT sender, SUM(length(CAST(body AS BLOB)) + length(CAST(files_json AS BLOB))), COUNT(*)"
            " FROM messages GROUP BY sender"
        )
        return {s: (b, n) for s, b, n in rows}


def nonzero(counters: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {s: v for s, v in counters.items() if v != (0, 0)}


def message_count(db_path: Path | str, where: str = "1", params: tuple[Any, ...] = ()) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM messages WHERE {where}", params).fetchone()[0])


def checkpointed_size(db_path: Path | str) -> int:
    """The database file's size once the WAL is copied into it."""
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return Path(db_path).stat().st_size


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


# --- the quota, on the real bridge ------------------------------------------------------------

pytestmark = pytest.mark.anyio


def quota_bridge(tmp_path: Path, pki: PKI, cap: int, retention: str = "") -> Bridge:
    bridge = Bridge(
        workdir=tmp_path,
        tls=pki,
        extra_config=f"[limits]\ncalls_per_s = 1000\ncalls_burst = 1000\nstored_bytes_per_sender = {cap}\n{retention}",
    )
    bridge.start()
    return bridge


async def test_quota_refuses_a_send_with_a_structured_error_and_stores_nothing(tmp_path: Path, pki: PKI) -> None:
    bridge = quota_bridge(tmp_path, pki, cap=10_000)
    try:
        created = await create_conversation(bridge, "3")
        async with connect(bridge, created["worker_token"]) as worker:
            for _ in range(4):  # 4 x (2000 + len("[]")) = 8008 bytes
                assert "error" not in await call(worker, "send_to_partner", message="é" * 1000)
            refused = await call(worker, "send_to_partner", message="y" * 2000, files_involved=["a.py"] * 2)
            # the same sender may still send what fits under the cap
            fits = await call(worker, "send_to_partner", message="z" * 1990)
        async with connect(bridge, created["coordinator_token"]) as coordinator:
            other = await call(coordinator, "send_to_partner", message="another sender has its own quota")
    finally:
        bridge.stop()
    error = refused["error"]
    assert error["code"] == "quota_exceeded" and error["field"] == "message", refused
    assert "worker '3' has 8,008 bytes" in error["message"], error
    assert "adds 2,016" in error["message"] and "10,000 bytes per sender" in error["message"], error
    assert "read messages after 7 days" in error["fix"] and "after 30 days" in error["fix"], error
    assert "[limits] stored_bytes_per_sender" in error["fix"], error
    assert "error" not in fits and "error" not in other, (fits, other)
    assert message_count(bridge.db_path, "body LIKE 'y%'") == 0  # nothing of the refused send
    assert usage(bridge.db_path)["worker:3"] == (8008 + 1992, 5)
    assert nonzero(usage(bridge.db_path)) == recount(bridge.db_path)


async def test_a_broadcast_counts_every_copy_and_is_refused_whole(tmp_path: Path, pki: PKI) -> None:
    bridge = quota_bridge(tmp_path, pki, cap=10_000)
    try:
        for worker_id in ("1", "2", "3"):
            await create_conversation(bridge, worker_id)
        lead = await issue_lead(bridge)
        async with connect(bridge, lead["lead_token"]) as client:
            first = await call(client, "send_to_partner", to="all", message="b" * 3000)  # 3 x 3002 = 9006
            refused = await call(client, "send_to_partner", to="all", message="c" * 400)  # + 3 x 402 > 10,000
            task = await call(client, "assign_task", title="t" * 200, detail="d" * 800, worker_id="2")
            single = await call(client, "send_to_partner", to="1", message="c" * 400)  # + 402 fits
    finally:
        bridge.stop()
    assert first["recipients"] == ["1", "2", "3"]
    assert refused["error"]["code"] == "quota_exceeded", refused
    assert "adds 1,206 (3 copies)" in refused["error"]["message"], refused
    # a task assignment over the quota: neither the task nor its message is stored
    assert task["error"]["code"] == "quota_exceeded" and task["error"]["field"] == "detail", task
    assert "error" not in single, single
    with sqlite3.connect(bridge.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
        senders = db.execute("SELECT sender, COUNT(*) FROM messages GROUP BY sender").fetchall()
    assert senders == [("lead", 4)]
    assert usage(bridge.db_path)["lead"] == (9006 + 402, 4)


async def test_the_servers_sweep_frees_the_quota_and_shrinks_the_file(tmp_path: Path, pki: PKI) -> None:
    size = stored_size("x" * 45_000, [])
    bridge = quota_bridge(tmp_path, pki, cap=44 * size + 10, retention="[retention]\nsweep_interval_s = 0.2\n")
    try:
        created = await create_conversation(bridge, "3")
        sender = f"coordinator:{created['conversation_id']}"
        async with connect(bridge, created["coordinator_token"]) as coordinator:
            sent = [await call(coordinator, "send_to_partner", message="x" * 45_000) for _ in range(44)]
            refused = await call(coordinator, "send_to_partner", message="x" * 45_000)
            assert refused["error"]["code"] == "quota_exceeded", refused
            async with connect(bridge, created["worker_token"]) as worker:  # reads all but the last
                read = await call(worker, "check_messages", ack_through=sent[42]["message_id"], limit=1)
                assert read["acked_through"] == sent[42]["message_id"], read
            before = checkpointed_size(bridge.db_path)
            with sqlite3.connect(bridge.db_path) as db:  # eight days pass
                db.execute("UPDATE messages SET created_at = created_at - ?", (8 * DAY_S,))
            await wait_until(lambda: message_count(bridge.db_path) == 1)
            await asyncio.sleep(0.5)  # the sweep's compaction steps
            after = checkpointed_size(bridge.db_path)
            again = await call(coordinator, "send_to_partner", message="x" * 45_000)
    finally:
        bridge.stop()
    assert message_count(bridge.db_path, "id = ?", (sent[43]["message_id"],)) == 1  # unread: kept
    assert "error" not in again, again
    assert usage(bridge.db_path)[sender] == (2 * size, 2)
    with sqlite3.connect(bridge.db_path) as db:
        rows = db.execute("SELECT actor, target, detail FROM audit_log WHERE action = 'retention.sweep'").fetchall()
    assert len(rows) == 1, rows  # the sweeps that deleted nothing wrote nothing
    actor, target, detail = rows[0]
    assert (actor, target) == ("bridge", "store")
    assert json.loads(detail) | {"steps": 0} == {"messages": 43, "bytes": 43 * size, "audit_rows": 0, "steps": 0}
    print(f"\nfile {before} bytes before the sweep, {after} after")
    assert after < before / 4, (before, after)


# --- retention rules, in process with a set clock --------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = make_fleet(tmp_path)
    yield made
    made.store.close()


def send(fleet: Fleet, caller: Caller, text: str, to: str | list[str] | None = None) -> int:
    return fleet.service.send_to_partner(caller, text, "info", [], to=to).message_id


def ack(fleet: Fleet, caller: Caller, through: int) -> None:
    fleet.service.check_messages(caller, through, 1)


def test_read_and_unread_retention_by_the_addressee(fleet: Fleet) -> None:
    w3, w4, lead = fleet.workers["3"], fleet.workers["4"], fleet.lead
    c3, c4 = fleet.coordinators["3"], fleet.coordinators["4"]
    read_by_worker = send(fleet, c3, "coordinator to 3, read")
    send(fleet, c3, "coordinator to 3, unread")
    to_lead = send(fleet, w3, "3 to the lead")  # inboxes: coordinator side of 3, and the lead's
    send(fleet, w3, "3 to 4", to="4")  # inboxes: worker 4, and the lead's
    from_lead = send(fleet, lead, "lead to 4", to="4")
    to_lead_4 = send(fleet, w4, "4 to the lead")
    ack(fleet, w3, read_by_worker)
    ack(fleet, c3, to_lead)
    ack(fleet, w4, from_lead)  # through "3 to 4" and "lead to 4"
    fleet.clock.now = T0 + 5 * DAY_S
    young = send(fleet, c4, "coordinator to 4, read but young")
    ack(fleet, w4, young)

    # Eight days on: what its addressee read goes ("3 to the lead": read by 3's coordinator side;
    # "3 to 4": read by worker 4, the lead's overview does not hold it); unread or young stays.
    totals = fleet.sweep(8)
    assert fleet.remaining() == {
        "coordinator to 3, unread",
        "4 to the lead",
        "coordinator to 4, read but young",
    }
    assert totals.messages == 4 and totals.audit_rows == 0

    ack(fleet, lead, to_lead_4)  # the lead reads it: a message to the orchestrator's side is read
    fleet.sweep(8)
    assert fleet.remaining() == {"coordinator to 3, unread", "coordinator to 4, read but young"}

    fleet.sweep(13.5)
    assert fleet.remaining() == {"coordinator to 3, unread"}
    fleet.sweep(29.9)  # unread, younger than 30 days: kept
    assert fleet.remaining() == {"coordinator to 3, unread"}
    totals = fleet.sweep(30.1)
    assert fleet.remaining() == set()
    assert totals.messages == 1
    # every counter went back to zero with its messages, in the same transactions
    assert nonzero(usage(fleet.path)) == {}
    assert recount(fleet.path) == {}


def test_counters_count_utf8_bytes_per_sender_and_fall_with_deletes(fleet: Fleet) -> None:
    send(fleet, fleet.workers["3"], "héllo wörld ✓")  # 17 bytes in UTF-8, 13 characters
    fleet.service.send_to_partner(fleet.coordinators["4"], "files", "info", ["a/ß.py", "b.py"])
    send(fleet, fleet.lead, "to all", to="all")
    counters = usage(fleet.path)
    assert counters["worker:3"] == (len("héllo wörld ✓".encode()) + 2, 1)
    assert counters[f"coordinator:{fleet.coordinators['4'].conversation.conversation_id}"] == (
        5 + len(json.dumps(["a/ß.py", "b.py"])),
        1,
    )
    assert counters["lead"] == (2 * (6 + 2), 2)
    assert fleet.store.stored_bytes("lead") == 16
    assert counters == recount(fleet.path)
    fleet.sweep(31)
    assert nonzero(usage(fleet.path)) == {}
    assert fleet.store.stored_bytes("lead") == 0


def test_audit_rows_are_kept_longer_than_messages(fleet: Fleet) -> None:
    send(fleet, fleet.workers["3"], "old news")
    with sqlite3.connect(fleet.path) as db:
        early = db.execute("SELECT COUNT(*) FROM audit_log WHERE at < ?", (T0 + 1,)).fetchone()[0]
    assert early >= 4  # rotate_lead, two creates, the send

    first = fleet.sweep(31)  # messages go; the audit rows of day 0 stay
    assert first.messages == 1 and first.audit_rows == 0
    with sqlite3.connect(fleet.path) as db:
        assert db.execute("SELECT COUNT(*) FROM audit_log WHERE at < ?", (T0 + 1,)).fetchone()[0] == early
    assert fleet.sweep(32).messages == 0
    second = fleet.sweep(366)  # past audit_days: the rows of day 0 go, the sweep's own row of day 31 stays
    assert second.audit_rows == early
    with sqlite3.connect(fleet.path) as db:
        rows = db.execute("SELECT action, at FROM audit_log ORDER BY id").fetchall()
    assert [(action, round((at - T0) / DAY_S)) for action, at in rows] == [
        ("retention.sweep", 31),
        ("retention.sweep", 366),
    ]
    assert json.loads(fleet.store.audit_log(1)[0].detail)["audit_rows"] == early


def test_a_sweep_goes_in_batches_and_yields_the_loop_between_them(fleet: Fleet) -> None:
    w3, c3 = fleet.workers["3"], fleet.coordinators["3"]
    for n in range(35):
        send(fleet, c3, f"old {n}")
    fleet.clock.now = T0 + 20 * DAY_S
    last = 0
    for n in range(25):
        last = send(fleet, c3, f"read {n}")
    ack(fleet, w3, last)
    steps: list[Any] = []
    real_sweep = fleet.store.sweep

    def recording(*args: Any, **kwargs: Any) -> Any:
        step = real_sweep(*args, **kwargs)
        steps.append(step)
        return step

    fleet.store.sweep = recording  # type: ignore[method-assign]
    retention = Retention(fleet.store, RetentionSection(sweep_batch=10))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def sweep_while_ticking() -> Any:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        totals = await retention.sweep_async(T0 + 31 * DAY_S)
        task.cancel()
        return totals

    totals = asyncio.run(sweep_while_ticking())
    assert totals.messages == 60
    assert max(step.examined for step in steps) == 10
    # old ones: 10, 10, 10, 5; read ones: 10, 10, 5; then the audit rows (younger than a year)
    assert [step.messages for step in steps] == [10, 10, 10, 5, 10, 10, 5, 0]
    assert totals.steps == len(steps) == 8
    assert ticks >= len(steps) - 1  # the loop ran between the transactions
    assert fleet.remaining() == set()


def test_the_file_shrinks_after_a_sweep_deletes_large_messages(fleet: Fleet) -> None:
    assert fleet.store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL from the start
    assert fleet.store._db.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT
    for n in range(300):
        send(fleet, fleet.coordinators["3"], f"{n} " + "x" * 40_000)
    before = checkpointed_size(fleet.path)
    started = time.perf_counter()
    totals = fleet.sweep(31)
    elapsed = time.perf_counter() - started
    after = Path(fleet.path).stat().st_size  # the sweep checkpointed itself
    print(f"\n300 x 40 kB: {before} -> {after} bytes, sweep {elapsed:.3f} s ({totals})")
    assert totals.messages == 300 and totals.compact_steps > 0
    # 12 MB of messages: the steps stop at SWEEP_STEP_MAX_BYTES each, well before 500 rows
    assert totals.steps >= totals.bytes // SWEEP_STEP_MAX_BYTES + 2, totals
    assert after < before / 10, (before, after)
    assert fleet.store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    send(fleet, fleet.coordinators["3"], "still works")  # and the WAL is back within its limit
    assert Path(f"{fleet.path}-wal").stat().st_size <= JOURNAL_SIZE_LIMIT


# --- migration 2 -> 3 -------------------------------------------------------------------------

SCHEMA_2 = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, coordinator_role TEXT NOT NULL,
    worker_role TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL);
CREATE UNIQUE INDEX conversations_live_worker ON conversations(worker_id) WHERE revoked_at IS NULL;
CREATE TABLE tokens (hash TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('admin', 'coordinator', 'worker',
    'lead')), conversation_id TEXT REFERENCES conversations(id), created_at REAL NOT NULL, expires_at REAL,
    revoked_at REAL, label TEXT);
CREATE INDEX tokens_conversation ON tokens(conversation_id);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation_id TEXT NOT NULL
    REFERENCES conversations(id), from_side TEXT NOT NULL CHECK (from_side IN ('coordinator', 'worker')),
    from_role TEXT NOT NULL, action_type TEXT NOT NULL, body TEXT NOT NULL, files_json TEXT NOT NULL,
    created_at REAL NOT NULL, to_side TEXT NOT NULL CHECK (to_side IN ('coordinator', 'worker')),
    from_worker TEXT, to_worker TEXT, reply_to INTEGER);
CREATE INDEX messages_to ON messages(conversation_id, to_side, id);
CREATE INDEX messages_from ON messages(from_side, id);
CREATE TABLE read_cursors (conversation_id TEXT NOT NULL, side TEXT NOT NULL, acked_through INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, side));
CREATE TABLE presence (conversation_id TEXT NOT NULL, side TEXT NOT NULL, status TEXT, status_at REAL,
    last_heartbeat REAL, PRIMARY KEY (conversation_id, side));
CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, worker_id TEXT NOT NULL, conversation_id TEXT NOT NULL
    REFERENCES conversations(id), title TEXT NOT NULL, detail TEXT NOT NULL, state TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    reassigned_from TEXT);
CREATE TABLE audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, remote TEXT NOT NULL);
INSERT INTO conversations VALUES ('conv_a', '4', 's2-orchestrator', 'worker-4-docs', 1, 9e9, NULL),
    ('conv_b', '5', 's2-orchestrator', 'worker-5-ops', 1, 9e9, NULL);
INSERT INTO messages(id, conversation_id, from_side, from_role, action_type, body, files_json, created_at, to_side,
        from_worker, to_worker) VALUES
    (1, 'conv_a', 'worker', 'worker-4-docs', 'info', 'from 4: été', '["\\u00e4.py"]', 2, 'coordinator', '4', NULL),
    (2, 'conv_a', 'coordinator', 's2-orchestrator', 'info', 'from the lead', '[]', 3, 'worker', NULL, '4'),
    (3, 'conv_a', 'coordinator', 's2-orchestrator', 'info', 'from the coordinator', '[]', 4, 'worker', NULL, '4'),
    (4, 'conv_b', 'coordinator', 's2-orchestrator', 'task_assignment', 'Task #1 assigned to you: x', '[]', 5,
        'worker', NULL, '5'),
    (5, 'conv_a', 'worker', 'worker-5-ops', 'info', 'from 5 to 4', '[]', 6, 'worker', '5', '4'),
    (6, 'conv_b', 'coordinator', 's2-orchestrator', 'info', 'from the lead to 5', '[]', 7, 'worker', NULL, '5');
INSERT INTO audit_log(at, actor, action, target, detail, remote) VALUES
    (3, 'lead', 'message.send', 'conv_a', '{"action_type": "info", "message_id": 2, "to": "4"}', ''),
    (4, 'coordinator:conv_a', 'message.send', 'conv_a', '{"action_type": "info", "message_id": 3, "to": "4"}', ''),
    (5, 'lead', 'task.assign', 'task:1', '{"worker_id": "5"}', ''),
    (7, 'lead', 'message.send', 'conv_b', '{"action_type": "info", "message_id": 6, "to": "5"}', '');
PRAGMA user_version=2;
"""


def test_a_schema_2_database_is_migrated_with_counters_backfilled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bridge.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0  # NONE, as schema 2 made them
    db.close()
    caplog.set_level("INFO", logger="s2_bridge.store")
    store = SQLiteStore(str(path))
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        senders = dict(store._db.execute("SELECT id, sender FROM messages").fetchall())
        assert senders == {
            1: "worker:4",
            2: "lead",  # its message.send audit row names the lead
            3: "coordinator:conv_a",
            4: "coordinator:conv_b",  # a task assignment: its audit row names no message
            5: "worker:5",
            6: "lead",
        }
        assert usage(path) == {
            "worker:4": (stored_size("from 4: été", ["ä.py"]), 1),
            "lead": (stored_size("from the lead", []) + stored_size("from the lead to 5", []), 2),
            "coordinator:conv_a": (stored_size("from the coordinator", []), 1),
            "coordinator:conv_b": (stored_size("Task #1 assigned to you: x", []), 1),
            "worker:5": (stored_size("from 5 to 4", []), 1),
        }
        assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # converted (one VACUUM)
        assert "converting to incremental auto-vacuum" in caplog.text
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [m.message for m in store.messages_for("conv_a", "worker", 0, 10)] == [
            "from the lead",
            "from the coordinator",
            "from 5 to 4",
        ]
        # The triggers keep the backfilled counters: a sweep takes everything off again.
        retention = Retention(store, RetentionSection())
        assert retention.sweep(31 * DAY_S).messages == 6
        assert nonzero(usage(path)) == {}
    finally:
        store.close()
    store = SQLiteStore(str(path))  # a second start changes nothing and converts nothing again
    store.close()
    assert caplog.text.count("converting to incremental auto-vacuum") == 1


# --- config ----------------------------------------------------------------------------------

GOOD = '[storage]\npath = "{data}/bridge.db"\n[auth]\nadmin_token_file = "{data}/admin.token"\n'

BAD = [
    ("[retention]\nread_messages_days = 0\n", "retention.read_messages_days", "greater than 0"),
    ("[retention]\nunread_messages_days = -1.5\n", "retention.unread_messages_days", "greater than 0"),
    ("[retention]\naudit_days = nan\n", "retention.audit_days", "greater than 0"),
    ("[retention]\naudit_days = 1e9\n", "retention.audit_days", "out of range"),
    ("[retention]\nread_messages_days = 40\n", "retention.read_messages_days", "longer than"),
    ("[retention]\nsweep_interval_s = 0\n", "retention.sweep_interval_s", "greater than 0"),
    ("[retention]\nsweep_interval_s = 100000\n", "retention.sweep_interval_s", "out of range"),
    ('[retention]\nsweep_interval_s = "5"\n', "retention.sweep_interval_s", "must be float"),
    ("[retention]\nsweep_batch = 0\n", "retention.sweep_batch", "out of range"),
    ("[retention]\nsweep_batch = 1.5\n", "retention.sweep_batch", "must be int"),
    ("[retention]\nkeep_days = 3\n", "retention.keep_days", "unknown key"),
    ("retention = 3\n", "retention", "must be a table"),
    ("[limits]\nstored_bytes_per_sender = 0\n", "limits.stored_bytes_per_sender", "greater than 0"),
    ("[limits]\nstored_bytes_per_sender = 1.5\n", "limits.stored_bytes_per_sender", "must be int"),
]


@pytest.mark.parametrize(("content", "key", "problem"), BAD)
def test_bad_retention_or_quota_config_names_the_key_and_the_fix(
    tmp_path: Path, content: str, key: str, problem: str
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(content + GOOD.format(data=tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_bridge_config(str(path))
    assert caught.value.field == key, caught.value
    assert problem in caught.value.problem, caught.value
    assert caught.value.fix


def test_retention_and_quota_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD.format(data=tmp_path))
    config = load_bridge_config(str(path))
    assert config.limits.stored_bytes_per_sender == 64 * 1024 * 1024
    assert config.retention == RetentionSection(7.0, 30.0, 365.0, 300.0, 500)
    path.write_text(
        GOOD.format(data=tmp_path) + "[limits]\nstored_bytes_per_sender = 1000\n"
        "[retention]\nread_messages_days = 1\nunread_messages_days = 2.5\naudit_days = 90\n"
        "sweep_interval_s = 60\nsweep_batch = 50\n"
    )
    config = load_bridge_config(str(path))
    assert config.limits.stored_bytes_per_sender == 1000
    assert config.retention == RetentionSection(1.0, 2.5, 90.0, 60.0, 50)


def test_serve_refuses_a_bad_retention_key_with_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD.format(data=tmp_path / "data") + "[retention]\nsweep_batch = -3\n")
    result = serve_once(path, "--insecure-http")
    assert result.returncode == exitcodes.CONFIG_ERROR
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "retention.sweep_batch" in line and "fix: use 1 to 100000" in line, line
    assert not (tmp_path / "data").exists()


def test_quota_error_is_raised_by_the_service_before_anything_is_stored(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, ("3",), stored_bytes_per_sender=100)
    try:
        send(fleet, fleet.workers["3"], "a" * 90)
        with pytest.raises(BridgeError) as caught:
            send(fleet, fleet.workers["3"], "b" * 9)  # 92 + 11 > 100
        assert caught.value.code == "quota_exceeded"
        assert fleet.remaining() == {"a" * 90}
        assert usage(fleet.path) == {"worker:3": (92, 1)}
    finally:
        fleet.store.close()


# --- redaction of long bodies: off the event loop, and not for a sender at its quota ------------


def watch_redaction(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads redact_text ran on, one per send."""
    threads: list[str] = []
    real = messaging.redact_text

    def watched(text: str) -> tuple[str, int]:
        threads.append(threading.current_thread().name)
        return real(text)

    monkeypatch.setattr(messaging, "redact_text", watched)
    return threads


async def send_as_the_tool(service: Any, caller: Any, message: str) -> Any:
    """What the send_to_partner tool does: redact a long body off the loop, then send."""
    redacted = await service.redact_off_loop(caller, message, [])
    return service.send_to_partner(caller, message, "info", [], redacted=redacted)


async def test_a_long_body_is_redacted_off_the_event_loop(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = watch_redaction(monkeypatch)
    service, worker = fleet.service, fleet.workers["3"]
    long_body = "password=hunter2 " + "x" * messaging.REDACT_ON_LOOP_MAX_CHARS
    sent = await send_as_the_tool(service, worker, long_body)
    await send_as_the_tool(service, worker, "short password=hunter2")
    assert threads[0].startswith("s2-redact") and threads[1] == threading.current_thread().name
    assert sent.redactions == 1
    assert "hunter2" not in " ".join(fleet.remaining())


async def test_a_sender_at_its_quota_is_refused_before_any_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = make_fleet(tmp_path, stored_bytes_per_sender=20_000)
    try:
        worker = fleet.workers["3"]
        await send_as_the_tool(fleet.service, worker, "y" * 19_998)  # with "[]": at the cap
        threads = watch_redaction(monkeypatch)
        with pytest.raises(BridgeError) as refused:
            await send_as_the_tool(fleet.service, worker, "z" * 30_000)
        assert refused.value.code == "quota_exceeded" and refused.value.field == "message"
        assert threads == []  # refused on the counter alone
        assert fleet.remaining() == {"y" * 19_998}
    finally:
        fleet.store.close()
