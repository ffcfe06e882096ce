"""Step 7: kill -9 the bridge in the middle of a burst; cut a worker off the network."""

from __future__ import annotations

import os
import re
import time

import lab
import pytest

NETWORK = os.environ.get("S2_LAB_NETWORK", "s2-lab")
SENDERS = 4
SENDS_PER_SENDER = 200
SEND_GAP_S = 0.1  # 10 sends a second per sender: under the bridge's per-caller rate limit
KILL_AFTER_S = 5.0


@pytest.mark.step(7, "faults")
def test_7a_kill_9_mid_burst_loses_and_duplicates_nothing(report, workers, run_tag, ledger):
    senders = workers[:SENDERS]
    tag = f"{run_tag} kill9"
    before = lab.unit_show(lab.ORCHESTRATOR, "s2-bridge")
    start_at = time.time() + 3.0
    processes = []
    for worker in senders:
        calls = [
            {
                **lab.worker_call(worker, "send_to_partner", message=f"{tag} w{worker.worker_id} #{n}"),
                "at": start_at + n * SEND_GAP_S,
                "connect_retries": 0,  # every failed send counts: the bridge is down on purpose
            }
            for n in range(SENDS_PER_SENDER)
        ]
        processes.append((worker, lab.start_calls(worker.host, {"calls": calls}, user=lab.AGENT)))
    time.sleep(max(0.0, start_at + KILL_AFTER_S - time.time()))
    lab.check_in(lab.ORCHESTRATOR, "systemctl", "kill", "--signal=SIGKILL", "s2-bridge")
    sent = {worker.worker_id: lab.finish_calls(process) for worker, process in processes}
    after = lab.unit_show(lab.ORCHESTRATOR, "s2-bridge")
    assert after["ActiveState"] == "active"
    assert after["MainPID"] != before["MainPID"]
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)

    succeeded = failed = reply_lost = duplicated = lost = 0
    records_of_all = [r for records in sent.values() for r in records]
    for worker in senders:
        records = sent[worker.worker_id]
        ok = {r["index"] for r in records if r["ok"]}
        ledger.message_ids |= {r["result"]["message_id"] for r in records if r["ok"]}
        received = [
            int(m["message"].rsplit("#", 1)[1]) for m in lab.dump(worker, "coordinator", f"{tag} w{worker.worker_id} #")
        ]
        succeeded += len(ok)
        failed += len(records) - len(ok)
        duplicated += len(received) - len(set(received))
        lost += len(ok - set(received))
        reply_lost += len(set(received) - ok)
    assert failed > 0, "no send failed: the kill did not land in the burst"
    assert (lost, duplicated) == (0, 0), (lost, duplicated)
    # The outage as the senders saw it: from the first failed send to the next success.
    first_failure = min(r["t0"] for r in records_of_all if not r["ok"])
    down_s = min(r["t1"] for r in records_of_all if r["ok"] and r["t0"] > first_failure) - first_failure
    report.figure(
        "7",
        f"kill -9 mid-burst ({SENDERS} senders x {SENDS_PER_SENDER}): {succeeded} sends succeeded, {failed} failed "
        f"while down ({reply_lost} of those stored, reply lost); lost 0, duplicated 0; "
        f"systemd restarted the bridge (RestartSec 5): sends failed for {down_s:.1f} s",
    )


@pytest.mark.step(7, "faults")
def test_7b_a_worker_cut_off_the_network_backs_off_and_recovers_by_itself(report, by_id, ledger):
    six = by_id["6"]
    interval, threshold = lab.watchdog_setting("interval_s"), lab.watchdog_setting("threshold_s")
    assert lab.wait_for(lambda: lab.fleet()["6"]["health"] == "healthy", timeout=120, interval=3)
    before = lab.unit_show(six.host, "s2-keepalive")
    since = float(lab.check_in(six.host, "date", "+%s").strip())
    watermark = lab.last_audit_id()
    # its static address on the network: Ansible reaches it there over SSH (inventories/lab), so
    # it must come back with the same one
    address = lab.podman(
        "container", "inspect", six.host, "--format", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'
    ).strip()
    lab.podman("network", "disconnect", NETWORK, six.host)
    cut_at = time.monotonic()
    try:
        silent = lab.wait_for(lambda: lab.fleet()["6"]["health"] == "silent", timeout=threshold + interval + 60)
        silent_after = time.monotonic() - cut_at
        assert silent, lab.fleet()["6"]
        alerted = lab.wait_for(
            lambda: [
                r for r in lab.audit_since(watermark) if r["action"] == "watchdog.silent" and r["target"] == "worker:6"
            ],
            timeout=interval + 30,
        )
        assert alerted, "the watchdog recorded no silent alert for worker 6"
        ledger.silent_workers.add("6")
        during = lab.unit_show(six.host, "s2-keepalive")
        assert during["MainPID"] == before["MainPID"], "the keepalive died while the network was gone"
    finally:
        lab.podman("network", "connect", *(["--ip", address] if address else []), NETWORK, six.host)
    reconnect_at = time.monotonic()
    healthy = lab.wait_for(lambda: lab.fleet()["6"]["health"] == "healthy", timeout=150, interval=2)
    healthy_after = time.monotonic() - reconnect_at
    assert healthy, lab.fleet()["6"]
    after = lab.unit_show(six.host, "s2-keepalive")
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"]), (before, after)
    log = lab.journal_since(six.host, "s2-keepalive", since)
    down_lines = [line for line in log if "unreachable" in line]
    up_lines = [line for line in log if "reachable again" in line]
    assert len(down_lines) == 1 and len(up_lines) == 1, log
    # "bridge reachable again after N failed attempts (S s)": the retries the backoff allowed.
    retries = re.search(r"after (\d+) failed attempts \((\d+) s\)", up_lines[0])
    assert retries, up_lines[0]
    recovered = lab.wait_for(
        lambda: [
            r for r in lab.audit_since(watermark) if r["action"] == "watchdog.recovered" and r["target"] == "worker:6"
        ],
        timeout=interval + 30,
    )
    assert len(recovered) == 1, recovered
    report.figure(
        "7",
        f"network cut of worker 6: silent after {silent_after:.0f} s (watchdog alert audited), keepalive kept "
        f"running; healthy {healthy_after:.0f} s after reconnecting, 0 restarts, "
        f"1 recovered alert; log: 1 'unreachable' + 1 'reachable again' line "
        f"({retries.group(1)} failed heartbeats in {retries.group(2)} s of backoff)",
        target=f"silent within interval+threshold = {interval + threshold:g} s",
        met=silent_after <= interval + threshold,
    )
