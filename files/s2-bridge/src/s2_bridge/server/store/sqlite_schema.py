"""The SQLite store's schema and its in-place migrations (one transaction each, run by
SQLiteStore at open): the tables, indexes and triggers of SCHEMA_VERSION."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3
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
    reply_to INTEGER,
    sender TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS messages_to ON messages(conversation_id, to_side, id);
CREATE INDEX IF NOT EXISTS messages_from ON messages(from_side, id);
-- retention walks messages and audit rows by age
CREATE INDEX IF NOT EXISTS messages_created ON messages(created_at);
-- The bytes (base.stored_size: body + files JSON, UTF-8) each sender still has stored, kept by
-- the two triggers in the transaction of every insert and delete: a send reads one row, not a SUM.
CREATE TABLE IF NOT EXISTS sender_usage (
    sender TEXT PRIMARY KEY,
    stored_bytes INTEGER NOT NULL,
    messages INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS messages_usage_insert AFTER INSERT ON messages BEGIN
    INSERT INTO sender_usage(sender, stored_bytes, messages)
        VALUES (NEW.sender, length(CAST(NEW.body AS BLOB)) + length(CAST(NEW.files_json AS BLOB)), 1)
        ON CONFLICT(sender) DO UPDATE SET stored_bytes = stored_bytes + excluded.stored_bytes,
            messages = messages + 1;
END;
CREATE TRIGGER IF NOT EXISTS messages_usage_delete AFTER DELETE ON messages BEGIN
    UPDATE sender_usage SET
        stored_bytes = stored_bytes - (length(CAST(OLD.body AS BLOB)) + length(CAST(OLD.files_json AS BLOB))),
        messages = messages - 1
        WHERE sender = OLD.sender;
END;
CREATE TABLE IF NOT EXISTS read_cursors (
    conversation_id TEXT NOT NULL,
    side TEXT NOT NULL,
    acked_through INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, side)
);
{presence}
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
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);
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
# the heartbeat table, also what bench/bare_app.py (the bare ASGI ceiling) writes to
PRESENCE_TABLE = """CREATE TABLE IF NOT EXISTS presence (
    conversation_id TEXT NOT NULL,
    side TEXT NOT NULL,
    status TEXT,
    status_at REAL,
    last_heartbeat REAL,
    PRIMARY KEY (conversation_id, side)
);"""
SCHEMA = SCHEMA.replace("{tokens}", TOKENS_TABLE.format(name="tokens")).replace("{presence}", PRESENCE_TABLE)

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

# Schema 2 to 3 (per-sender quota): each message names its sender. A worker's is its worker id;
# a message from the coordinator side was sent by the lead or the admin when the audit row of
# its send says so (message.send names the message id), else by the conversation's coordinator
# side (task assignments of schema 2 are not told apart: they count to the coordinator side).
# The counters (sender_usage) are filled from these after SCHEMA has created the table.
MIGRATE_2_TO_3 = (
    "ALTER TABLE messages ADD COLUMN sender TEXT NOT NULL DEFAULT ''",
    "UPDATE messages SET sender = CASE from_side"
    " WHEN 'worker' THEN 'worker:' || COALESCE(from_worker,"
    " (SELECT worker_id FROM conversations c WHERE c.id = messages.conversation_id))"
    " ELSE 'coordinator:' || conversation_id END",
)
SENDERS_FROM_AUDIT = (
    "UPDATE messages SET sender = sent.actor FROM (SELECT json_extract(detail, '$.message_id') AS message_id, actor"
    " FROM audit_log WHERE action = 'message.send' AND actor IN ('lead', 'admin')) AS sent"
    " WHERE messages.id = sent.message_id AND messages.from_side = 'coordinator'"
)
BACKFILL_SENDER_USAGE = (
    "INSERT INTO sender_usage(sender, stored_bytes, messages)"
    " SELECT sender, SUM(length(CAST(body AS BLOB)) + length(CAST(files_json AS BLOB))), COUNT(*)"
    " FROM messages GROUP BY sender"
)


def _statements(script: str) -> list[str]:
    """The statements of a script (triggers hold semicolons: complete_statement tells the ends)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    assert not pending.strip(), pending
    return statements


SCHEMA_STATEMENTS = _statements(SCHEMA)
