"""An in-process fleet for tests that drive BridgeService directly (real SQLite file, a clock
the test moves): the admin, the lead and a coordinator/worker pair per worker id."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2_bridge.contract import tokens
from s2_bridge.contract.config import BridgeConfig, LimitsSection, RetentionSection
from s2_bridge.server.caller import Caller
from s2_bridge.server.retention import DAY_S, Retention
from s2_bridge.server.service import BridgeService
from s2_bridge.server.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0  # 2027-01-15: any fixed time will do


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fleet:
    service: BridgeService
    store: SQLiteStore
    clock: Clock
    path: Path
    lead: Caller
    admin: Caller
    workers: dict[str, Caller] = field(default_factory=dict)
    coordinators: dict[str, Caller] = field(default_factory=dict)

    def sweep(self, days: float, **policy: Any) -> Any:
        return Retention(self.store, RetentionSection(**policy)).sweep(T0 + days * DAY_S)

    def remaining(self) -> set[str]:
        with sqlite3.connect(self.path) as db:
            return {body for (body,) in db.execute("SELECT body FROM messages")}


def authenticated(service: BridgeService, token: str) -> Caller:
    caller = service.authenticate(token, "127.0.0.1")
    assert isinstance(caller, Caller), caller
    return caller


def make_fleet(tmp_path: Path, worker_ids: tuple[str, ...] = ("3", "4"), **limits: int) -> Fleet:
    path = tmp_path / "bridge.db"
    store = SQLiteStore(str(path))
    clock = Clock()
    config = BridgeConfig(path=str(tmp_path / "bridge.toml"), limits=LimitsSection(**limits))
    service = BridgeService(store, config, clock=clock)
    admin_token = tokens.new_token("admin")
    store.replace_admin_token(tokens.token_hash(admin_token), T0)
    admin = authenticated(service, admin_token)
    lead = authenticated(service, service.rotate_lead(admin, "s2-orchestrator", None).lead_token)
    fleet = Fleet(service, store, clock, path, lead, admin)
    for worker_id in worker_ids:
        made = service.create_conversation(admin, "s2-orchestrator", f"worker-{worker_id}-x", worker_id, None)
        fleet.workers[worker_id] = authenticated(service, made.worker_token)
        fleet.coordinators[worker_id] = authenticated(service, made.coordinator_token)
    return fleet
