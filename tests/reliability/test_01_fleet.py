"""Steps 1-5: install, conversations, task distribution, status updates, concurrent messages
(and a backup taken during them, restored and served by a second bridge)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import lab
import pytest

CONVERSATION_TASK = "s2.fleet.credentials : Create or rotate the worker's conversation on the bridge"

# Step 5's backup check, on the orchestrator: the backup, then a second bridge's config and data
# (restored from it) in a scratch directory; the second bridge runs as a transient systemd unit
# with the orchestrator's own certificate on a free loopback port.
BRIDGE_CONFIG = "/etc/s2-bridge/bridge.toml"
TLS_DIR = "/etc/s2-bridge/tls"
SCRATCH = "/root/s2-backup-check"
SECOND_UNIT = "s2-backup-check"
# The backup starts once half the burst is stored (watched in the database, read-only), so its
# snapshot falls inside the burst whatever the lab's start-up delays: some sends are
# acknowledged before it, some after.
BACKUP_AFTER_STORED = 40
BACKUP_MID_BURST = """
import sqlite3, subprocess, sys, time
database, tag, wanted, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
deadline = time.time() + 120
while time.time() < deadline:
    with sqlite3.connect("file:" + database + "?mode=ro", uri=True, timeout=5) as db:
        stored = db.execute("SELECT COUNT(*) FROM messages WHERE body LIKE ?", (tag + " %",)).fetchone()[0]
    if stored >= wanted:
        break
    time.sleep(0.02)
sys.exit(subprocess.run(argv).returncode)
"""
FREE_PORT = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
HEALTH_WAIT = """
import ssl, sys, time, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
for _ in range(150):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2, context=context) as answer:
            sys.exit(0 if answer.status == 200 else 1)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
