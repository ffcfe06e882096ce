"""SQLite store (WAL): the embedded default. One connection, used from the event loop only."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s2_bridge.models import OPEN_TASK_STATES, Box, Conversation, Message, Task, TaskState, iso
from s2_bridge.store.base import AuditEntry, FleetRow, LeadRecord, MessageDraft, Presence, StoreError, TokenRecord

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    worker_id TEXT NOT NULL,
    coordinator_role TEXT NOT NULL,
    worker_role TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    revoked_at REAL
);
-- one live conversation per worker: a second create is a conflict, not a silent twin
CREATE UNIQUE INDEX IF NOT EXISTS conversations_live_worker
    ON conversations(worker_id) WHERE revoked_at IS NULL;
{tokens}
CREATE INDEX IF NOT EXISTS tokens_conversation ON tokens(conversation_id);
-- A message lands in one inbox: conversation_id + to_side (a worker's, or the coordinator side
-- of the sender's conversation); the lead's inbox is every message a worker sent.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    from_side TEXT NOT NULL CHECK (from_side IN ('coordinator', 'worker')),
    from_role TEXT NOT NULL,
    action_type TEXT NOT NULL,
    body TEXT NOT NULL,
    files_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    to_side TEXT NOT NULL CHECK (to_side IN ('coordinator', 'worker')),
    from_worker TEXT,
    to_worker TEXT,
    reply_to INTEGER
);
CREATE INDEX IF NOT EXISTS messages_to ON messages(conversation_id, to_side, id);
CREATE INDEX IF NOT EXISTS messages_from ON messages(from_side, id);
CREATE TABLE IF NOT EXISTS read_cursors (
    conversation_id TEXT NOT NULL,
    side TEXT NOT NULL,
    acked_through INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, side)
);
CREATE TABLE IF NOT EXISTS presence (
    conversation_id TEXT NOT NULL,
    side TEXT NOT NULL,
    status TEXT,
    status_at REAL,
    last_heartbeat REAL,
    PRIMARY KEY (conversation_id, side)
);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    title TEXT NOT NULL,
    detail TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('assigned', 'in_progress', 'done', 'blocked')),
    note TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reassigned_from TEXT
);
CREATE INDEX IF NOT EXISTS tasks_worker ON tasks(worker_id, state);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    remote TEXT NOT NULL
);
"""

TOKENS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('admin', 'coordinator', 'worker', 'lead')),
    conversation_id TEXT REFERENCES conversations(id),
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    label TEXT
);"""
SCHEMA = SCHEMA.replace("{tokens}", TOKENS_TABLE.format(name="tokens"))

# Schema 1 (before the lead and worker-to-worker messages) to 2, in one transaction.
MIGRATE_1_TO_2 = (
    TOKENS_TABLE.format(name="tokens_v2"),
    "INSERT INTO tokens_v2(hash, kind, conversation_id, created_at, expires_at, revoked_at)"
    " SELECT hash, kind, conversation_id, created_at, expires_at, revoked_at FROM tokens",
    "DROP TABLE tokens",
    "ALTER TABLE tokens_v2 RENAME TO tokens",
    "ALTER TABLE messages ADD COLUMN to_side TEXT NOT NULL DEFAULT 'worker'"
    " CHECK (to_side IN ('coordinator', 'worker'))",
    "ALTER TABLE messages ADD COLUMN from_worker TEXT",
    "ALTER TABLE messages ADD COLUMN to_worker TEXT",
    "ALTER TABLE messages ADD COLUMN reply_to INTEGER",
    "UPDATE messages SET to_side = CASE from_side WHEN 'coordinator' THEN 'worker' ELSE 'coordinator' END",
    "UPDATE messages SET from_worker = (SELECT worker_id FROM conversations c WHERE c.id = messages.conversation_id)"
    " WHERE from_side = 'worker'",
    "UPDATE messages SET to_worker = (SELECT worker_id FROM conversations c WHERE c.id = messages.conversation_id)"
    " WHERE from_side = 'coordinator'",
    "DROP INDEX IF EXISTS messages_inbox",
)


def _inbox(conversation_id: str, side: Box) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause of one inbox: a worker's or a coordinator's (one conversation), or the
    lead's (every message a worker sent, in any conversation)."""
    if side == "lead":
        return "from_side='worker'", ()
    return "conversation_id=? AND to_side=?", (conversation_id, side)


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        conversation_id=row["id"],
        worker_id=row["worker_id"],
        coordinator_role=row["coordinator_role"],
        worker_role=row["worker_role"],
        created_at=iso(row["created_at"]) or "",
        expires_at=iso(row["expires_at"]) or "",
        revoked=row["revoked_at"] is not None,
    )


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        conversation_id=row["conversation_id"],
        from_side=row["from_side"],
        from_role=row["from_role"],
        from_worker=row["from_worker"],
        to_worker=row["to_worker"],
        action_type=row["action_type"],
        message=row["body"],
        files_involved=json.loads(row["files_json"]),
        reply_to=row["reply_to"],
        created_at=iso(row["created_at"]) or "",
    )


