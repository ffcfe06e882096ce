"""Step 6: refused tokens, redaction, admin-only tools, and a server the fleet CA did not sign."""

from __future__ import annotations

import json
import secrets
import string
import subprocess
import time

import lab
import pytest
from impostor import make_impostor

IMPOSTOR_PORT = 10443  # a port the bridge does not use (the molecule fleet runs it on 9443, the lab on 8443)
ADMIN_TOOLS = {
    "create_conversation": {"my_role": "s2-orchestrator", "partner_role": "worker-9-intruder", "worker_id": "9"},
    "list_conversations": {},
    "rotate_conversation": {"conversation_id": "conv_0000000000000000"},
    "revoke_conversation": {"conversation_id": "conv_0000000000000000"},
    "reassign_task": {"task_id": 1, "to_worker_id": "1", "reason": "intrusion"},
    "record_alert": {"worker_id": "1", "kind": "silent", "detail": "forged"},
}


def random_text(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def refused(record: dict) -> bool:
    return not record["ok"] and record["kind"] == "auth_refused"


def token_calls(token_file: str, side: str) -> list[dict]:
    """The same token on both doors: the lean heartbeat route and an MCP tool."""
    return [
        {"token_file": token_file, "side": side, "tool": "heartbeat_route"},
        {"token_file": token_file, "side": side, "tool": "check_messages"},
    ]


@pytest.mark.step(6, "security")
def test_6a_invalid_expired_and_revoked_tokens_are_refused(report, workers, extra_conversations, ledger):
    worker = workers[0]
    # A well-formed token the bridge never issued, in a copy of a real credentials file.
    forged = json.loads(lab.read_file(worker.host, worker.credentials))
    forged["worker_token"] = "s2w_" + random_text(string.ascii_letters + string.digits, 43)
    forged_file = f"/tmp/s2-reliability/{worker.worker_id}-forged.json"
    lab.write_file(worker.host, forged_file, json.dumps(forged), user=lab.AGENT)
    invalid = lab.as_worker(worker, token_calls(forged_file, "worker"))

    # The revoked conversation works until it is revoked, then neither side's token does.
    rev = extra_conversations.revoked_file
    before = lab.run_calls(lab.ORCHESTRATOR, lab.orchestrator_plan(token_calls(rev, "worker")))
    assert all(r["ok"] for r in before), before
    conversation_id = json.loads(lab.read_file(lab.ORCHESTRATOR, rev))["conversation_id"]
    lab.admin("revoke_conversation", conversation_id=conversation_id)
    ledger.revoked.add(conversation_id)
    revoked = lab.run_calls(
        lab.ORCHESTRATOR, lab.orchestrator_plan(token_calls(rev, "worker") + token_calls(rev, "coordinator"))
    )

    # The expiring conversation: 60 s after its creation (step 1) both its tokens are refused.
    time.sleep(max(0.0, extra_conversations.expires_at + 1 - time.time()))
    exp = extra_conversations.expiring_file
    expired = lab.run_calls(
        lab.ORCHESTRATOR, lab.orchestrator_plan(token_calls(exp, "worker") + token_calls(exp, "coordinator"))
    )
    for name, records in (("invalid", invalid), ("revoked", revoked), ("expired", expired)):
        assert all(refused(r) for r in records), (name, records)
    lab.check_in(worker.host, "rm", "-f", forged_file)
    total = len(invalid) + len(revoked) + len(expired)
    ledger.refused_calls += total
    ledger.refusal_reasons |= {"unknown token", "token revoked", "token expired"}
    total = len(invalid) + len(revoked) + len(expired)
    report.figure("6", f"invalid/revoked/expired tokens: {total} of {total} calls refused (heartbeat route and MCP)")


@pytest.mark.step(6, "security")
def test_6b_a_worker_token_reaches_only_its_own_conversation(report, by_id):
    four, three = by_id["4"], by_id["3"]
    records = lab.as_worker(four, [lab.worker_call(four, "list_tasks", worker_id=three.worker_id)])
    coordinator = lab.run_calls(
        lab.ORCHESTRATOR,
        lab.orchestrator_plan([lab.coordinator_call(four, "assign_task", title="not yours", worker_id="3")]),
    )
    for record in records + coordinator:
        assert not record["ok"] and record["error"]["code"] == "forbidden", record
    report.figure("6", "cross-conversation: worker-4's token on worker-3's tasks and coordinator-4 on worker 3 refused")


@pytest.mark.step(6, "security")
def test_6c_secrets_in_a_message_are_redacted_before_storage(report, by_id, run_tag, ledger):
    two = by_id["2"]
    secret_values = [
        "AKIA" + random_text(string.ascii_uppercase + string.digits, 16),
        "ghp_" + random_text(string.ascii_letters + string.digits, 36),
        random_text(string.ascii_letters + string.digits, 24),
    ]
    text = (
        f"{run_tag} secrets: aws {secret_values[0]}, github {secret_values[1]}, "
        f"and the db password={secret_values[2]} please rotate"
    )
    sent = lab.as_worker(two, [lab.worker_call(two, "send_to_partner", message=text)])[0]
    assert sent["ok"], sent
    ledger.message_ids.add(sent["result"]["message_id"])
    stored = [
        m
        for m in lab.dump(two, side="coordinator", match=f"{run_tag} secrets")
        if m["id"] == sent["result"]["message_id"]
    ]
    assert len(stored) == 1
    body = stored[0]["message"]
    for value in secret_values:
        assert value not in body, "a secret reached the reader"
    assert body.count("[REDACTED:") == 3, body
    # Nor is it anywhere on the bridge's disk (the database, its WAL).
    for value in secret_values:
        found = lab.exec_in(lab.ORCHESTRATOR, "grep", "-rqF", value, "/var/lib/s2-bridge")
        assert found.returncode == 1, "a secret is stored on the bridge host"
    report.figure(
        "6", f"3 of 3 secrets redacted (redactions={sent['result']['redactions']}), none on the bridge's disk"
    )


@pytest.mark.step(6, "security")
def test_6d_admin_tools_are_refused_to_worker_and_coordinator_tokens(report, by_id):
    one = by_id["1"]
    as_worker = lab.as_worker(one, [lab.worker_call(one, tool, **args) for tool, args in ADMIN_TOOLS.items()])
    as_coordinator = lab.run_calls(
        lab.ORCHESTRATOR,
        lab.orchestrator_plan([lab.coordinator_call(one, tool, **args) for tool, args in ADMIN_TOOLS.items()]),
    )
    for record in as_worker + as_coordinator:
        assert not record["ok"] and record["error"]["code"] == "forbidden", record
    report.figure(
        "6",
        f"admin tools: {len(as_worker)} of {len(ADMIN_TOOLS)} refused to a worker token, "
        f"{len(as_coordinator)} of {len(ADMIN_TOOLS)} to a coordinator token",
    )


@pytest.mark.step(6, "security")
def test_6e_workers_refuse_a_server_certificate_the_fleet_ca_did_not_sign(report, by_id):
    one = by_id["1"]
    pki = make_impostor(lab.ORCHESTRATOR)
    base = "/root/s2-reliability/impostor"
    for name, pem in (("ca.crt", pki.ca_pem), ("server.crt", pki.cert_pem), ("server.key", pki.key_pem)):
        lab.write_file(lab.ORCHESTRATOR, f"{base}/{name}", pem)
    stop_file = f"{base}/stop"
    argv = ["--cert", f"{base}/server.crt", "--key", f"{base}/server.key", "--port", str(IMPOSTOR_PORT)]
    argv += ["--stop-file", stop_file]
    server = subprocess.Popen(
        ["podman", "exec", lab.ORCHESTRATOR, lab.VENV_PYTHON, lab.PROBE, "tls-server", *argv, "--seconds", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert '"ready"' in server.stdout.readline(), server.stderr.read() if server.stderr else ""
    try:
        # The worker's own credentials, pointed at the impostor (same host name, other CA).
        creds = json.loads(lab.read_file(one.host, one.credentials))
        creds["bridge_url"] = f"https://{lab.ORCHESTRATOR}:{IMPOSTOR_PORT}/mcp"
        impostor_file = f"/tmp/s2-reliability/{one.worker_id}-impostor.json"
        lab.write_file(one.host, impostor_file, json.dumps(creds), user=lab.AGENT)
        check = lab.exec_in(one.host, lab.S2_BRIDGE, "check-messages", "--credentials", impostor_file, user=lab.AGENT)
        beat = lab.as_worker(one, [{"token_file": impostor_file, "side": "worker", "tool": "heartbeat_route"}])[0]
        # Control: a client that trusts the impostor's CA does complete the handshake.
        control = lab.exec_in(
            one.host,
            lab.VENV_PYTHON,
            "-c",
            "import socket, ssl, sys; ctx = ssl.create_default_context(cadata=sys.stdin.read()); "
            f"ctx.wrap_socket(socket.create_connection(('{lab.ORCHESTRATOR}', {IMPOSTOR_PORT})), "
            f"server_hostname='{lab.ORCHESTRATOR}').close(); print('handshake')",
            stdin=pki.ca_pem,
        )
        lab.check_in(one.host, "rm", "-f", impostor_file)
    finally:
        lab.check_in(lab.ORCHESTRATOR, "touch", stop_file)
        out, _ = server.communicate(timeout=60)
    done = next(r for r in lab.json_lines(out) if r.get("event") == "done")
    assert check.returncode == 69, (check.returncode, check.stderr)
    assert "CERTIFICATE_VERIFY_FAILED" in check.stderr, check.stderr
    assert len(check.stderr.strip().splitlines()) == 1, check.stderr
    assert beat["kind"] == "unavailable" and "TLS" in beat["error"]["message"], beat
    assert control.stdout.strip() == "handshake", control.stderr
    # The worker's two attempts never finished a handshake; the control one did.
    assert done["completed"] == 1, done
    report.figure(
        "6",
        f"impostor certificate (right name, other CA): check-messages exit 69 CERTIFICATE_VERIFY_FAILED, "
        f"keepalive client refused; {done['attempted']} handshakes tried, only the control "
        "(trusting the impostor CA) completed",
    )
