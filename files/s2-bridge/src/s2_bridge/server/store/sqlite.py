"""SQLite store (WAL): the embedded default. One connection, used from the event loop only."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s2_bridge.contract.models import OPEN_TASK_STATES, Box, Conversation, Message, Task, TaskState, iso
from s2_bridge.server.store.base import (
    AuditEntry,
    FleetRow,
    LeadRecord,
    MessageDraft,
    Presence,
    Revocation,
    StoreError,
    SweepCutoffs,
    SweepMark,
    SweepStep,
    TokenRecord,
)
from s2_bridge.server.store.sqlite_schema import (
    BACKFILL_SENDER_USAGE,
    MIGRATE_1_TO_2,
    MIGRATE_2_TO_3,
    SCHEMA_STATEMENTS,
    SCHEMA_VERSION,
    SENDERS_FROM_AUDIT,
)

log = logging.getLogger("s2_bridge.store")

# The WAL file is cut back to this after a checkpoint resets it (it otherwise stays at its
# largest size ever, e.g. after a burst or a sweep).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

# A message is read when its addressee read it: its id is at most its inbox's read cursor, or,
# for one to the orchestrator's side, at most the lead's cursor (bound as :lead): the lead or
# the conversation's coordinator, whichever reads it. A worker-to-worker message the lead also
# sees is the recipient's: the lead's overview does not hold it.
READ_BY_RECIPIENTS = (
    "(id <= COALESCE((SELECT r.acked_through FROM read_cursors r"
    " WHERE r.conversation_id = messages.conversation_id AND r.side = messages.to_side), 0)"
    " OR (to_side = 'coordinator' AND id <= :lead))"
)
MESSAGE_SIZE = "length(CAST(body AS BLOB)) + length(CAST(files_json AS BLOB))"
# A sweep step also stops once it has deleted this many message bytes: 500 rows of 50,000
# characters would otherwise free some 25 MB (6,000 pages) in one transaction.
SWEEP_STEP_MAX_BYTES = 2 * 1024 * 1024


def _within_budget(rows: list[sqlite3.Row], deletes: list[bool]) -> int:
    """How many of `rows` (in order) one step takes: all, or up to the row that reaches
    SWEEP_STEP_MAX_BYTES of deleted bytes (at least one row, so a sweep always moves on)."""
    spent = 0
    for index, (row, delete) in enumerate(zip(rows, deletes, strict=True)):
        if delete:
            spent += row["size"]
            if spent >= SWEEP_STEP_MAX_BYTES:
                return index + 1
    return len(rows)


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
        # Deleted rows' pages can be given back to the file system a step at a time (compact);
        # it takes effect only before the first table: an older file is converted in _migrate.
        if self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss can drop
        # the last commits, and it never corrupts the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        # One transaction from the old schema to the new one, user_version included: a crash
        # half-way leaves the old schema, migrated again at the next start.
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    "schema_too_new",
                    "storage.path",
                    f"{self.path} has schema {version}; this runtime knows {SCHEMA_VERSION}: install the newer runtime",
                )
            if version == 1:
                for statement in MIGRATE_1_TO_2:
                    db.execute(statement)
            if version in (1, 2):
                for statement in MIGRATE_2_TO_3:
                    db.execute(statement)
                if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_log'").fetchone():
                    db.execute(SENDERS_FROM_AUDIT)
            for statement in SCHEMA_STATEMENTS:
                db.execute(statement)
            if version in (1, 2):
                db.execute(BACKFILL_SENDER_USAGE)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if version and version < SCHEMA_VERSION:
            log.info("%s: migrated the schema from %d to %d", self.path, version, SCHEMA_VERSION)
        self._convert_to_incremental_vacuum()

    def _convert_to_incremental_vacuum(self) -> None:
        """A file made before auto_vacuum=INCREMENTAL is rebuilt once (VACUUM), so that retention
        can give deleted space back step by step (compact) from then on."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 0:  # 0: NONE
            return
        size = Path(self.path).stat().st_size
        log.info("%s: converting to incremental auto-vacuum (one VACUUM of %d bytes)", self.path, size)
        started = time.monotonic()
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        try:
            self._db.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # e.g. no room for the rebuilt copy: serve anyway
            log.warning(
                "%s: not converted (%s); deleted space is reused but not given back: free %d bytes of disk"
                " and restart the bridge",
                self.path,
                exc,
                size,
            )
            return
        log.info(
            "%s: converted in %.2f s (auto_vacuum=%s)",
            self.path,
            time.monotonic() - started,
            self._db.execute("PRAGMA auto_vacuum").fetchone()[0],
        )

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

    def revoke_conversation(self, conversation_id: str, now: float) -> Revocation:
        self._require_conversation(conversation_id)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE conversations SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                (now, conversation_id),
            ).rowcount
            if changed:
                db.execute(
                    "UPDATE tokens SET revoked_at=? WHERE conversation_id=? AND revoked_at IS NULL",
                    (now, conversation_id),
                )
            revoked_at = db.execute("SELECT revoked_at FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        return Revocation(
            conversation=self._require_conversation(conversation_id),
            revoked_at=float(revoked_at[0]),
            changed=bool(changed),
        )

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

    def live_conversation_of_worker(self, worker_id: str, now: float) -> Conversation | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE worker_id=? AND revoked_at IS NULL AND expires_at > ?", (worker_id, now)
        ).fetchone()
        return _conversation(row) if row else None

    def expired_conversation_of_worker(self, worker_id: str, now: float) -> Conversation | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE worker_id=? AND revoked_at IS NULL AND expires_at <= ?", (worker_id, now)
        ).fetchone()
        return _conversation(row) if row else None

    # messages
    def add_message(self, draft: MessageDraft, now: float) -> int:
        cursor = self._db.execute(
            "INSERT INTO messages(conversation_id, from_side, from_role, action_type, body, files_json, created_at,"
            " to_side, from_worker, to_worker, reply_to, sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                draft.sender,
            ),
        )
        return int(cursor.lastrowid or 0)

    def stored_bytes(self, sender: str) -> int:
        row = self._db.execute("SELECT stored_bytes FROM sender_usage WHERE sender=?", (sender,)).fetchone()
        return int(row[0]) if row else 0

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

    def fleet(self, now: float) -> list[FleetRow]:
        rows = self._db.execute(
            "SELECT c.*, p.status AS p_status, p.status_at AS p_status_at, p.last_heartbeat AS p_hb,"
            " (SELECT COUNT(*) FROM tasks t WHERE t.worker_id=c.worker_id AND t.state IN (?, ?, ?))"
            " AS open_tasks, c.expires_at <= ? AS expired"
            " FROM conversations c LEFT JOIN presence p ON p.conversation_id=c.id AND p.side='worker'"
            " WHERE c.revoked_at IS NULL ORDER BY c.worker_id",
            (*OPEN_TASK_STATES, now),
        )
        return [
            FleetRow(
                conversation=_conversation(r),
                worker_presence=Presence(r["p_status"], r["p_status_at"], r["p_hb"]),
                open_tasks=int(r["open_tasks"]),
                expired=bool(r["expired"]),
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

    # retention
    def sweep(self, cutoffs: SweepCutoffs, limit: int, mark: SweepMark | None = None) -> SweepStep:
        mark = mark or SweepMark()
        with self._transaction() as db:
            if mark.phase == "unread":  # everything past unread_before: every row looked at goes
                rows = db.execute(
                    f"SELECT id, {MESSAGE_SIZE} AS size FROM messages WHERE created_at < ?"  # noqa: S608
                    " ORDER BY created_at, id LIMIT ?",
                    (cutoffs.unread_before, limit),
                ).fetchall()
                taken = _within_budget(rows, [True] * len(rows))
                more = taken < len(rows) or len(rows) == limit
                rows = rows[:taken]
                self._delete_messages(db, [r["id"] for r in rows])
                resume = mark if more else SweepMark("read")
                return SweepStep(len(rows), sum(r["size"] for r in rows), 0, len(rows), resume)
            if mark.phase == "read":  # younger than that: only what was read; walk on by age
                lead = db.execute(
                    "SELECT COALESCE((SELECT acked_through FROM read_cursors WHERE conversation_id='' AND side='lead'),"
                    " 0)"
                ).fetchone()[0]
                rows = db.execute(
                    f"SELECT id, created_at, {MESSAGE_SIZE} AS size, {READ_BY_RECIPIENTS} AS done"  # noqa: S608
                    " FROM messages WHERE created_at < :before AND (created_at, id) > (:after, :after_id)"
                    " ORDER BY created_at, id LIMIT :limit",
                    {
                        "lead": lead,
                        "before": cutoffs.read_before,
                        "after": mark.created_at,
                        "after_id": mark.message_id,
                        "limit": limit,
                    },
                ).fetchall()
                taken = _within_budget(rows, [bool(r["done"]) for r in rows])
                more = taken < len(rows) or len(rows) == limit
                rows = rows[:taken]
                gone = [r for r in rows if r["done"]]
                self._delete_messages(db, [r["id"] for r in gone])
                last = rows[-1] if rows else None
                resume = SweepMark("read", last["created_at"], last["id"]) if last and more else SweepMark("audit")
                return SweepStep(len(gone), sum(r["size"] for r in gone), 0, len(rows), resume)
            deleted = db.execute(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? ORDER BY at, id LIMIT ?)",
                (cutoffs.audit_before, limit),
            ).rowcount
            return SweepStep(0, 0, deleted, deleted, mark if deleted == limit else None)

    @staticmethod
    def _delete_messages(db: sqlite3.Connection, ids: list[int]) -> None:
        # the delete trigger takes each row off its sender's counter, in this transaction
        db.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in ids])

    def compact(self, max_pages: int) -> int:
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL (see _migrate)
            return 0
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        if free:
            # executescript steps the pragma to its end (execute() would free a single page)
            self._db.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        if not free:
            # Copy the WAL into the file now, so the file shrinks; PASSIVE never waits on a reader.
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return free
