"""The lab as the reliability suite sees it: podman containers named like the inventory hosts,
whose insides the suite reaches with `podman exec` (the same way molecule's testinfra backend
does; Ansible itself reaches them over SSH), and the probe (probe.py) that runs inside them with
the runtime's venv python."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

VENV_PYTHON = "/opt/s2-bridge/venv/bin/python"
S2_BRIDGE = "/opt/s2-bridge/venv/bin/s2-bridge"
PROBE_DIR = "/opt/s2-reliability"
PROBE = f"{PROBE_DIR}/probe.py"
# The orchestrator's inventory (and container) name; conftest.py sets it from the inventory's
# group 'orchestrator' before any test runs.
ORCHESTRATOR = "s2-orchestrator"
ORCH_CA = "/etc/s2-bridge/tls/ca.crt"
ORCH_CREDENTIALS = "/var/lib/s2-fleet/credentials"
ADMIN_TOKEN = "/var/lib/s2-bridge/admin.token"
ADMIN_CONFIG = "/etc/s2-bridge/admin.toml"
WATCHDOG_CONFIG = "/etc/s2-bridge/admin.d/watchdog.toml"  # the [watchdog] drop-in of admin.toml
BRIDGE_DB = "/var/lib/s2-bridge/bridge.db"
AGENT = "agent"
AGENT_HOME = "/home/agent"
# the orchestrator agent's lead credentials (docs/CONTRACTS.md)
LEAD_CREDENTIALS = f"{AGENT_HOME}/.s2/s2-lead-credentials.json"

T = TypeVar("T")

# Calls the probes tried again because their connection never opened (see probe.NEVER_SENT).
HARNESS = {"retried_connects": 0}


def count_retries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    HARNESS["retried_connects"] += max((int(r.get("retried_connects", 0)) for r in records), default=0)
    return records


class LabError(AssertionError):
    """A command in a container failed: the message carries its output."""


def podman(*argv: str, stdin: str | None = None, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["podman", *argv], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"podman {' '.join(argv[:4])}... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def exec_in(
    host: str, *argv: str, user: str | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = ["podman", "exec", *(["-i"] if stdin is not None else [])]
    if user:
        command += ["--user", user]
    return subprocess.run(
        [*command, host, *argv], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_in(host: str, *argv: str, user: str | None = None, stdin: str | None = None, timeout: float = 120) -> str:
    done = exec_in(host, *argv, user=user, stdin=stdin, timeout=timeout)
    if done.returncode != 0:
        raise LabError(f"{host}: {argv[0]} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
    """Poll until predicate() is truthy or the time is up; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile (0 < fraction <= 1)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Worker:
    host: str
    worker_id: str

    @property
    def credentials(self) -> str:
        """The worker's own file on its host (agent user, 0600)."""
        return f"{AGENT_HOME}/.s2/s2-worker-{self.worker_id}-credentials.json"

    @property
    def orchestrator_copy(self) -> str:
        """The orchestrator's copy, which holds the coordinator token."""
        return f"{ORCH_CREDENTIALS}/s2-worker-{self.worker_id}-credentials.json"


def install_probe(hosts: Iterable[str]) -> None:
    source = str(Path(__file__).with_name("probe.py"))
    for host in hosts:
        check_in(host, "mkdir", "-p", PROBE_DIR)
        podman("cp", source, f"{host}:{PROBE}")
        check_in(host, "chmod", "0755", PROBE_DIR)
        check_in(host, "chmod", "0644", PROBE)


def with_connect_retries(plan: dict[str, Any]) -> dict[str, Any]:
    """Every call may retry a connection that never opened, unless it says otherwise."""
    calls = [{"connect_retries": 3, **call} for call in plan["calls"]]
    return {**plan, "calls": calls}


def run_calls(host: str, plan: dict[str, Any], user: str | None = None, timeout: float = 300) -> list[dict[str, Any]]:
    """Run a probe plan in one container; one record per call, in the plan's order."""
    text = json.dumps(with_connect_retries(plan))
    out = check_in(host, VENV_PYTHON, PROBE, "calls", user=user, stdin=text, timeout=timeout)
    return count_retries(sorted(json_lines(out), key=lambda r: r["index"]))


def start_calls(host: str, plan: dict[str, Any], user: str | None = None) -> subprocess.Popen[str]:
    """Start a probe plan in the background (several hosts at once); finish_calls() collects it."""
    command = ["podman", "exec", "-i", *(["--user", user] if user else []), host, VENV_PYTHON, PROBE, "calls"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(with_connect_retries(plan)))
    process.stdin.close()
    return process


def finish_calls(process: subprocess.Popen[str], timeout: float = 300) -> list[dict[str, Any]]:
    assert process.stdout is not None and process.stderr is not None
    out = process.stdout.read()
    err = process.stderr.read()
    if process.wait(timeout=timeout) != 0:
        raise LabError(f"probe calls exited {process.returncode}: {err.strip()[-2000:]}")
    return count_retries(sorted(json_lines(out), key=lambda r: r["index"]))