"""
INTEGRITY = (
    "import sqlite3, sys; db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True); "
    "print(db.execute('PRAGMA integrity_check').fetchone()[0])"
)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MOLECULE_PREFIX = re.compile(r"^\s*\u2502 ?", re.MULTILINE)  # molecule frames each line with "│ "


def converge_log() -> str:
    """The converge output as ansible-playbook prints it: molecule's colours and frame removed
    (its wrapping of long lines stays, so the patterns below allow any whitespace)."""
    path = os.environ.get("S2_CONVERGE_LOG")
    if not path:
        pytest.skip("S2_CONVERGE_LOG is not set: run through scripts/reliability.sh, which converges the lab")
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    return MOLECULE_PREFIX.sub("", ANSI_ESCAPE.sub("", raw))


def task_section(log: str, title: str) -> str:
    """The output lines of the first run of one task in an ansible-playbook log."""
    header = re.search(r"TASK \[" + r"\s+".join(re.escape(word) for word in title.split()) + r"\]", log)
    assert header, f"no task {title!r} in the converge log"
    end = log.find("\nTASK [", header.end())
    return log[header.end() : end if end != -1 else len(log)]


@pytest.mark.step(1, "install on nine hosts: the converge")
def test_1_converge_provisioned_every_host(report, workers, audit_start, extra_conversations):
    log = converge_log()
    recap = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", log, re.MULTILINE)
    first_recap = {}
    for host, ok, changed, unreachable, failed in recap:
        first_recap.setdefault(host, (int(ok), int(changed), int(unreachable), int(failed)))
    expected = {lab.ORCHESTRATOR, *(w.host for w in workers)}
    assert expected <= set(first_recap), f"hosts missing from the PLAY RECAP: {expected - set(first_recap)}"
    bad = {h: v for h, v in first_recap.items() if h in expected and (v[2] or v[3])}
    assert not bad, f"unreachable or failed hosts in the converge: {bad}"
    changed = sum(first_recap[h][1] for h in expected)
    seconds = os.environ.get("S2_CONVERGE_SECONDS")
    took = f"{float(seconds):.0f} s, " if seconds else ""
    report.figure("1", f"{took}{len(expected)} hosts, failed=0 unreachable=0, {changed} tasks changed")


@pytest.mark.step(2, "eight conversations created by the module")
def test_2_one_conversation_per_worker_made_by_the_module(report, workers):
    section = task_section(converge_log(), CONVERSATION_TASK)
    changed_by_module = set(re.findall(r"^changed: \[([^\]]+?)(?: ->[^\]]*)?\]", section, re.MULTILINE))
    live = [c for c in lab.admin("list_conversations")["conversations"] if not c["revoked"]]
    per_worker = Counter(c["worker_id"] for c in live)
    for worker in workers:
        assert per_worker[worker.worker_id] == 1, f"worker {worker.worker_id}: {per_worker[worker.worker_id]} live"
        role = next(c["worker_role"] for c in live if c["worker_id"] == worker.worker_id)
        assert role == worker.host, f"worker {worker.worker_id} has role {role!r}"
        assert worker.host in changed_by_module, f"{worker.host}: the module did not create its conversation"
    created = [r for r in lab.audit_since(0) if r["action"] == "conversation.create" and r["actor"] == "admin"]
    conversation_ids = {c["conversation_id"] for c in live if c["worker_id"] in {w.worker_id for w in workers}}
    assert conversation_ids <= {r["target"] for r in created}
    report.figure(
        "2",
        f"{len(conversation_ids)} live conversations, one per worker, each made by bridge_conversation "
        f"(changed on {len(changed_by_module & {w.host for w in workers})} workers; audited)",
    )


@pytest.mark.step(3, "eight tasks distributed")
def test_3_every_worker_sees_its_task(report, workers, run_tag, ledger):
    listeners = {w.worker_id: lab.Listener(w, f"{run_tag} task for", count=1, deadline_s=60) for w in workers}
    time.sleep(0.5)  # every listener is parked in wait_for_messages
    start_at = time.time() + 1.0
    calls = [
        {**lab.coordinator_call(w, "assign_task", title=f"{run_tag} task for {w.host}"), "at": start_at}
        for w in workers
    ]
    assigned = lab.run_calls(lab.ORCHESTRATOR, lab.orchestrator_plan(calls, concurrent=True))
    assert all(r["ok"] for r in assigned), assigned
    ledger.task_ids |= {r["result"]["task_id"] for r in assigned}
    seen = {worker_id: listener.messages() for worker_id, listener in listeners.items()}
    for worker in workers:
        got = seen[worker.worker_id]
        assert len(got) == 1, f"{worker.host} saw {len(got)} task messages"
        assert got[0]["action_type"] == "task_assignment"
        assert worker.host in got[0]["message"], f"{worker.host} got another worker's task"
    first_assign = min(r["t0"] for r in assigned)
    last_seen = max(m[0]["received_at"] for m in seen.values())
    spread = last_seen - first_assign
    # Each worker finishes its task, so later steps start with no open task to move around.
    for worker, record in zip(workers, assigned, strict=True):
        done = lab.as_worker(
            worker, [lab.worker_call(worker, "update_task", task_id=record["result"]["task_id"], state="done")]
        )
        assert done[0]["ok"] and done[0]["result"]["state"] == "done", done
    report.figure(
        "3",
        f"{len(workers)} tasks: first assign to last worker seeing its task {spread * 1000:.0f} ms; "
        "each worker then marked its own done",
        target="< 1 s",
        met=spread < 1.0,
    )


@pytest.mark.step(4, "40 status updates, visible in fleet status")
def test_4_status_updates_are_visible_in_fleet_status(report, workers, ledger):
    sequence = ["working", "waiting", "blocked", "complete", "working"]
    before = lab.last_audit_id()
    for worker in workers:
        # The last one differs per worker, so fleet_status must show each worker's own.
        statuses = [*sequence[:-1], "idle" if int(worker.worker_id) % 2 else "working"]
        records = lab.as_worker(worker, [lab.worker_call(worker, "update_my_status", status=s) for s in statuses])
        assert all(r["ok"] for r in records), records
        ledger.status_updates += len(records)
    status = lab.fleet()
    for worker in workers:
        want = "idle" if int(worker.worker_id) % 2 else "working"
        assert status[worker.worker_id]["status"] == want, status[worker.worker_id]
    updates = [r for r in lab.audit_since(before) if r["action"] == "status.update" and r["actor"].startswith("worker")]
    assert len(updates) == 5 * len(workers), f"{len(updates)} status.update audit rows"
    report.figure("4", f"{5 * len(workers)} updates sent, {len(updates)} audited, fleet_status shows each last one")


@pytest.fixture
def backup_scratch():
    """Step 5's scratch directory on the orchestrator (root 0700); afterwards the second bridge is
    stopped and the directory (the backup, the restored copy) removed, whatever the outcome."""
    lab.check_in(lab.ORCHESTRATOR, "sh", "-c", 'rm -rf "$1" && install -d -m 0700 "$1"', "scratch", SCRATCH)
    yield SCRATCH
    lab.exec_in(lab.ORCHESTRATOR, "systemctl", "stop", f"{SECOND_UNIT}.service")
    lab.exec_in(lab.ORCHESTRATOR, "rm", "-rf", SCRATCH)


@pytest.mark.step(5, "80 concurrent messages: exactly once, in order; a backup mid-burst restored")
def test_5_concurrent_messages_are_delivered_exactly_once_in_order(report, workers, run_tag, ledger, backup_scratch):
    per_worker = 10
    tag = f"{run_tag} burst"
    start_at = time.time() + 3.0  # every worker's sender is up by then
    # `s2-bridge backup` inside the orchestrator once half the burst is stored
    argv = [lab.S2_BRIDGE, "backup", "--config", BRIDGE_CONFIG, "--output", f"{backup_scratch}/bridge-backup.db"]
    watch = [lab.VENV_PYTHON, "-c", BACKUP_MID_BURST, lab.BRIDGE_DB, tag, str(BACKUP_AFTER_STORED)]
    backup_process = subprocess.Popen(
        ["podman", "exec", lab.ORCHESTRATOR, *watch, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes = []
    for worker in workers:
        calls = [
            {**lab.worker_call(worker, "send_to_partner", message=f"{tag} w{worker.worker_id} #{n}"), "at": start_at}
            for n in range(per_worker)
        ]
        plan = {"calls": calls}
        processes.append((worker, lab.start_calls(worker.host, plan, user=lab.AGENT)))
    sent = {worker.worker_id: lab.finish_calls(process) for worker, process in processes}
    out, err = backup_process.communicate(timeout=300)
    backup = subprocess.CompletedProcess(backup_process.args, backup_process.returncode, out, err)
    lost, duplicated, reordered = 0, 0, 0
    for worker in workers:
        assert all(r["ok"] for r in sent[worker.worker_id]), sent[worker.worker_id]
        ledger.message_ids |= {r["result"]["message_id"] for r in sent[worker.worker_id]}
        received = lab.dump(worker, side="coordinator", match=f"{tag} w{worker.worker_id} #")
        numbers = [int(m["message"].rsplit("#", 1)[1]) for m in received]
        lost += len(set(range(per_worker)) - set(numbers))
        duplicated += len(numbers) - len(set(numbers))
        reordered += numbers != sorted(numbers)
        ids = [m["id"] for m in received]
        assert ids == sorted(ids)
    first = min(r["t0"] for records in sent.values() for r in records)
    last = max(r["t1"] for records in sent.values() for r in records)
    total = per_worker * len(workers)
    assert (lost, duplicated, reordered) == (0, 0, 0), (lost, duplicated, reordered)
    report.figure(
        "5",
        f"{total} sent by {len(workers)} workers at once in {last - first:.2f} s; "
        f"lost {lost}, duplicated {duplicated}, out of order {reordered}",
    )
    texts = {
        r["result"]["message_id"]: f"{tag} w{worker.worker_id} #{r['index']}"
        for worker in workers
        for r in sent[worker.worker_id]
    }
    report.figure("5", check_backup_mid_burst(backup, sent, texts, tag))


def check_backup_mid_burst(backup, sent: dict[str, list[dict[str, Any]]], texts: dict[int, str], tag: str) -> str:
    """The backup taken during the burst holds every send acknowledged before its snapshot began:
    restored into a scratch data directory, a second bridge serves each of them exactly once (the
    lead's inbox sees every worker's message), and the restored file passes integrity_check."""
    assert backup.returncode == 0, f"backup exited {backup.returncode}: {backup.stderr.strip()[-2000:]}"
    made = lab.json_lines(backup.stdout)[-1]
    assert made["integrity_check"] == "ok", made
    snapshot_at = datetime.fromisoformat(made["snapshot_at"]).timestamp()
    records = [r for records in sent.values() for r in records]
    before = {r["result"]["message_id"] for r in records if r["t1"] < snapshot_at}
    started_after = sum(r["t0"] > snapshot_at for r in records)
    # mid-burst: some sends acknowledged before the snapshot, some after
    assert 0 < len(before) < len(records), (len(before), len(records))
    restored, served, integrity = serve_restored_copy(made["path"], tag)
    assert (restored["messages"], restored["kept"]) == (made["messages"], []), restored
    counts = Counter(m["id"] for m in served)
    missing = sorted(i for i in before if counts[i] != 1)
    assert not missing, f"acknowledged before the backup's snapshot but not served once by the restored copy: {missing}"
    assert max(counts.values(), default=1) == 1, f"served twice: {[i for i, n in counts.items() if n > 1]}"
    assert set(counts) <= set(texts), f"served but never sent: {sorted(set(counts) - set(texts))}"
    assert all(m["message"] == texts[m["id"]] for m in served)
    assert integrity == "ok", integrity
    return (
        f"backup inside the orchestrator mid-burst: {made['seconds']:.2f} s, {made['bytes'] / 1e6:.1f} MB, "
        f"{made['messages']} messages; {len(before)} of {len(records)} burst sends acknowledged before its "
        f"snapshot ({started_after} started after it), {len(counts)} in it; restored into a second bridge: all "
        f"{len(before)} served by it exactly once, integrity_check {integrity}"
    )


def serve_restored_copy(backup_file: str, tag: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """`s2-bridge restore` of the backup into the scratch directory, a second bridge on it, and the
    burst's messages as the lead reads them there; then that bridge is stopped and the restored
    file checked."""
    orchestrator = lab.ORCHESTRATOR
    port = lab.check_in(orchestrator, lab.VENV_PYTHON, "-c", FREE_PORT).strip()
    config = f"{SCRATCH}/bridge.toml"
    lab.write_file(
        orchestrator,
        config,
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[tls]\ncert_file = "{TLS_DIR}/server.crt"\nkey_file = "{TLS_DIR}/server.key"\n'
        f'[storage]\npath = "{SCRATCH}/data/bridge.db"\n'
        f'[auth]\nadmin_token_file = "{SCRATCH}/data/admin.token"\n',
    )
    out = lab.check_in(orchestrator, lab.S2_BRIDGE, "restore", "--config", config, "--from", backup_file)
    restored = lab.json_lines(out)[-1]
    lab.exec_in(orchestrator, "systemctl", "stop", f"{SECOND_UNIT}.service")  # a leftover of an aborted run
    lab.check_in(
        orchestrator,
        "systemd-run",
        "--unit",
        SECOND_UNIT,
        "--collect",
        "--quiet",
        lab.S2_BRIDGE,
        "serve",
        "--config",
        config,
    )
    url = f"https://127.0.0.1:{port}"
    up = lab.exec_in(orchestrator, lab.VENV_PYTHON, "-c", HEALTH_WAIT, f"{url}/healthz", lab.ORCH_CA, timeout=90)
    if up.returncode != 0:
        journal = lab.exec_in(orchestrator, "journalctl", "-u", SECOND_UNIT, "--no-pager", "-o", "cat").stdout
        raise AssertionError(f"the second bridge did not answer on {url}/healthz: {journal.strip()[-2000:]}")
    argv = [lab.VENV_PYTHON, lab.PROBE, "dump", "--credentials", lab.LEAD_CREDENTIALS, "--side", "lead"]
    argv += ["--url", f"{url}/mcp", "--ca", lab.ORCH_CA, "--match", f"{tag} w"]
    served = lab.count_retries(lab.json_lines(lab.check_in(orchestrator, *argv)))[0]["messages"]
    lab.check_in(orchestrator, "systemctl", "stop", f"{SECOND_UNIT}.service")
    integrity = lab.check_in(orchestrator, lab.VENV_PYTHON, "-c", INTEGRITY, f"{SCRATCH}/data/bridge.db").strip()
    return restored, served, integrity
