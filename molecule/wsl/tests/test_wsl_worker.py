"""The worker without systemd (WSL): its keepalive runs under the role's supervisor, heartbeats,
and comes back after being killed. Each test runs once and reaches hosts by name."""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime

import pytest
from agents import agent_calls
from s2_bridge.contract.tokens import TOKEN_RE

WORKER = "worker-7-wsl-cli"
SUPERVISOR = "/opt/s2-bridge/bin/s2-keepalive-supervisor"
ADMIN_CONFIG = "/etc/s2-bridge/admin.toml"
S2_BRIDGE = "/opt/s2-bridge/venv/bin/s2-bridge"


@pytest.fixture(scope="session")
def worker(get_lab_host):
    return get_lab_host(WORKER)


@pytest.fixture(scope="session")
def orch(get_lab_host, orch_name):
    return get_lab_host(orch_name)


@pytest.fixture(scope="session")
def worker_id(inventory) -> str:
    return str(inventory["hostvars"][WORKER]["s2_worker_id"])


def keepalive_pids(worker) -> list[int]:
    # the agent's own process: runuser, which starts it as the agent, matches the pattern too
    out = worker.run("pgrep -u agent -f 's2-bridge keepalive'").stdout
    return [int(pid) for pid in out.split()]


def health(orch, worker_id: str) -> dict:
    result = orch.run(f"{S2_BRIDGE} status --config {ADMIN_CONFIG} --json")
    assert result.rc == 0, result.stderr
    data = json.loads(result.stdout)
    rows = data["workers"] if isinstance(data, dict) else data
    return next(row for row in rows if str(row["worker_id"]) == worker_id)


def wait_for(predicate, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_there_is_no_systemd_and_the_supervisor_keeps_the_keepalive(worker):
    assert not worker.file("/run/systemd/system").exists
    assert worker.file(SUPERVISOR).is_file
    assert worker.file(SUPERVISOR).mode & 0o111
    assert worker.run(f"{SUPERVISOR} status").rc == 0
    pids = keepalive_pids(worker)
    assert len(pids) == 1, pids
    owner = worker.check_output(f"ps -o user= -p {pids[0]}")
    assert owner == "agent"
    # the token stays in the 0600 file: the command line names the file only
    args = worker.check_output(f"ps -o args= -p {pids[0]}")
    assert "--credentials" in args
    assert not TOKEN_RE.search(args)


def test_it_starts_again_at_boot_via_wsl_conf(worker):
    conf = worker.file("/etc/wsl.conf").content_string
    assert "[boot]" in conf
    assert SUPERVISOR in conf


def test_the_worker_heartbeats(orch, worker_id):
    assert wait_for(lambda: health(orch, worker_id)["health"] == "healthy", timeout=60)


def test_a_killed_keepalive_comes_back_and_heartbeats(worker, orch, worker_id):
    before = keepalive_pids(worker)
    assert before
    killed_at = time.time()  # the containers share this host's clock
    worker.run_expect([0], f"kill -9 {before[0]}")
    after = wait_for(lambda: [p for p in keepalive_pids(worker) if p not in before], timeout=60)
    assert after, "the supervisor did not restart the killed keepalive"

    def beat_after_kill():
        stamp = health(orch, worker_id)["last_heartbeat_at"]
        # whole seconds: a beat stamped later than the kill's second came from the new process
        return stamp is not None and datetime.fromisoformat(stamp).timestamp() > killed_at

    assert wait_for(beat_after_kill, timeout=90, interval=2.0), health(orch, worker_id)
    assert health(orch, worker_id)["health"] == "healthy"


def test_the_supervisor_log_holds_no_token(worker):
    logs = worker.run("cat /home/agent/.s2/log/*.log 2>/dev/null").stdout
    assert logs, "no supervisor log"
    assert not TOKEN_RE.search(logs)
    assert not TOKEN_RE.search(worker.run("ps -eo args --no-headers").stdout)


def test_status_table_lists_the_worker(orch, worker_id):
    table = orch.check_output(f"{S2_BRIDGE} status --config {shlex.quote(ADMIN_CONFIG)}")
    assert worker_id in table


def test_the_limited_run_rebuilt_the_credentials(worker, worker_id):
    """side_effect.yml removed this file and ran site.yml with --limit worker-7-wsl-cli."""
    creds = worker.file(f"/home/agent/.s2/s2-worker-{worker_id}-credentials.json")
    assert creds.exists
    assert creds.mode == 0o600
    assert creds.user == "agent"
    assert json.loads(creds.content_string)["coordinator_token"] == ""


def test_a_star_fleet_refuses_a_direct_message_naming_the_rule(worker, inventory):
    """This scenario's bridge runs with messaging = "star" (converge.yml)."""
    kind = str(inventory["hostvars"][WORKER]["s2_agent_kind"])
    refused, to_lead = agent_calls(
        worker,
        kind,
        [
            ("send_to_partner", {"to": "1", "message": "a direct message"}),
            ("send_to_partner", {"message": "to the lead is fine"}),
        ],
    )
    error = refused["error"]
    assert error["code"] == "forbidden" and error["field"] == "to", error
    assert "star" in error["message"] and "mesh" in error["fix"]
    assert to_lead["recipients"] == ["lead"]
