"""s2.fleet.fleet_status_info against a real bridge of its own (the whole fleet is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.s2.fleet.plugins.doc_fragments.bridge import ModuleDocFragment
from ansible_collections.s2.fleet.plugins.module_utils.runtime import (
    ADMIN_CONFIG_DEFAULT,
    BRIDGE_ARGUMENT_SPEC,
    Failure,
)
from ansible_collections.s2.fleet.plugins.modules.bridge_conversation import converge
from ansible_collections.s2.fleet.plugins.modules.fleet_status_info import fleet_status
from s2_bridge.agent.table import fleet_table
from s2_bridge.contract import paths
from s2_bridge.contract.tokens import TOKEN_RE


def provision(bridge, tmp_path: Path, worker_id: str, role: str) -> dict:
    params = {
        "admin_config": bridge.admin_config,
        "bridge_url": bridge.url,
        "ca_file": "",
        "my_role": "s2-orchestrator",
        "partner_role": role,
        "worker_id": worker_id,
        "ttl_s": 3600,
        "min_lifetime_s": 60,
        "state": "present",
        "credentials_dir": str(tmp_path / "credentials"),
        "owner": None,
        "group": None,
    }
    converge(params, bridge.admin().call)
    return json.loads((tmp_path / "credentials" / f"s2-worker-{worker_id}-credentials.json").read_text())


def test_empty_fleet_is_not_healthy(fresh_bridge):
    result = fleet_status(fresh_bridge.admin().call)
    assert result["workers"] == []
    assert result["all_healthy"] is False
    assert result["table"] == ["WORKER  ROLE  STATUS  HEALTH  HEARTBEAT  OPEN TASKS"]


def test_fleet_status_reports_each_worker(fresh_bridge, tmp_path):
    creds = {
        wid: provision(fresh_bridge, tmp_path, wid, role)
        for wid, role in (("10", "docs"), ("2", "tests"), ("1", "frontend"))
    }
    before = fleet_status(fresh_bridge.admin().call)
    assert [w["worker_id"] for w in before["workers"]] == ["1", "2", "10"]  # numeric order
    assert {w["health"] for w in before["workers"]} == {"never_seen"}
    assert before["all_healthy"] is False

    # worker 2 heartbeats as working and gets a task
    fresh_bridge.as_token(creds["2"]["worker_token"]).call("heartbeat", {"status": "working"})
    fresh_bridge.admin().call("assign_task", {"title": "write tests", "worker_id": "2"})
    mid = fleet_status(fresh_bridge.admin().call)
    two = next(w for w in mid["workers"] if w["worker_id"] == "2")
    assert two["health"] == "healthy"
    assert two["status"] == "working"
    assert two["open_tasks"] == 1
    assert two["conversation_id"] == creds["2"]["conversation_id"]
    assert two["heartbeat_age_s"] is not None and two["heartbeat_age_s"] < 30
    assert mid["all_healthy"] is False
    assert mid["silent_after_s"] == 45

    header, *rows = mid["table"]
    assert header.split() == ["WORKER", "ROLE", "STATUS", "HEALTH", "HEARTBEAT", "OPEN", "TASKS"]
    assert len(rows) == 3
    row2 = next(r for r in rows if r.split()[0] == "2")
    assert row2.split()[1:4] == ["tests", "working", "healthy"]
    assert row2.split()[-1] == "1"
    assert row2.split()[4].endswith("s")
    row1 = next(r for r in rows if r.split()[0] == "1")
    assert row1.split()[1:] == ["frontend", "-", "never_seen", "never", "0"]
    # columns line up: every HEALTH cell starts where the header's does
    col = header.index("HEALTH")
    assert all(r[col:].split()[0] in ("healthy", "never_seen", "silent") for r in rows)

    for wid in ("1", "10"):
        fresh_bridge.as_token(creds[wid]["worker_token"]).call("heartbeat", {})
    after = fleet_status(fresh_bridge.admin().call)
    assert after["all_healthy"] is True
    assert not TOKEN_RE.search(json.dumps(after))


def test_table_is_the_runtimes():
    """One renderer: the module's lines are `s2-bridge status`'s table (runtime's age format, worker order)."""
    workers = [
        {"worker_id": "10", "worker_role": "docs", "status": None, "health": "never_seen", "heartbeat_age_s": None},
        {"worker_id": "2", "worker_role": "tests", "status": "working", "health": "healthy", "heartbeat_age_s": 245.3},
    ]
    for worker in workers:
        worker["open_tasks"] = 0
    answer = {"workers": workers, "silent_after_s": 45.0}
    result = fleet_status(lambda tool, arguments: answer)
    assert [w["worker_id"] for w in result["workers"]] == ["2", "10"]
    assert result["table"] == fleet_table(answer).splitlines()
    assert [line.split()[4] for line in result["table"][1:]] == ["4m05s", "never"]


def test_bad_answer_is_a_bad_result():
    for answer in ({}, {"workers": "none"}, {"workers": [{"worker_role": "tests"}]}):
        with pytest.raises(Failure) as info:
            fleet_status(lambda tool, arguments, answer=answer: answer)
        assert info.value.code == "bad_result"


def test_worker_token_is_not_the_admin(fresh_bridge, tmp_path):
    creds = provision(fresh_bridge, tmp_path, "5", "tests")
    with pytest.raises(Failure) as info:
        fleet_status(fresh_bridge.as_token(creds["worker_token"]).call)
    assert info.value.code == "forbidden"
    assert creds["worker_token"] not in str(info.value)


def test_module_entry_point_in_check_mode(fresh_bridge, tmp_path, ansible_module):
    creds = provision(fresh_bridge, tmp_path, "3", "tests")
    fresh_bridge.as_token(creds["worker_token"]).call("heartbeat", {"status": "idle"})
    args = {"admin_config": fresh_bridge.admin_config}
    out = ansible_module("fleet_status_info", args, extra_args=("--check", "-vvv"))
    assert out.rc == 0, out.stdout + out.stderr
    assert out.result["changed"] is False
    assert out.result["all_healthy"] is True
    [worker] = out.result["workers"]
    assert worker["worker_id"] == "3"
    assert worker["status"] == "idle"
    assert out.result["table"][1].split()[:4] == ["3", "tests", "idle", "healthy"]
    text = out.stdout + out.stderr
    assert fresh_bridge.admin_token not in text
    assert creds["worker_token"] not in text


def test_admin_config_default_is_the_runtimes():
    """One default for admin_config: the module option, its documentation and the runtime's config directory agree."""
    assert f"{paths.CONFIG_DIR}/admin.toml" == ADMIN_CONFIG_DEFAULT
    assert BRIDGE_ARGUMENT_SPEC["admin_config"]["default"] == ADMIN_CONFIG_DEFAULT
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]["admin_config"]["default"]
    assert documented == ADMIN_CONFIG_DEFAULT


def test_module_entry_point_names_a_bad_admin_config(tmp_path, ansible_module):
    out = ansible_module("fleet_status_info", {"admin_config": str(tmp_path / "missing-admin.toml")})
    assert out.rc != 0
    assert out.result["error"]["code"] == "admin_config"
    assert "missing-admin.toml" in out.result["msg"]
