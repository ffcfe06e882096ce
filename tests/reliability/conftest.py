"""Fixtures and the figures table of the fleet test protocol (docs/RELIABILITY.md).

The suite drives a running lab: the hosts of inventories/lab as podman containers (made by
scripts/lab-up.sh or by the molecule default scenario, which use the same names). Each test
carries `@pytest.mark.step(N)` and records what it measured with the `report` fixture; at the
end the table is printed and written to $S2_RELIABILITY_REPORT (artifacts/reliability.md).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lab
import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = os.environ.get("S2_LAB_INVENTORY", str(ROOT / "inventories" / "lab"))
REPORT_FILE = Path(os.environ.get("S2_RELIABILITY_REPORT", str(ROOT / "artifacts" / "reliability.md")))


@dataclass
class Row:
    step: str
    title: str
    figures: list[str] = field(default_factory=list)
    target: str = ""
    verdicts: list[bool] = field(default_factory=list)
    outcome: str = "not run"


class Report:
    """What each step measured. A figure is a fact; `met` says whether a target was reached
    (targets are reported, not asserted: these machines are shared and noisy)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.started = time.time()

    def row(self, step: str, title: str = "") -> Row:
        if step not in self.rows:
            self.rows[step] = Row(step, title)
        elif title:
            self.rows[step].title = title
        return self.rows[step]

    def figure(self, step: str, text: str, *, target: str = "", met: bool | None = None) -> None:
        row = self.row(step)
        row.figures.append(text)
        if target:
            row.target = f"{row.target}; {target}" if row.target else target
        if met is not None:
            row.verdicts.append(met)

    def markdown(self) -> str:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
        lines = [
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(self.started))} on "
            f"{platform.node() or 'this machine'}, {os.cpu_count()} cores, load average at the end {load}; "
            f"{time.time() - self.started:.0f} s for the suite.",
            "",
            "| step | what | measured | target | result |",
            "|---|---|---|---|---|",
        ]
        for row in sorted(self.rows.values(), key=lambda r: [int(p) for p in re.findall(r"\d+", r.step)] or [99]):
            verdict = row.outcome
            if row.verdicts:
                verdict += ", target " + ("met" if all(row.verdicts) else "missed")
            figures = "<br>".join(f.replace("|", "/") for f in row.figures) or "-"
            lines.append(f"| {row.step} | {row.title} | {figures} | {row.target or '-'} | {verdict} |")
        lines += [
            "",
            f"Harness: {lab.HARNESS['retried_connects']} probe calls were tried again because their connection "
            "never opened (no request sent; the lab's DNS), outside the sends step 7 counts.",
        ]
        return "\n".join(lines) + "\n"


_REPORT = Report()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    marker = item.get_closest_marker("step")
    if marker is not None and (report.when == "call" or report.outcome != "passed"):
        row = _REPORT.row(str(marker.args[0]), marker.args[1])
        if report.outcome == "failed" or row.outcome in ("not run", "passed"):
            row.outcome = "skipped" if report.skipped else report.outcome
        if report.failed:
            message = str(report.longrepr).strip().splitlines()
            row.figures.append("FAILED: " + (message[-1][:300] if message else "?"))
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _REPORT.rows:
        return
    text = "# Fleet test protocol: measured figures\n\n" + _REPORT.markdown()
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(text, encoding="utf-8")
    terminalreporter.write_sep("=", "fleet test protocol: measured figures")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"(written to {REPORT_FILE})")


@pytest.fixture(scope="session")
def report() -> Report:
    return _REPORT


def _inventory_workers() -> list[lab.Worker]:
    command = [str(Path(sys.executable).with_name("ansible-inventory")), "-i", INVENTORY, "--list"]
    raw = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    # the orchestrator is the one host of group 'orchestrator' (as the roles find it)
    lab.ORCHESTRATOR = raw.get("orchestrator", {}).get("hosts", [lab.ORCHESTRATOR])[0]
    hostvars = raw["_meta"]["hostvars"]
    names = raw.get("workers", {}).get("hosts", [])
    workers = []
    for name in names:
        worker_id = str(hostvars.get(name, {}).get("s2_worker_id") or re.match(r"worker-(\d+)-", name).group(1))
        workers.append(lab.Worker(name, worker_id))
    return sorted(workers, key=lambda w: int(w.worker_id))


