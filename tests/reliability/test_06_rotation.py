"""Step 10: rotate every worker's credentials, and the lead's, on the running fleet."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import lab
import pytest
from conftest import INVENTORY, ROOT
from s2_bridge.contract.tokens import TOKEN_RE

OLD_DIR = "/root/s2-reliability/old"
STOP_FILE = "/root/s2-reliability/stop-rotation-sender"
SEND_EVERY_S = 2.0


def token_of(host: str, path: str, side: str) -> str:
    return json.loads(lab.read_file(host, path))[f"{side}_token"]


@pytest.mark.step(10, "credential rotation on a running fleet")
def test_10_rotation_keeps_every_worker_working_and_refuses_old_tokens(report, workers, run_tag, ledger):
    tag = f"{run_tag} rotation"
    old_worker_tokens = {w.worker_id: token_of(w.host, w.credentials, "worker") for w in workers}
    old_lead_token = token_of(lab.ORCHESTRATOR, lab.LEAD_CREDENTIALS, "lead")
    lab.check_in(
        lab.ORCHESTRATOR,
        "sh",
        "-c",
        f"install -d -m 0700 {OLD_DIR} && cp -p {lab.ORCH_CREDENTIALS}/*.json {OLD_DIR}/"
        f" && cp -p {lab.LEAD_CREDENTIALS} {OLD_DIR}/lead.json",
    )
    for worker in workers:  # the worker's old file, kept by the worker's own user
        lab.write_file(
            worker.host,
            f"/tmp/s2-reliability/{worker.worker_id}-old.json",
            lab.read_file(worker.host, worker.credentials),
            user=lab.AGENT,
        )

    # Unread before the rotation: one message each way per worker.
    pre = lab.run_calls(
        lab.ORCHESTRATOR,
        lab.orchestrator_plan(
            [lab.coordinator_call(w, "send_to_partner", message=f"{tag} pre to {w.worker_id}") for w in workers]
        ),
    )
    for worker in workers:
        sent = lab.as_worker(
            worker, [lab.worker_call(worker, "send_to_partner", message=f"{tag} pre from {worker.worker_id}")]
        )
        assert sent[0]["ok"], sent
    assert all(r["ok"] for r in pre), pre

    # During the rotation the coordinator keeps writing; a refused token is reread and retried.
    start_at = time.time() + 1
    during_calls = [
        {
            **lab.coordinator_call(w, "send_to_partner", message=f"{tag} during to {w.worker_id} #{n}"),
            "at": start_at + n * SEND_EVERY_S,
            "attempts": 6,
            "reload": True,
            "retry_delay_s": 1.0,
            "stop_file": STOP_FILE,
        }
        for n in range(300)
        for w in workers
    ]
    sender = lab.start_calls(lab.ORCHESTRATOR, lab.orchestrator_plan(during_calls))
    log_file = ROOT / "artifacts" / "rotate-credentials.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    began = time.time()
    with log_file.open("w", encoding="utf-8") as log:
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ansible-playbook")),
                "playbooks/rotate-credentials.yml",
                "-i",
                INVENTORY,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    ended = time.time()
    took = ended - began
    time.sleep(SEND_EVERY_S * 2)  # a few sends with the new tokens
    lab.check_in(lab.ORCHESTRATOR, "touch", STOP_FILE)
    during = lab.finish_calls(sender)
    assert done.returncode == 0, f"rotate-credentials.yml failed: see {log_file}"
    output = log_file.read_text(encoding="utf-8")
    assert not TOKEN_RE.search(output), "a token in the rotation playbook's output"

    # Every worker has a new token, its keepalive heartbeats with it, the old ones are refused.
    for worker in workers:
        assert token_of(worker.host, worker.credentials, "worker") != old_worker_tokens[worker.worker_id]
    assert token_of(lab.ORCHESTRATOR, lab.LEAD_CREDENTIALS, "lead") != old_lead_token, "the lead was not rotated"

    def beating_since_the_rotation() -> bool:
        return all(
            w["health"] == "healthy" and w["heartbeat_age_s"] is not None and w["heartbeat_age_s"] < time.time() - ended
            for i, w in lab.fleet().items()
            if i in old_worker_tokens
        )

    assert lab.wait_for(beating_since_the_rotation, timeout=90, interval=2), lab.fleet()
    refused = 0
    for worker in workers:
        old_worker = f"/tmp/s2-reliability/{worker.worker_id}-old.json"
        record = lab.as_worker(worker, [{"token_file": old_worker, "side": "worker", "tool": "heartbeat_route"}])[0]
        refused += record.get("kind") == "auth_refused"
        lab.check_in(worker.host, "rm", "-f", old_worker)
    old_copies = [f"{OLD_DIR}/s2-worker-{w.worker_id}-credentials.json" for w in workers]
    coordinator_old = lab.run_calls(
        lab.ORCHESTRATOR,
        lab.orchestrator_plan(
            [{"token_file": p, "side": "coordinator", "tool": "heartbeat_route"} for p in old_copies]
            + [{"token_file": f"{OLD_DIR}/lead.json", "side": "lead", "tool": "heartbeat_route"}]
        ),
    )
    refused += sum(r.get("kind") == "auth_refused" for r in coordinator_old)
    lab.check_in(lab.ORCHESTRATOR, "rm", "-rf", OLD_DIR, STOP_FILE)
    ledger.refused_calls += refused
    expected_refusals = 2 * len(workers) + 1  # each worker's pair and the lead's
    assert refused == expected_refusals, f"{refused} of {expected_refusals} old tokens refused"

    # No message is lost: what was sent before and during the rotation reads with the new tokens.
    delivered_ok = [r for r in during if r["ok"]]
    failed = [r for r in during if not r["ok"]]
    assert not failed, failed[:3]
    lost = 0
    for worker in workers:
        inbox = [m["message"] for m in lab.dump(worker, match=tag)]
        expected = {f"{tag} pre to {worker.worker_id}"} | {
            during_calls[r["index"]]["args"]["message"]
            for r in delivered_ok
            if during_calls[r["index"]]["token_file"] == worker.orchestrator_copy
        }
        lost += len(expected - set(inbox))
        assert len(inbox) == len(set(inbox)), f"{worker.host}: a message arrived twice"
        outbox = lab.dump(worker, side="coordinator", match=f"{tag} pre from {worker.worker_id}")
        lost += 1 - len(outbox)
    assert lost == 0, f"{lost} messages lost over the rotation"
    retried = sum(1 for r in delivered_ok if r["attempts"] > 1)
    report.figure(
        "10",
        f"rotate-credentials.yml on the running fleet: {took:.0f} s; {len(workers)} new worker tokens, every "
        f"keepalive heartbeating with its new one, and a new lead token; {refused} of {expected_refusals} old "
        "tokens (the lead's too) refused; "
        f"{len(pre) + len(workers)} messages from before and {len(delivered_ok)} sent during it all read, "
        f"lost 0 ({retried} sends retried after a refusal)",
    )
