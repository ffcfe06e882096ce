"""The worker id rule has one home (s2_bridge.contract.ids); the roles' copy must say the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from s2_bridge.contract import ids

COLLECTION = Path(__file__).resolve().parents[3] / "collections/ansible_collections/s2/fleet"
SHARED_VARS = COLLECTION / "roles/_common/vars/main.yml"
# Every worker id the inventories and the tests use today, and shapes the rule must refuse.
ACCEPTED = ["1", "3", "8", "10", "worker-3", "a.b_c-d", "x" * 64]
REFUSED = ["", "-3", ".3", "_3", "x" * 65, "a/b", "../3", "a b", "3\n", "é"]


def test_the_roles_use_the_runtimes_worker_id_rule() -> None:
    shared = yaml.safe_load(SHARED_VARS.read_text(encoding="utf-8"))
    assert shared["s2_fleet_worker_id_pattern"] == ids.WORKER_ID_PATTERN
    assert shared["s2_fleet_worker_id_rule"] == ids.WORKER_ID_RULE


def test_every_role_checks_worker_ids_with_the_shared_pattern() -> None:
    for tasks in (COLLECTION / "roles").glob("*/tasks/*.yml"):
        text = tasks.read_text(encoding="utf-8")
        if "worker_id | string is match(" in text:
            assert "is match(s2_fleet_worker_id_pattern)" in text, tasks


@pytest.mark.parametrize("worker_id", ACCEPTED)
def test_the_rule_accepts(worker_id: str) -> None:
    assert ids.is_worker_id(worker_id)


@pytest.mark.parametrize("worker_id", REFUSED)
def test_the_rule_refuses(worker_id: str) -> None:
    assert not ids.is_worker_id(worker_id)
