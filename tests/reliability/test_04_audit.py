"""Step 8: every action of steps 1-7 is in the bridge's audit table, failed authentications too."""

from __future__ import annotations

import json
from collections import Counter

import lab
import pytest

STORED_MESSAGES = r"""
import json, sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
rows = db.execute("SELECT id, action_type FROM messages WHERE created_at >= ?", (float(sys.argv[2]),))
print(json.dumps(rows.fetchall()))
"""


@pytest.mark.step(8, "audit")
def test_8_every_action_is_audited(report, ledger, audit_start):
    rows = lab.audit_since(audit_start)
    actions = Counter(r["action"] for r in rows)

    sends = {r["detail"]["message_id"] for r in rows if r["action"] == "message.send"}
    assert ledger.message_ids, "steps 1-7 recorded no message"
    missing = ledger.message_ids - sends
    assert not missing, f"{len(missing)} sent messages have no message.send audit row"

    # Also the messages whose sender never heard back (the kill -9): every stored message has
    # its row, so the audit and the data never disagree.
    started = min(r["at"] for r in rows)
    stored = json.loads(
        lab.check_in(lab.ORCHESTRATOR, lab.VENV_PYTHON, "-c", STORED_MESSAGES, lab.BRIDGE_DB, str(started))
    )
    plain = {message_id for message_id, action_type in stored if action_type != "task_assignment"}
    unaudited = plain - sends
    assert not unaudited, f"{len(unaudited)} stored messages without an audit row: {sorted(unaudited)[:10]}"

    assigned = {r["target"] for r in rows if r["action"] == "task.assign"}
    assert {f"task:{t}" for t in ledger.task_ids} <= assigned

    by_workers = [r for r in rows if r["action"] == "status.update" and r["actor"].startswith("worker")]
    assert len(by_workers) >= ledger.status_updates

    failures = [r for r in rows if r["action"] == "auth.failed"]
    reasons = Counter(r["detail"]["reason"] for r in failures)
    assert len(failures) >= ledger.refused_calls, (len(failures), ledger.refused_calls)
    assert ledger.refusal_reasons <= set(reasons), reasons

    revoked = {r["target"] for r in rows if r["action"] == "conversation.revoke"}
    assert ledger.revoked <= revoked
    silent = {r["target"] for r in rows if r["action"] == "watchdog.silent"}
    assert {f"worker:{w}" for w in ledger.silent_workers} <= silent

    for row in rows:
        assert row["actor"] and row["action"] and row["at"] > 0, row
    summary = ", ".join(f"{name} {count}" for name, count in sorted(actions.items()))
    report.figure(
        "8",
        f"{len(rows)} audit rows for steps 1-7: {summary}; every sent and every stored message audited "
        f"({len(plain)} stored), failed authentications by reason: "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())),
    )
