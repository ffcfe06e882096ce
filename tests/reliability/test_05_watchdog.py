"""Steps 9 and 12: a silent worker's task moves to a healthy one; a killed keepalive comes back,
and one kept down is alerted once, not every round."""

from __future__ import annotations

import time
from datetime import datetime

import lab
import pytest

OBSERVE_AFTER_ALERT_S = 75.0  # longer than a minute: the old watchdog re-alerted every minute


def alerts(watermark: int, kind: str, worker_id: str) -> list[dict]:
    return [
        r
        for r in lab.audit_since(watermark)
        if r["action"] == f"watchdog.{kind}" and r["target"] == f"worker:{worker_id}"
    ]


def heartbeat_epoch(worker_id: str) -> float:
    at = lab.fleet()[worker_id]["last_heartbeat_at"]
    return datetime.fromisoformat(at).timestamp() if at else 0.0


@pytest.mark.step(9, "idle recovery: a stopped worker's task moves")
def test_9_the_watchdog_moves_a_silent_workers_task_to_a_healthy_worker(report, by_id, run_tag, ledger):
    three = by_id["3"]
    interval, threshold = lab.watchdog_setting("interval_s"), lab.watchdog_setting("threshold_s")
    assert lab.wait_for(lambda: all(w["health"] == "healthy" for i, w in lab.fleet().items() if i in by_id), 150, 3)
    plan = lab.orchestrator_plan([lab.coordinator_call(three, "assign_task", title=f"{run_tag} idle-recovery task")])
    task = lab.run_calls(lab.ORCHESTRATOR, plan)[0]["result"]
    ledger.task_ids.add(task["task_id"])
    watermark = lab.last_audit_id()
    lab.check_in(three.host, "systemctl", "stop", "s2-keepalive")
    stopped = time.monotonic()
    try:
        flagged = lab.wait_for(lambda: alerts(watermark, "silent", "3"), timeout=interval + threshold + 60)
        flagged_after = time.monotonic() - stopped
        assert flagged, "the watchdog never flagged worker 3"

        def moved() -> dict | None:
            listed = [t for t in lab.admin("list_tasks")["tasks"] if t["task_id"] == task["task_id"]]
            return listed[0] if listed and listed[0]["worker_id"] != "3" else None

        moved_task = lab.wait_for(moved, timeout=interval + 30)
        moved_after = time.monotonic() - stopped
        assert moved_task, "the silent worker's task was not reassigned"
        assert moved_task["reassigned_from"] == "3" and moved_task["state"] == "assigned"
        assignee = by_id[moved_task["worker_id"]]
        assert lab.fleet()[assignee.worker_id]["health"] == "healthy"
        told = lab.dump(assignee, match=f"Task #{task['task_id']} reassigned to you")
        assert len(told) == 1, f"{assignee.host} was told {len(told)} times"
    finally:
        lab.check_in(three.host, "systemctl", "start", "s2-keepalive")
    assert lab.wait_for(lambda: lab.fleet()["3"]["health"] == "healthy", timeout=90, interval=2)
    limit = interval + threshold
    report.figure(
        "9",
        f"worker 3 flagged silent {flagged_after:.0f} s after its keepalive stopped; task moved after "
        f"{moved_after:.0f} s to worker {assignee.worker_id}, which was told once",
        target=f"flagged within interval+threshold = {limit:g} s",
        met=flagged_after <= limit,
    )


@pytest.mark.step(12, "watchdog: kill -9 keepalive, then kept down")
def test_12_a_killed_keepalive_restarts_and_a_downed_one_is_alerted_once(report, by_id):
    five = by_id["5"]
    interval = lab.watchdog_setting("interval_s")
    before = lab.unit_show(five.host, "s2-keepalive")
    killed_at = time.time()
    lab.check_in(five.host, "systemctl", "kill", "--signal=SIGKILL", "s2-keepalive")

    def restarted() -> dict | None:
        now = lab.unit_show(five.host, "s2-keepalive")
        fresh = now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])
        return now if fresh and int(now["NRestarts"]) == int(before["NRestarts"]) + 1 else None

    assert lab.wait_for(restarted, timeout=60), lab.unit_show(five.host, "s2-keepalive")
    restarted_after = time.time() - killed_at
    assert lab.wait_for(lambda: heartbeat_epoch("5") > killed_at, timeout=60, interval=2)
    beating_after = time.time() - killed_at

    watermark = lab.last_audit_id()
    journal_from = float(lab.check_in(lab.ORCHESTRATOR, "date", "+%s").strip())
    lab.check_in(five.host, "systemctl", "stop", "s2-keepalive")
    try:
        first = lab.wait_for(lambda: alerts(watermark, "silent", "5"), timeout=120)
        assert first, "no silent alert for worker 5"
        time.sleep(OBSERVE_AFTER_ALERT_S)
        silent_alerts = alerts(watermark, "silent", "5")
        journal = [
            line
            for line in lab.journal_since(lab.ORCHESTRATOR, "s2-watchdog", journal_from)
            if "worker 5 " in line and " silent:" in line
        ]
    finally:
        lab.check_in(five.host, "systemctl", "start", "s2-keepalive")
    assert len(silent_alerts) == 1, f"{len(silent_alerts)} silent alerts in {OBSERVE_AFTER_ALERT_S:g} s"
    assert len(journal) == 1, journal
    assert lab.wait_for(lambda: alerts(watermark, "recovered", "5"), timeout=120), "no recovered alert"
    assert len(alerts(watermark, "recovered", "5")) == 1
    rounds = int(OBSERVE_AFTER_ALERT_S // interval)
    report.figure(
        "12",
        f"kill -9: systemd restarted the keepalive after {restarted_after:.0f} s (RestartSec 10), heartbeating "
        f"after {beating_after:.0f} s; kept down: {len(silent_alerts)} silent alert over "
        f"{OBSERVE_AFTER_ALERT_S:g} s ({rounds} more watchdog rounds), 1 recovered alert on start",
    )