def _task(row: sqlite3.Row) -> Task:
    return Task(
        task_id=row["id"],
        worker_id=row["worker_id"],
        conversation_id=row["conversation_id"],
        title=row["title"],
        detail=row["detail"],
        state=row["state"],
        note=row["note"],
        created_by=row["created_by"],
        created_at=iso(row["created_at"]) or "",
        updated_at=iso(row["updated_at"]) or "",
        reassigned_from=row["reassigned_from"],
    )


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        parent = Path(path).parent
        parent.mkdir(parents=True, exist_ok=True)
        # Create the file 0600 ourselves: sqlite would use the umask.
        if not Path(path).exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss can drop
        # the last commits, and it never corrupts the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                "schema_too_new",
                "storage.path",
                f"{self.path} has schema {version}; this runtime knows {SCHEMA_VERSION}: install the newer runtime",
            )
        if version == 1:
            with self._transaction() as db:
                for statement in MIGRATE_1_TO_2:
                    db.execute(statement)
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._db.in_transaction:  # inside atomic(): the outer block commits or rolls back
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self._transaction():
            yield

    # tokens
    def replace_admin_token(self, token_hash: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE tokens SET revoked_at=? WHERE kind='admin' AND revoked_at IS NULL", (now,))
            db.execute(
                "INSERT OR REPLACE INTO tokens(hash, kind, conversation_id, created_at, expires_at, revoked_at)"
                " VALUES (?, 'admin', NULL, ?, NULL, NULL)",
                (token_hash, now),
            )

    def lookup_token(self, token_hash: str) -> TokenRecord | None:
        row = self._db.execute(
            "SELECT kind, conversation_id, expires_at, revoked_at, label FROM tokens WHERE hash=?", (token_hash,)
        ).fetchone()
        if row is None:
            return None
        return TokenRecord(
            kind=row["kind"],
            conversation_id=row["conversation_id"],
            expires_at=row["expires_at"],
            revoked=row["revoked_at"] is not None,
            label=row["label"],
        )

    def replace_lead_token(self, token_hash: str, *, lead_role: str, now: float, expires_at: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE tokens SET revoked_at=? WHERE kind='lead' AND revoked_at IS NULL", (now,))
            db.execute(
                "INSERT INTO tokens(hash, kind, conversation_id, created_at, expires_at, revoked_at, label)"
                " VALUES (?, 'lead', NULL, ?, ?, NULL, ?)",
                (token_hash, now, expires_at, lead_role),
            )

    def live_lead(self, now: float) -> LeadRecord | None:
        row = self._db.execute(
            "SELECT label, created_at, expires_at FROM tokens WHERE kind='lead' AND revoked_at IS NULL"
            " AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
            (now,),
        ).fetchone()
        if row is None:
            return None
        return LeadRecord(lead_role=row["label"] or "", created_at=row["created_at"], expires_at=row["expires_at"])

    # conversations
    def create_conversation(
        self,
        *,
        worker_id: str,
        coordinator_role: str,
        worker_role: str,
        coordinator_hash: str,
        worker_hash: str,
        now: float,
        expires_at: float,
    ) -> Conversation:
        conversation_id = "conv_" + secrets.token_hex(8)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO conversations(id, worker_id, coordinator_role, worker_role, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (conversation_id, worker_id, coordinator_role, worker_role, now, expires_at),
                )
                self._insert_pair(db, conversation_id, coordinator_hash, worker_hash, now, expires_at)
        except sqlite3.IntegrityError:
            raise StoreError("conflict", "worker_id", f"worker {worker_id!r} already has a live conversation") from None
        return self._require_conversation(conversation_id)

    @staticmethod
    def _insert_pair(
        db: sqlite3.Connection,
        conversation_id: str,
        coordinator_hash: str,
        worker_hash: str,
        now: float,
        expires: float,
    ) -> None:
        db.executemany(
            "INSERT INTO tokens(hash, kind, conversation_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            [
                (coordinator_hash, "coordinator", conversation_id, now, expires),
                (worker_hash, "worker", conversation_id, now, expires),
            ],
        )

    def rotate_conversation(
        self, conversation_id: str, *, coordinator_hash: str, worker_hash: str, now: float, expires_at: float
    ) -> Conversation:
        current = self._require_conversation(conversation_id)
        if current.revoked:
            raise StoreError("conflict", "conversation_id", f"{conversation_id} is revoked; create a new one")
        with self._transaction() as db:
            db.execute(
                "UPDATE tokens SET revoked_at=? WHERE conversation_id=? AND revoked_at IS NULL",
                (now, conversation_id),
            )
            db.execute("UPDATE conversations SET expires_at=? WHERE id=?", (expires_at, conversation_id))
            self._insert_pair(db, conversation_id, coordinator_hash, worker_hash, now, expires_at)
        return self._require_conversation(conversation_id)

    def revoke_conversation(self, conversation_id: str, now: float) -> Conversation:
        self._require_conversation(conversation_id)
        with self._transaction() as db:
            db.execute(
                "UPDATE conversations SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                (now, conversation_id),
            )
            db.execute(
                "UPDATE tokens SET revoked_at=? WHERE conversation_id=? AND revoked_at IS NULL",
                (now, conversation_id),
            )
        return self._require_conversation(conversation_id)

    def _require_conversation(self, conversation_id: str) -> Conversation:
        found = self.get_conversation(conversation_id)
        if found is None:
            raise StoreError("not_found", "conversation_id", f"no conversation {conversation_id!r}")
        return found

    def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = self._db.execute("SELECT * FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        return _conversation(row) if row else None

    def list_conversations(self, include_revoked: bool) -> list[Conversation]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        rows = self._db.execute(f"SELECT * FROM conversations {where} ORDER BY worker_id, created_at")  # noqa: S608
        return [_conversation(r) for r in rows]

    def live_conversation_of_worker(self, worker_id: str) -> Conversation | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE worker_id=? AND revoked_at IS NULL", (worker_id,)
        ).fetchone()
        return _conversation(row) if row else None

    # messages
    def add_message(self, draft: MessageDraft, now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO messages(conversation_id, from_side, from_role, action_type, body, files_json, created_at,"
            " to_side, from_worker, to_worker, reply_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                draft.conversation_id,
                draft.from_side,
                draft.from_role,
                draft.action_type,
                draft.body,
                json.dumps(draft.files),
                now,
                draft.to_side,
                draft.from_worker,
                draft.to_worker,
                draft.reply_to,
            ),
        )
        return int(cursor.lastrowid or 0)

    def get_message(self, message_id: int) -> Message | None:
        row = self._db.execute("SELECT * FROM messages WHERE id=?", (message_id,)).fetchone()
        return _message(row) if row else None

    def messages_for(self, conversation_id: str, side: Box, after_id: int, limit: int) -> list[Message]:
        where, params = _inbox(conversation_id, side)
        rows = self._db.execute(
            f"SELECT * FROM messages WHERE {where} AND id>? ORDER BY id LIMIT ?",  # noqa: S608
            (*params, after_id, limit),
        )
        return [_message(r) for r in rows]

    def count_for(self, conversation_id: str, side: Box, after_id: int) -> int:
        where, params = _inbox(conversation_id, side)
        row = self._db.execute(
            f"SELECT COUNT(*) FROM messages WHERE {where} AND id>?",  # noqa: S608
            (*params, after_id),
        ).fetchone()
        return int(row[0])

    def newest_id(self, conversation_id: str, side: Box) -> int:
        where, params = _inbox(conversation_id, side)
        row = self._db.execute(f"SELECT COALESCE(MAX(id), 0) FROM messages WHERE {where}", params).fetchone()  # noqa: S608
        return int(row[0])

    def unread_count(self, conversation_id: str, side: Box) -> int:
        """Messages to `side` after its read cursor, in one statement (every heartbeat asks)."""
        where, params = _inbox(conversation_id, side)
        row = self._db.execute(
            f"SELECT COUNT(*) FROM messages WHERE {where} AND id > COALESCE("  # noqa: S608
            "(SELECT acked_through FROM read_cursors WHERE conversation_id=? AND side=?), 0)",
            (*params, conversation_id, side),
        ).fetchone()
        return int(row[0])

    def read_cursor(self, conversation_id: str, side: Box) -> int:
        row = self._db.execute(
            "SELECT acked_through FROM read_cursors WHERE conversation_id=? AND side=?",
            (conversation_id, side),
        ).fetchone()
        return int(row[0]) if row else 0

    def advance_cursor(self, conversation_id: str, side: Box, ack_through: int) -> int:
        # Never backwards, and never past the newest message this side could have seen.
        target = min(ack_through, self.newest_id(conversation_id, side))
        self._db.execute(
            "INSERT INTO read_cursors(conversation_id, side, acked_through) VALUES (?, ?, ?)"
            " ON CONFLICT(conversation_id, side)"
            " DO UPDATE SET acked_through=MAX(acked_through, excluded.acked_through)",
            (conversation_id, side, target),
        )
        return self.read_cursor(conversation_id, side)

    # presence
    def heartbeat(self, conversation_id: str, side: Box, now: float, status: str | None) -> None:
        if status is None:
            self._db.execute(
                "INSERT INTO presence(conversation_id, side, last_heartbeat) VALUES (?, ?, ?)"
                " ON CONFLICT(conversation_id, side) DO UPDATE SET last_heartbeat=excluded.last_heartbeat",
                (conversation_id, side, now),
            )
        else:
            self._db.execute(
                "INSERT INTO presence(conversation_id, side, status, status_at, last_heartbeat) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(conversation_id, side) DO UPDATE SET status=excluded.status,"
                " status_at=excluded.status_at, last_heartbeat=excluded.last_heartbeat",
                (conversation_id, side, status, now, now),
            )

    def presence(self, conversation_id: str, side: Box) -> Presence:
        row = self._db.execute(
            "SELECT status, status_at, last_heartbeat FROM presence WHERE conversation_id=? AND side=?",
            (conversation_id, side),
        ).fetchone()
        if row is None:
            return Presence(None, None, None)
        return Presence(row["status"], row["status_at"], row["last_heartbeat"])

    def fleet(self) -> list[FleetRow]:
        rows = self._db.execute(
            "SELECT c.*, p.status AS p_status, p.status_at AS p_status_at, p.last_heartbeat AS p_hb,"
            " (SELECT COUNT(*) FROM tasks t WHERE t.worker_id=c.worker_id AND t.state IN (?, ?, ?))"
            " AS open_tasks"
            " FROM conversations c LEFT JOIN presence p ON p.conversation_id=c.id AND p.side='worker'"
            " WHERE c.revoked_at IS NULL ORDER BY c.worker_id",
            OPEN_TASK_STATES,
        )
        return [
            FleetRow(
                conversation=_conversation(r),
                worker_presence=Presence(r["p_status"], r["p_status_at"], r["p_hb"]),
                open_tasks=int(r["open_tasks"]),
            )
            for r in rows
        ]

    # tasks
    def create_task(
        self, *, worker_id: str, conversation_id: str, title: str, detail: str, created_by: str, now: float
    ) -> Task:
        cursor = self._db.execute(
            "INSERT INTO tasks(worker_id, conversation_id, title, detail, state, created_by, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'assigned', ?, ?, ?)",
            (worker_id, conversation_id, title, detail, created_by, now, now),
        )
        return self._require_task(int(cursor.lastrowid or 0))

    def _require_task(self, task_id: int) -> Task:
        found = self.get_task(task_id)
        if found is None:
            raise StoreError("not_found", "task_id", f"no task {task_id}")
        return found

    def get_task(self, task_id: int) -> Task | None:
        row = self._db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
        return _task(row) if row else None

    def list_tasks(
        self, *, worker_id: str | None, conversation_id: str | None, states: tuple[TaskState, ...] | None
    ) -> list[Task]:
        clauses: list[str] = []
        params: list[object] = []
        if worker_id is not None:
            clauses.append("worker_id=?")
            params.append(worker_id)
        if conversation_id is not None:
            clauses.append("conversation_id=?")
            params.append(conversation_id)
        if states:
            clauses.append(f"state IN ({','.join('?' for _ in states)})")
            params.extend(states)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(f"SELECT * FROM tasks {where} ORDER BY id", params)  # noqa: S608
        return [_task(r) for r in rows]

    def update_task(self, task_id: int, *, state: TaskState, note: str, now: float) -> Task:
        self._require_task(task_id)
        self._db.execute("UPDATE tasks SET state=?, note=?, updated_at=? WHERE id=?", (state, note, now, task_id))
        return self._require_task(task_id)

    def move_task(self, task_id: int, *, to_worker_id: str, to_conversation_id: str, now: float) -> Task:
        task = self._require_task(task_id)
        self._db.execute(
            "UPDATE tasks SET worker_id=?, conversation_id=?, state='assigned', reassigned_from=?, updated_at=?"
            " WHERE id=?",
            (to_worker_id, to_conversation_id, task.worker_id, now, task_id),
        )
        return self._require_task(task_id)

    # audit
    def audit(self, *, actor: str, action: str, target: str, detail: str, remote: str, now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO audit_log(at, actor, action, target, detail, remote) VALUES (?, ?, ?, ?, ?, ?)",
            (now, actor, action, target, detail, remote),
        )
        return int(cursor.lastrowid or 0)

    def audit_log(self, limit: int = 1000) -> list[AuditEntry]:
        rows = self._db.execute("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", (limit,))
        return [
            AuditEntry(r["id"], r["at"], r["actor"], r["action"], r["target"], r["detail"], r["remote"]) for r in rows
        ]
