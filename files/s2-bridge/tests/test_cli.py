"""The one-shot commands and the config/credentials checks of every command, run as real
subprocesses (`python -m s2_bridge.cli ...`) against a real bridge."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import Bridge, create_conversation, shaped_token
from fixtures_client import admin_call, as_coordinator, run_cli, write_worker_credentials
from s2_bridge.cli import main
from s2_bridge.contract import tokens
from s2_bridge.contract.credentials import load_credentials

pytestmark = pytest.mark.anyio


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The real CLI entry point in-process: config checks need no subprocess (much faster)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    path.chmod(mode)
    return path


def good_credentials() -> dict[str, Any]:
    return {
        "conversation_id": "conv_0123456789abcdef",
        "worker_id": "3",
        "worker_role": "tests",
        "coordinator_token": "",
        "worker_token": tokens.new_token("worker"),
        "created_at": "2026-11-24T01:00:00+00:00",
        "expires_at": "2036-12-24T01:00:00+00:00",
        "bridge_url": "http://127.0.0.1:9/mcp",
        "ca_file": "",
    }


# (case id, file contents, mode, field the line must name or None for file-level problems, text the line must hold)
CREDENTIAL_CASES: list[tuple[str, str, int, str | None, str]] = [
    ("readable by others", json.dumps(good_credentials()), 0o644, None, "chmod 600"),
    ("readable by group", json.dumps(good_credentials()), 0o640, None, "chmod 600"),
    ("not json", "{oops", 0o600, None, "not valid JSON"),
    ("missing worker_id", json.dumps({k: v for k, v in good_credentials().items() if k != "worker_id"}), 0o600,
     "worker_id", "is missing"),
    ("bad expires_at", json.dumps(good_credentials() | {"expires_at": "soon"}), 0o600, "expires_at", "ISO 8601"),
    ("bad url", json.dumps(good_credentials() | {"bridge_url": "bridge:8443"}), 0o600, "bridge_url", "http(s)"),
    ("https without ca", json.dumps(good_credentials() | {"bridge_url": "https://x:8443/mcp"}), 0o600, "ca_file",
     "missing"),
]  # fmt: skip
CREDENTIAL_COMMANDS = [["keepalive", "--interval", "1"], ["check-messages"], ["mcp-proxy"]]


@pytest.mark.parametrize(
    ("case", "content", "mode", "field", "text"), CREDENTIAL_CASES, ids=[c[0] for c in CREDENTIAL_CASES]
)
@pytest.mark.parametrize("command", CREDENTIAL_COMMANDS, ids=[c[0] for c in CREDENTIAL_COMMANDS])
def test_bad_credentials_file_exits_78_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    case: str,
    content: str,
    mode: int,
    field: str | None,
    text: str,
) -> None:
    path = private_file(tmp_path / "s2-worker-3-credentials.json", content, mode)
    code, out, err = run_main(capsys, command[0], "--credentials", str(path), *command[1:])
    assert code == 78, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    if field:
        assert f": {field}:" in lines[0]
    assert text in lines[0]
    assert "fix:" in lines[0]
    assert out == ""  # mcp-proxy above all: stdout is the MCP channel
    assert "s2w_" not in err


@pytest.mark.parametrize("command", [["keepalive"], ["check-messages"], ["mcp-proxy"]], ids=lambda c: c[0])
def test_installed_entry_point_exits_78_on_an_open_credentials_file(tmp_path: Path, command: list[str]) -> None:
    path = private_file(tmp_path / "c.json", json.dumps(good_credentials()), 0o644)
    done = run_cli(command[0], "--credentials", str(path))
    assert done.returncode == 78, done.stderr
    assert done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert f"chmod 600 {path}" in done.stderr
    assert done.stdout == ""


def admin_config_text(token_file: Path, extra: str = "") -> str:
    return f'bridge_url = "http://127.0.0.1:9/mcp"\nadmin_token_file = "{token_file}"\n{extra}'


ADMIN_CASES: list[tuple[str, str, str, str]] = [
    ("unknown key", 'bridge_url = "http://127.0.0.1:9/mcp"\nadmin_token_file = "T"\nbridge_ur = "x"\n', "bridge_ur",
     "unknown key"),
    ("missing bridge_url", 'admin_token_file = "T"\n', "bridge_url", "is missing"),
    ("https without ca", 'bridge_url = "https://x:8443/mcp"\nadmin_token_file = "T"\n', "ca_file", "missing"),
    ("negative interval",
     'bridge_url = "http://127.0.0.1:9/mcp"\nadmin_token_file = "T"\n[watchdog]\ninterval_s = -1\n',
     "watchdog.interval_s", "greater than 0"),
    ("bad toml", "bridge_url = \n", "", "not valid TOML"),
]  # fmt: skip
ADMIN_COMMANDS = [["watchdog"], ["status"], ["admin", "list-conversations"]]


@pytest.mark.parametrize(("case", "content", "field", "text"), ADMIN_CASES, ids=[c[0] for c in ADMIN_CASES])
@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=[" ".join(c) for c in ADMIN_COMMANDS])
def test_bad_admin_config_exits_78_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    case: str,
    content: str,
    field: str,
    text: str,
) -> None:
    token = private_file(tmp_path / "admin.token", tokens.new_token("admin"))
    config = tmp_path / "admin.toml"
    config.write_text(content.replace('"T"', f'"{token}"'))
    code, _, err = run_main(capsys, *command, "--config", str(config))
    assert code == 78, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0]
    if field:
        assert f": {field}:" in lines[0]
    assert text in lines[0]
    assert "fix:" in lines[0]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=[" ".join(c) for c in ADMIN_COMMANDS])
@pytest.mark.parametrize(
    ("case", "token_text", "mode", "text"),
    [
        ("token file readable by group", shaped_token("admin"), 0o640, "chmod 600"),
        ("not an admin token", shaped_token("worker"), 0o600, "admin token"),
    ],
)
def test_bad_admin_token_file_exits_78(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    case: str,
    token_text: str,
    mode: int,
    text: str,
) -> None:
    token = private_file(tmp_path / "admin.token", token_text, mode)
    config = tmp_path / "admin.toml"
    config.write_text(admin_config_text(token))
    code, _, err = run_main(capsys, *command, "--config", str(config))
    assert code == 78, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(token) in lines[0] and text in lines[0], err
    assert "A" * 43 not in err


async def test_check_messages_peeks_by_default_and_consume_acks_exactly_what_it_showed(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    created = await create_conversation(plain_bridge, "3")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    long_text = "line one\nline two " + "x" * 300
    await as_coordinator(
        created, plain_bridge, "send_to_partner", message="please run the tests", action_type="question"
    )
    await as_coordinator(created, plain_bridge, "send_to_partner", message=long_text)

    for _ in range(2):  # peeking twice shows the same messages: nothing was consumed
        done = run_cli("check-messages", "--credentials", str(creds))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 2
        assert re.match(r"#\d+ from s2-orchestrator \[question\] please run the tests$", lines[0]), lines[0]
        assert "line one line two" in lines[1]  # newlines folded: one line per message
        assert lines[1].endswith("x" * (200 - len("line one line two ")) + "...")

    done = run_cli("check-messages", "--credentials", str(creds), "--json")
    peeked = json.loads(done.stdout)
    assert [m["message"] for m in peeked["messages"]] == ["please run the tests", long_text]
    assert peeked["consumed"] is False

    consumed = run_cli("check-messages", "--credentials", str(creds), "--consume", "--json")
    assert consumed.returncode == 0, consumed.stderr
    body = json.loads(consumed.stdout)
    assert body["consumed"] is True
    assert body["acked_through"] == peeked["messages"][-1]["id"]
    assert body["unread"] == 0

    after = run_cli("check-messages", "--credentials", str(creds))
    assert after.returncode == 0
    assert after.stdout == ""
    assert "no unread messages" in after.stderr
    assert created["worker_token"] not in consumed.stdout + consumed.stderr


async def test_check_messages_with_a_revoked_token_exits_77(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "4")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    await admin_call(plain_bridge, "revoke_conversation", conversation_id=created["conversation_id"])
    done = run_cli("check-messages", "--credentials", str(creds))
    assert done.returncode == 77
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "token refused" in done.stderr


async def test_status_prints_an_aligned_table_and_json(bridge: Bridge) -> None:
    beating = await create_conversation(bridge, "1", role="frontend")
    await create_conversation(bridge, "10", role="backend")
    await admin_call(bridge, "assign_task", title="t", worker_id="10")
    async with httpx2.AsyncClient(verify=bridge.ssl_context()) as http:
        response = await http.post(
            f"{bridge.base_url}/v1/heartbeat",
            json={"status": "working"},
            headers={"Authorization": f"Bearer {beating['worker_token']}"},
        )
        assert response.status_code == 200
    config = bridge.admin_config()
    done = run_cli("status", "--config", str(config))
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["WORKER", "ROLE", "STATUS", "HEALTH", "HEARTBEAT", "OPEN", "TASKS"]
    assert [row.split()[0] for row in rows] == ["1", "10"]  # numeric order
    health_column = header.index("HEALTH")
    assert rows[0][health_column:].startswith("healthy")
    assert rows[1][health_column:].startswith("never_seen")
    assert rows[0].split()[2] == "working"
    assert rows[1].split()[-2:] == ["never", "1"]

    as_json = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert {w["worker_id"]: w["health"] for w in as_json["workers"]} == {"1": "healthy", "10": "never_seen"}
    assert bridge.admin_token not in done.stdout + done.stderr


async def test_one_shot_commands_exit_69_when_the_bridge_is_down(plain_bridge: Bridge, tmp_path: Path) -> None:
    created = await create_conversation(plain_bridge, "2")
    creds = write_worker_credentials(plain_bridge, created, tmp_path / "c.json")
    config = plain_bridge.admin_config()
    plain_bridge.stop()
    for command in (["status", "--config", str(config)], ["check-messages", "--credentials", str(creds)]):
        done = run_cli(*command)
        assert done.returncode == 69, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "bridge unreachable" in lines[0], done.stderr


async def test_admin_create_rotate_revoke_list(bridge: Bridge, tmp_path: Path) -> None:
    config = str(bridge.admin_config())
    full, worker = tmp_path / "full.json", tmp_path / "worker.json"
    created = run_cli(
        "admin", "create-conversation", "--config", config, "--my-role", "s2-orchestrator",
        "--partner-role", "worker-5-tests", "--worker-id", "5", "--out", str(full), "--worker-out", str(worker),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    for path in (full, worker):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    full_creds, worker_creds = load_credentials(str(full)), load_credentials(str(worker))
    assert full_creds.coordinator_token.startswith("s2c_")
    assert worker_creds.coordinator_token == ""
    assert worker_creds.worker_token == full_creds.worker_token
    assert worker_creds.bridge_url == bridge.url and worker_creds.ca_file == bridge.ca_file
    assert full_creds.conversation_id in created.stdout
    assert full_creds.worker_token not in created.stdout + created.stderr
    assert full_creds.coordinator_token not in created.stdout + created.stderr

    # The written worker file works as-is (TLS against the test CA, worker token).
    inbox = run_cli("check-messages", "--credentials", str(worker), "--json")
    assert inbox.returncode == 0, inbox.stderr
    assert json.loads(inbox.stdout)["messages"] == []

    rotated = run_cli(
        "admin", "rotate-conversation", "--config", config, "--conversation-id", full_creds.conversation_id,
        "--out", str(full), "--worker-out", str(worker),
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    new_creds = load_credentials(str(worker))
    assert new_creds.worker_token != worker_creds.worker_token
    assert new_creds.conversation_id == worker_creds.conversation_id
    old = private_file(tmp_path / "old.json", json.dumps(credentials_json(worker_creds)))
    assert run_cli("check-messages", "--credentials", str(old)).returncode == 77
    assert run_cli("check-messages", "--credentials", str(worker)).returncode == 0

    listed = run_cli("admin", "list-conversations", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert full_creds.conversation_id in listed.stdout
    listed_json = json.loads(run_cli("admin", "list-conversations", "--config", config, "--json").stdout)
    assert all("token" not in key for c in listed_json["conversations"] for key in c)

    revoked = run_cli(
        "admin", "revoke-conversation", "--config", config, "--conversation-id", full_creds.conversation_id
    )
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {full_creds.conversation_id}" in revoked.stdout
    assert run_cli("check-messages", "--credentials", str(worker)).returncode == 77
    listed = run_cli("admin", "list-conversations", "--config", config)
    row = next(line for line in listed.stdout.splitlines() if full_creds.conversation_id in line)
    assert row.split()[-1] == "yes"


async def test_admin_refuses_an_output_directory_that_does_not_exist_before_creating_anything(
    plain_bridge: Bridge, tmp_path: Path
) -> None:
    config = str(plain_bridge.admin_config())
    done = run_cli(
        "admin", "create-conversation", "--config", config, "--my-role", "s2-orchestrator",
        "--partner-role", "worker-6-tests", "--out", str(tmp_path / "missing" / "full.json"),
    )  # fmt: skip
    assert done.returncode == 78
    assert "--out" in done.stderr and "mkdir" in done.stderr
    conversations = await admin_call(plain_bridge, "list_conversations", include_revoked=True)
    assert conversations["conversations"] == []


async def test_admin_bridge_refusal_is_one_line_with_the_field(plain_bridge: Bridge, tmp_path: Path) -> None:
    config = str(plain_bridge.admin_config())
    done = run_cli(
        "admin", "create-conversation", "--config", config, "--my-role", "ab", "--partner-role", "worker-tests",
        "--out", str(tmp_path / "full.json"),
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "my_role" in lines[0], done.stderr
    assert not (tmp_path / "full.json").exists()


def credentials_json(creds: Any) -> dict[str, Any]:
    return {
        "conversation_id": creds.conversation_id,
        "worker_id": creds.worker_id,
        "worker_role": creds.worker_role,
        "coordinator_token": creds.coordinator_token,
        "worker_token": creds.worker_token,
        "created_at": creds.created_at.isoformat(),
        "expires_at": creds.expires_at.isoformat(),
        "bridge_url": creds.bridge_url,
        "ca_file": creds.ca_file or "",
    }
