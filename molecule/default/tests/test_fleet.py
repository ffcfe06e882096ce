"""The converged fleet's behaviour, end to end across the nine containers.

These tests do not take testinfra's per-host `host` fixture, so each runs once; they reach
hosts by name through `get_lab_host`. Calls to the bridge run inside the containers with the
runtime's own client (the venv's python), the way the daemons and agents reach it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from s2_bridge.contract.tokens import TOKEN_RE

VENV_PYTHON = "/opt/s2-bridge/venv/bin/python"
S2_BRIDGE = "/opt/s2-bridge/venv/bin/s2-bridge"
ORCH_CREDENTIALS = "/var/lib/s2-fleet/credentials"
ORCH_CA = "/etc/s2-bridge/tls/ca.crt"
WORKER_CA = "/etc/s2-fleet/ca.crt"
ADMIN_CONFIG = "/etc/s2-bridge/admin.toml"
WATCHDOG_CONFIG = "/etc/s2-bridge/admin.d/watchdog.toml"  # the [watchdog] drop-in of admin.toml
AGENT_HOME = "/home/agent"

# Runs inside a container: call one tool with the token of a credentials file (or the admin
# token file) and print the JSON result (or the error) on stdout.
CALL_SCRIPT = r"""
import asyncio, json, sys
from s2_bridge.agent.client import BridgeClient, ToolCallError
url, ca, token_file, side, tool, args = sys.argv[1:7]
raw = open(token_file).read()
token = raw.strip() if side == "admin" else json.loads(raw)[side + "_token"]
async def main():
    async with BridgeClient(url, token, ca_file=ca) as bridge:
        try:
            print(json.dumps(await bridge.call(tool, **json.loads(args))))
        except ToolCallError as exc:
            print(json.dumps(exc.to_dict()))
asyncio.run(main())
"""

# Runs inside a worker as the agent user: call one tool with its own credentials file.
WORKER_CALL_SCRIPT = r"""
import asyncio, json, sys
from s2_bridge.agent.client import BridgeClient, ToolCallError
from s2_bridge.contract.credentials import load_credentials
path, tool, args = sys.argv[1:4]
async def main():
    async with BridgeClient.for_credentials(load_credentials(path)) as bridge:
        try:
            print(json.dumps(await bridge.call(tool, **json.loads(args))))
        except ToolCallError as exc:
            print(json.dumps(exc.to_dict()))
asyncio.run(main())
"""

LIST_TOOLS_SCRIPT = r"""
import asyncio, json, sys
from mcp import Client, StdioServerParameters
async def main():
    params = StdioServerParameters(command=sys.argv[1], args=sys.argv[2:])
    async with Client(params) as client:
        print(json.dumps(sorted(t.name for t in (await client.list_tools()).tools)))
asyncio.run(main())
"""


@pytest.fixture(scope="session")
def orch(get_lab_host, orch_name):
    return get_lab_host(orch_name)


@pytest.fixture(scope="session")
def workers(inventory) -> list[str]:
    return sorted(inventory["groups"]["workers"])


@pytest.fixture(scope="session")
def worker_ids(inventory, workers) -> dict[str, str]:
    return {name: str(inventory["hostvars"][name]["s2_worker_id"]) for name in workers}


@pytest.fixture(scope="session")
def worker_bridge_url(get_lab_host, workers, worker_ids) -> str:
    """The URL the workers were given (their credentials file): derived from the inventory's
    port and the orchestrator's address, never written into a test."""
    name = workers[0]
    path = f"{AGENT_HOME}/.s2/s2-worker-{worker_ids[name]}-credentials.json"
    return json.loads(get_lab_host(name).file(path).content_string)["bridge_url"]


@pytest.fixture(scope="session")
def by_name_url(worker_bridge_url, orch_name) -> str:
    """The workers' URL with the orchestrator's inventory name as host (the certificate covers it)."""
    parts = urllib.parse.urlsplit(worker_bridge_url)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{orch_name}:{parts.port}", path=""))


@pytest.fixture(scope="session")
def bridge_url(orch) -> str:
    text = orch.file(ADMIN_CONFIG).content_string
    return re.search(r'bridge_url\s*=\s*"([^"]+)"', text).group(1)