@pytest.fixture(scope="session")
def workers() -> list[lab.Worker]:
    found = _inventory_workers()
    running = set(lab.podman("ps", "--format", "{{.Names}}").split())
    missing = [w.host for w in found if w.host not in running] + (
        [] if lab.ORCHESTRATOR in running else [lab.ORCHESTRATOR]
    )
    if missing:
        pytest.fail(f"lab containers not running: {', '.join(missing)} (bash scripts/lab-up.sh first)", pytrace=False)
    lab.install_probe([lab.ORCHESTRATOR, *(w.host for w in found)])
    healthy = lab.wait_for(
        lambda: all(w["health"] == "healthy" for w in lab.fleet().values() if w["worker_id"] in _ids(found)),
        timeout=120,
        interval=3,
    )
    if not healthy:
        pytest.fail(f"the fleet is not healthy before the protocol starts: {lab.fleet()}", pytrace=False)
    return found


def _ids(workers: list[lab.Worker]) -> set[str]:
    return {w.worker_id for w in workers}


@pytest.fixture(scope="session")
def by_id(workers: list[lab.Worker]) -> dict[str, lab.Worker]:
    return {w.worker_id: w for w in workers}


@pytest.fixture(scope="session")
def audit_start(workers: list[lab.Worker]) -> int:
    """The audit table's last id when the protocol started (step 8 reads what came after)."""
    return lab.last_audit_id()


@pytest.fixture(scope="session")
def run_tag() -> str:
    """Marks this run's messages, so a re-run on the same lab counts only its own."""
    return f"rel{int(time.time())}"


@dataclass(frozen=True)
class ExtraConversations:
    """Two conversations the protocol makes for itself: one that expires (60 s, the shortest
    lifetime the bridge allows) and one to revoke. Their results (tokens) stay in 0600 files
    on the orchestrator."""

    expiring_file: str
    expires_at: float
    revoked_file: str
    conversation_ids: tuple[str, ...]


@pytest.fixture(scope="session")
def extra_conversations(workers, run_tag):
    files = {"exp": f"/root/s2-reliability/{run_tag}-exp.json", "rev": f"/root/s2-reliability/{run_tag}-rev.json"}
    calls = [
        {
            **lab.admin_call(
                "create_conversation",
                my_role="s2-orchestrator",
                partner_role=f"{run_tag}-{name}",
                worker_id=f"{run_tag}-{name}",
                **({"ttl_s": 60} if name == "exp" else {}),
            ),
            "save_to": path,
        }
        for name, path in files.items()
    ]
    lab.check_in(lab.ORCHESTRATOR, "install", "-d", "-m", "0700", "/root/s2-reliability")
    made = lab.run_calls(lab.ORCHESTRATOR, lab.orchestrator_plan(calls))
    assert all(r["ok"] for r in made), made
    ids = tuple(r["result"]["conversation_id"] for r in made)
    yield ExtraConversations(files["exp"], made[0]["t1"] + 60, files["rev"], ids)
    # Leave the fleet as it was: no extra conversation lingers in fleet_status.
    live = {c["conversation_id"] for c in lab.admin("list_conversations")["conversations"] if not c["revoked"]}
    for conversation_id in set(ids) & live:
        lab.admin("revoke_conversation", conversation_id=conversation_id)
    lab.check_in(lab.ORCHESTRATOR, "rm", "-rf", "/root/s2-reliability")


@dataclass
class Ledger:
    """What steps 1-7 did, for step 8 to find in the audit table."""

    message_ids: set[int] = field(default_factory=set)
    task_ids: set[int] = field(default_factory=set)
    status_updates: int = 0
    refused_calls: int = 0
    refusal_reasons: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    silent_workers: set[str] = field(default_factory=set)


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    return Ledger()
