"""A change and its audit row commit together: when the audit write fails (as a kill -9 between
the two writes would leave it), the change is not stored either. Real SQLite file, in process."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from s2_bridge.contract import tokens
from s2_bridge.contract.config import BridgeConfig
from s2_bridge.server.service import BridgeService
from s2_bridge.server.store.sqlite import SQLiteStore


class AuditFails(Exception):
    pass


@pytest.fixture
def service(tmp_path: Path) -> BridgeService:
    store = SQLiteStore(str(tmp_path / "bridge.db"))
    service = BridgeService(store, BridgeConfig(path=str(tmp_path / "bridge.toml")))
    admin = tokens.new_token("admin")
    store.replace_admin_token(tokens.token_hash(admin), 0.0)
    service.admin_token = admin  # type: ignore[attr-defined]
    return service


def caller_of(service: BridgeService, token: str):
    caller = service.authenticate(token, "127.0.0.1")
    assert not isinstance(caller, str), caller
    return caller


def counts(db_path: str) -> tuple[int, int, int, int]:
    with sqlite3.connect(db_path) as db:
        return tuple(
            db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("messages", "tasks", "conversations", "audit_log")
        )


def break_audit(service: BridgeService, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(**_: object) -> int:
        raise AuditFails("the audit write failed")

    monkeypatch.setattr(service.store, "audit", fail)


def test_a_message_task_or_conversation_whose_audit_row_fails_is_not_stored(
    service: BridgeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = caller_of(service, service.admin_token)  # type: ignore[attr-defined]
    made = service.create_conversation(admin, "s2-orchestrator", "worker-3-tests", "3", None)
    worker = caller_of(service, made.worker_token)
    coordinator = caller_of(service, made.coordinator_token)
    db_path = service.store.path  # type: ignore[attr-defined]
    service.send_to_partner(worker, "kept", "info", [])
    before = counts(db_path)

    break_audit(service, monkeypatch)
    with pytest.raises(AuditFails):
        service.send_to_partner(worker, "must not be stored", "info", [])
    with pytest.raises(AuditFails):
        service.assign_task(coordinator, "must not exist", "", None)
    with pytest.raises(AuditFails):
        service.create_conversation(admin, "s2-orchestrator", "worker-4-docs", "4", None)
    with pytest.raises(AuditFails):
        service.revoke_conversation(admin, made.conversation_id)
    assert counts(db_path) == before
    monkeypatch.undo()

    # The store is usable afterwards (no transaction left open) and the token still works.
    assert caller_of(service, made.worker_token).conversation is not None
    service.send_to_partner(worker, "after", "info", [])
    messages, tasks, conversations, audit_rows = counts(db_path)
    assert (messages, tasks, conversations, audit_rows) == (before[0] + 1, before[1], before[2], before[3] + 1)