def call_tool(orch, bridge_url: str, token_file: str, side: str, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a bridge tool from the orchestrator host with the token of `token_file`."""
    command = " ".join(
        shlex.quote(part)
        for part in [VENV_PYTHON, "-c", CALL_SCRIPT, bridge_url, ORCH_CA, token_file, side, tool, json.dumps(arguments)]
    )
    result = orch.run(command)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def admin_call(orch, bridge_url: str, tool: str, **arguments: Any) -> dict[str, Any]:
    return call_tool(orch, bridge_url, "/var/lib/s2-bridge/admin.token", "admin", tool, **arguments)


def coordinator_call(orch, bridge_url: str, worker_id: str, tool: str, **arguments: Any) -> dict[str, Any]:
    path = f"{ORCH_CREDENTIALS}/s2-worker-{worker_id}-credentials.json"
    return call_tool(orch, bridge_url, path, "coordinator", tool, **arguments)


def worker_check_messages(get_lab_host, name: str, worker_id: str) -> list[dict[str, Any]]:
    host = get_lab_host(name)
    creds = f"{AGENT_HOME}/.s2/s2-worker-{worker_id}-credentials.json"
    result = host.run(f"runuser -u agent -- {S2_BRIDGE} check-messages --credentials {creds} --json")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)["messages"]


def fleet(orch, bridge_url: str) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in admin_call(orch, bridge_url, "fleet_status")["workers"]}


def wait_for(predicate, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def watchdog_setting(orch, key: str) -> float:
    text = orch.file(WATCHDOG_CONFIG).content_string
    return float(re.search(rf"^{key}\s*=\s*([0-9.]+)", text, re.MULTILINE).group(1))


# --- the bridge ----------------------------------------------------------------------------------


def test_bridge_is_active_and_serves_tls_that_verifies_against_the_fleet_ca(
    orch, get_lab_host, workers, worker_bridge_url, by_name_url
):
    assert orch.service("s2-bridge").is_running
    assert orch.service("s2-bridge").is_enabled
    worker = get_lab_host(workers[0])
    # the workers' URL (the orchestrator's ansible_host) and its inventory name: both in the certificate
    for base in (worker_bridge_url.rsplit("/", 1)[0], by_name_url):
        probe = (
            f'{VENV_PYTHON} -c "import ssl, urllib.request; '
            f"ctx = ssl.create_default_context(cafile='{WORKER_CA}'); "
            f"print(urllib.request.urlopen('{base}/healthz', context=ctx).status)\""
        )
        assert worker.check_output(probe) == "200", base
    # The system trust store does not know the fleet CA: the handshake must fail.
    untrusted = worker.run(
        f"{VENV_PYTHON} -c \"import urllib.request; urllib.request.urlopen('{by_name_url}/healthz')\""
    )
    assert untrusted.rc != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


NO_TOKEN_SCRIPT = r"""
import ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
request = urllib.request.Request(sys.argv[2], data=b"{}", headers={"Content-Type": "application/json"})
try:
    print(urllib.request.urlopen(request, context=ctx).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_bridge_refuses_a_call_with_no_token(get_lab_host, workers, worker_bridge_url):
    worker = get_lab_host(workers[0])
    probe = " ".join(shlex.quote(p) for p in [VENV_PYTHON, "-c", NO_TOKEN_SCRIPT, WORKER_CA, worker_bridge_url])
    assert worker.check_output(probe) == "401"


# --- workers -------------------------------------------------------------------------------------


def test_every_keepalive_runs_and_every_worker_is_healthy(orch, bridge_url, get_lab_host, workers, worker_ids):
    for name in workers:
        host = get_lab_host(name)
        if host.file("/run/systemd/system").is_directory:
            assert host.service("s2-keepalive").is_running, name
    expected = set(worker_ids.values())

    def all_healthy():
        status = fleet(orch, bridge_url)
        return set(status) == expected and all(w["health"] == "healthy" for w in status.values())

    assert wait_for(all_healthy, timeout=60), fleet(orch, bridge_url)
    table = orch.run(f"{S2_BRIDGE} status --config {ADMIN_CONFIG}")
    assert table.rc == 0, table.stderr
    assert table.stdout.count("healthy") == len(expected)


def test_worker_credentials_are_private_and_hold_no_coordinator_token(get_lab_host, workers, worker_ids):
    for name in workers:
        host = get_lab_host(name)
        creds = host.file(f"{AGENT_HOME}/.s2/s2-worker-{worker_ids[name]}-credentials.json")
        assert creds.exists, name
        assert creds.mode == 0o600, name
        assert creds.user == "agent", name
        assert host.file(f"{AGENT_HOME}/.s2").mode == 0o700
        data = json.loads(creds.content_string)
        assert data["coordinator_token"] == "", name
        assert data["worker_token"].startswith("s2w_")
        assert data["worker_id"] == worker_ids[name]
        assert data["bridge_url"].startswith("https://")


def test_agent_mcp_config_runs_the_proxy_and_lists_the_bridge_tools(get_lab_host, inventory, workers):
    for name in workers:
        host = get_lab_host(name)
        kind = inventory["hostvars"][name]["s2_agent_kind"]
        if kind == "codex":
            config = host.file(f"{AGENT_HOME}/.codex/config.toml").content_string
            assert "[mcp_servers.s2-bridge]" in config
            command = re.search(r'command\s*=\s*"([^"]+)"', config.split("[mcp_servers.s2-bridge]")[1]).group(1)
            args = json.loads(
                re.search(r"args\s*=\s*(\[[^\]]*\])", config.split("[mcp_servers.s2-bridge]")[1]).group(1)
            )
        else:
            config = json.loads(host.file(f"{AGENT_HOME}/.claude.json").content_string)
            entry = config["mcpServers"]["s2-bridge"]
            command, args = entry["command"], entry["args"]
        assert not TOKEN_RE.search(json.dumps(args)), "a token in the agent's MCP config"
        assert "mcp-proxy" in args
        run = " ".join(shlex.quote(p) for p in [VENV_PYTHON, "-c", LIST_TOOLS_SCRIPT, command, *args])
        listed = host.run(f"runuser -u agent -- {run}")
        assert listed.rc == 0, (name, listed.stderr)
        tools = set(json.loads(listed.stdout))
        assert {"send_to_partner", "check_messages", "wait_for_messages", "heartbeat"} <= tools, name
        assert "create_conversation" not in tools


# --- messages across machines --------------------------------------------------------------------


def test_message_from_orchestrator_reaches_worker_3_and_only_worker_3(orch, bridge_url, get_lab_host, worker_ids):
    three = next(n for n in worker_ids if n.startswith("worker-3"))
    four = next(n for n in worker_ids if n.startswith("worker-4"))
    text = f"molecule check {time.time()}"
    sent = coordinator_call(orch, bridge_url, worker_ids[three], "send_to_partner", message=text)
    assert sent["message_id"] > 0
    assert text in [m["message"] for m in worker_check_messages(get_lab_host, three, worker_ids[three])]
    assert text not in [m["message"] for m in worker_check_messages(get_lab_host, four, worker_ids[four])]
    # worker-4's own token cannot reach worker-3's tasks: its token names its own conversation only.
    creds = f"{AGENT_HOME}/.s2/s2-worker-{worker_ids[four]}-credentials.json"
    command = " ".join(
        shlex.quote(p)
        for p in [
            VENV_PYTHON,
            "-c",
            WORKER_CALL_SCRIPT,
            creds,
            "list_tasks",
            json.dumps({"worker_id": worker_ids[three]}),
        ]
    )
    listed = get_lab_host(four).run(f"runuser -u agent -- {command}")
    assert listed.rc == 0, listed.stderr
    assert json.loads(listed.stdout)["error"]["code"] == "forbidden"


# --- the watchdog --------------------------------------------------------------------------------


def test_watchdog_marks_a_stopped_worker_silent_and_moves_its_task(orch, bridge_url, get_lab_host, worker_ids):
    five = next(n for n in worker_ids if n.startswith("worker-5"))
    five_id = worker_ids[five]
    task = coordinator_call(orch, bridge_url, five_id, "assign_task", title="deploy the docs site")
    assert task["worker_id"] == five_id
    interval = watchdog_setting(orch, "interval_s")
    threshold = watchdog_setting(orch, "threshold_s")
    host = get_lab_host(five)
    host.run_expect([0], "systemctl stop s2-keepalive")
    try:
        stopped = time.monotonic()
        silent = wait_for(lambda: fleet(orch, bridge_url)[five_id]["health"] == "silent", timeout=threshold + 30)
        assert silent, fleet(orch, bridge_url)[five_id]

        def moved():
            current = [
                t for t in admin_call(orch, bridge_url, "list_tasks")["tasks"] if t["task_id"] == task["task_id"]
            ]
            return current[0] if current and current[0]["worker_id"] != five_id else None

        moved_task = wait_for(moved, timeout=interval * 2 + 30)
        elapsed = time.monotonic() - stopped
        assert moved_task, "the watchdog did not reassign the silent worker's task"
        # Within interval + threshold of the stop, with slack for a loaded machine.
        assert elapsed <= interval + threshold + 45, elapsed
        assert moved_task["reassigned_from"] == five_id
        assignee = next(n for n, i in worker_ids.items() if i == moved_task["worker_id"])
        assert fleet(orch, bridge_url)[moved_task["worker_id"]]["health"] == "healthy"
        told = worker_check_messages(get_lab_host, assignee, moved_task["worker_id"])
        assert any(f"Task #{task['task_id']} reassigned to you" in m["message"] for m in told)
        journal = orch.run("journalctl -u s2-watchdog --no-pager -o cat").stdout
        assert journal.count(f"worker {five_id}") >= 1 or five_id in journal
    finally:
        host.run_expect([0], "systemctl start s2-keepalive")
    assert wait_for(lambda: fleet(orch, bridge_url)[five_id]["health"] == "healthy", timeout=60)


def test_bridge_restart_loses_no_message_and_no_task(orch, bridge_url, worker_ids):
    def counts():
        with_tasks = admin_call(orch, bridge_url, "list_tasks")["tasks"]
        inboxes = {}
        for worker_id in worker_ids.values():
            inbox = coordinator_call(orch, bridge_url, worker_id, "check_messages", limit=200)
            inboxes[worker_id] = [m["id"] for m in inbox["messages"]]
        return sorted((t["task_id"], t["worker_id"], t["state"]) for t in with_tasks), inboxes

    three_id = next(i for n, i in worker_ids.items() if n.startswith("worker-3"))
    call_tool(
        orch,
        bridge_url,
        f"{ORCH_CREDENTIALS}/s2-worker-{three_id}-credentials.json",
        "worker",
        "send_to_partner",
        message="before the restart",
    )
    before = counts()
    orch.run_expect([0], "systemctl restart s2-bridge")
    assert wait_for(lambda: orch.run(f"{S2_BRIDGE} status --config {ADMIN_CONFIG}").rc == 0, timeout=60)
    assert counts() == before


# --- secrets -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fleet_tokens(orch, worker_ids) -> set[str]:
    found = set(TOKEN_RE.findall(orch.file("/var/lib/s2-bridge/admin.token").content_string))
    for worker_id in worker_ids.values():
        text = orch.file(f"{ORCH_CREDENTIALS}/s2-worker-{worker_id}-credentials.json").content_string
        found.update(TOKEN_RE.findall(text))
    found.update(TOKEN_RE.findall(orch.file(f"{AGENT_HOME}/.s2/s2-lead-credentials.json").content_string))
    # the admin's, the lead's, and each worker's pair
    assert len(found) == 2 + 2 * len(worker_ids), f"{len(found)} distinct tokens on the orchestrator"
    return found


def test_no_token_in_any_journal_or_command_line(get_lab_host, inventory, fleet_tokens):
    for name in inventory["groups"]["all"]:
        host = get_lab_host(name)
        texts = [host.run("ps -eo args --no-headers").stdout]
        if host.file("/run/systemd/system").is_directory:
            texts.append(host.run("journalctl --no-pager -o cat").stdout)
        for path in host.run("ls /opt/s2-bridge/log /home/agent/.s2/*.log 2>/dev/null").stdout.split():
            texts.append(host.file(path).content_string)
        for text in texts:
            leaked = [t[:8] for t in fleet_tokens if t in text]
            assert not leaked, f"{name}: tokens starting {leaked} in a journal or command line"


def test_no_token_in_the_converge_log(fleet_tokens):
    log_file = os.environ.get("S2_CONVERGE_LOG")
    if not log_file:
        pytest.skip("S2_CONVERGE_LOG is not set (scripts/test.sh sets it to the converge output)")
    text = Path(log_file).read_text(errors="replace")
    assert "TASK [" in text, "the converge log looks empty"
    leaked = [t[:8] for t in fleet_tokens if t in text]
    assert not leaked, f"tokens starting {leaked} in the converge log"