def orchestrator_plan(calls: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A plan that runs on the orchestrator against the bridge's loopback URL."""
    return {"url": bridge_url(), "ca": ORCH_CA, "calls": calls, **options}


_BRIDGE_URL: list[str] = []


def bridge_url() -> str:
    """The bridge URL the orchestrator's own tools use (admin.toml)."""
    if not _BRIDGE_URL:
        text = check_in(ORCHESTRATOR, "cat", ADMIN_CONFIG)
        line = next(line for line in text.splitlines() if line.startswith("bridge_url"))
        _BRIDGE_URL.append(line.split("=", 1)[1].strip().strip('"'))
    return _BRIDGE_URL[0]


def admin(tool: str, **args: Any) -> dict[str, Any]:
    record = run_calls(ORCHESTRATOR, orchestrator_plan([admin_call(tool, **args)]))[0]
    if not record["ok"]:
        raise LabError(f"admin {tool}: {record}")
    return record["result"]


def admin_call(tool: str, **args: Any) -> dict[str, Any]:
    return {"token_file": ADMIN_TOKEN, "side": "admin", "tool": tool, "args": args}


def coordinator_call(worker: Worker, tool: str, **args: Any) -> dict[str, Any]:
    return {"token_file": worker.orchestrator_copy, "side": "coordinator", "tool": tool, "args": args}


def worker_call(worker: Worker, tool: str, **args: Any) -> dict[str, Any]:
    return {"token_file": worker.credentials, "side": "worker", "tool": tool, "args": args}


def as_worker(worker: Worker, calls: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    return run_calls(worker.host, {"calls": calls, **options}, user=AGENT)


def fleet() -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in admin("fleet_status")["workers"]}


def dump(worker: Worker, side: str = "worker", match: str | None = None) -> list[dict[str, Any]]:
    """Every message `side` of this worker's conversation can read (paged, nothing acked)."""
    if side == "worker":
        argv = [VENV_PYTHON, PROBE, "dump", "--credentials", worker.credentials]
        out = check_in(worker.host, *argv, *(["--match", match] if match else []), user=AGENT)
    else:
        argv = [VENV_PYTHON, PROBE, "dump", "--credentials", worker.orchestrator_copy, "--side", "coordinator"]
        argv += ["--url", bridge_url(), "--ca", ORCH_CA, *(["--match", match] if match else [])]
        out = check_in(ORCHESTRATOR, *argv)
    return count_retries(json_lines(out))[0]["messages"]


class Listener:
    """`probe.py listen` on a worker, started before the messages it waits for are sent."""

    def __init__(self, worker: Worker, match: str, count: int, deadline_s: float) -> None:
        self.worker = worker
        argv = [VENV_PYTHON, PROBE, "listen", "--credentials", worker.credentials]
        argv += ["--match", match, "--count", str(count), "--deadline-s", str(deadline_s)]
        self.process = subprocess.Popen(
            ["podman", "exec", "--user", AGENT, worker.host, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.deadline_s = deadline_s
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        if '"ready"' not in first:
            self.process.kill()
            raise LabError(f"{worker.host}: listener did not start: {first} {self.process.stderr.read()[-2000:]}")

    def messages(self) -> list[dict[str, Any]]:
        out, err = self.process.communicate(timeout=self.deadline_s + 60)
        if self.process.returncode != 0:
            raise LabError(f"{self.worker.host}: listener exited {self.process.returncode}: {err[-2000:]}")
        records = count_retries(json_lines(out))
        return [r for r in records if r.get("event") == "message"]


def unit_show(host: str, unit: str) -> dict[str, str]:
    out = check_in(host, "systemctl", "show", unit, "-p", "MainPID", "-p", "NRestarts", "-p", "ActiveState")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


AUDIT_QUERY = r"""
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
db.row_factory = sqlite3.Row
rows = db.execute("SELECT * FROM audit_log WHERE id > ? ORDER BY id", (int(sys.argv[2]),))
print(json.dumps([dict(r) for r in rows]))
"""


def audit_since(audit_id: int) -> list[dict[str, Any]]:
    """The bridge's audit rows after `audit_id`, read straight from its SQLite file."""
    out = check_in(ORCHESTRATOR, VENV_PYTHON, "-c", AUDIT_QUERY, BRIDGE_DB, str(audit_id))
    rows = json.loads(out)
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row["detail"].startswith("{") else row["detail"]
    return rows


def last_audit_id() -> int:
    query = (
        "import sqlite3, sys; db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
        "print(db.execute('SELECT MAX(id) FROM audit_log').fetchone()[0] or 0)"
    )
    return int(check_in(ORCHESTRATOR, VENV_PYTHON, "-c", query, BRIDGE_DB).strip())


def write_file(host: str, path: str, text: str, user: str = "root") -> None:
    """Write a 0600 file (in a 0700 directory) as `user` in a container, through stdin: its
    content never is a command-line argument."""
    script = 'umask 077; mkdir -p "$(dirname "$1")"; cat > "$1"'
    check_in(host, "sh", "-c", script, "write-file", path, user=user, stdin=text)


def read_file(host: str, path: str) -> str:
    return check_in(host, "cat", path)


def watchdog_setting(key: str) -> float:
    text = read_file(ORCHESTRATOR, WATCHDOG_CONFIG)
    line = next(line for line in text.splitlines() if line.strip().startswith(key))
    return float(line.split("=", 1)[1].split("#")[0])


def journal_since(host: str, unit: str, since: float) -> list[str]:
    out = check_in(host, "journalctl", "-u", unit, "--since", f"@{since:.0f}", "--no-pager", "-o", "cat")
    return [line for line in out.splitlines() if line.strip()]
