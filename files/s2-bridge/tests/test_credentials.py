"""Credentials files: every field validated, mode 0600 enforced, atomic private writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from s2_bridge.contract import tokens
from s2_bridge.contract.credentials import (
    CredentialsWatcher,
    credentials_document,
    load_credentials,
    read_token_file,
    write_private_json,
)
from s2_bridge.contract.errors import ConfigError

WORKER_TOKEN = tokens.new_token("worker")
COORDINATOR_TOKEN = tokens.new_token("coordinator")


def valid_document(ca_file: str) -> dict[str, Any]:
    return {
        "conversation_id": "conv_0123456789abcdef",
        "worker_id": "3",
        "worker_role": "tests",
        "coordinator_token": "",
        "worker_token": WORKER_TOKEN,
        "created_at": "2026-11-24T01:00:00+00:00",
        "expires_at": "2026-12-24T01:00:00+00:00",
        "bridge_url": "https://orchestrator:8443/mcp",
        "ca_file": ca_file,
    }


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.crt"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(path)


def write(path: Path, document: Any, mode: int = 0o600) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    path.chmod(mode)
    return path


def test_valid_worker_file_loads_and_uses_the_worker_token(tmp_path: Path, ca_file: str) -> None:
    creds = load_credentials(str(write(tmp_path / "c.json", valid_document(ca_file))))
    assert creds.token == WORKER_TOKEN
    assert creds.side == "worker"
    assert creds.worker_id == "3"
    assert creds.ca_file == ca_file
    assert creds.expires_at.year == 2026
    # A token must never show up in a repr (it ends up in tracebacks and logs).
    assert WORKER_TOKEN not in repr(creds)


def test_coordinator_copy_uses_the_coordinator_token_only_when_worker_token_is_blank(
    tmp_path: Path, ca_file: str
) -> None:
    full = valid_document(ca_file) | {"coordinator_token": COORDINATOR_TOKEN}
    assert load_credentials(str(write(tmp_path / "full.json", full))).token == WORKER_TOKEN
    coordinator_only = full | {"worker_token": ""}
    creds = load_credentials(str(write(tmp_path / "coord.json", coordinator_only)))
    assert creds.token == COORDINATOR_TOKEN
    assert creds.side == "coordinator"
    assert COORDINATOR_TOKEN not in repr(creds)


def test_plain_http_needs_no_ca_file(tmp_path: Path) -> None:
    document = valid_document("") | {"bridge_url": "http://127.0.0.1:8080/mcp"}
    assert load_credentials(str(write(tmp_path / "c.json", document))).ca_file is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_group_or_others_is_refused_with_chmod_fix(tmp_path: Path, ca_file: str, mode: int) -> None:
    path = write(tmp_path / "c.json", valid_document(ca_file), mode)
    with pytest.raises(ConfigError) as caught:
        load_credentials(str(path))
    assert f"chmod 600 {path}" in str(caught.value)
    assert str(path) in str(caught.value)


BAD_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("missing conversation_id", {"conversation_id": None}, "conversation_id"),
    ("worker_id not a string", {"worker_id": 3}, "worker_id"),
    ("conversation id shape", {"conversation_id": "conv_xyz"}, "conversation_id"),
    ("empty worker id", {"worker_id": "  "}, "worker_id"),
    ("worker id with a slash", {"worker_id": "../3"}, "worker_id"),
    ("worker id too long", {"worker_id": "x" * 65}, "worker_id"),
    ("role too short", {"worker_role": "ab"}, "worker_role"),
    ("worker token shape", {"worker_token": "s2w_short"}, "worker_token"),
    ("coordinator token in worker slot", {"worker_token": COORDINATOR_TOKEN}, "worker_token"),
    ("coordinator token shape", {"coordinator_token": "hunter2"}, "coordinator_token"),
    ("no token at all", {"worker_token": ""}, "worker_token"),
    ("created_at not a time", {"created_at": "yesterday"}, "created_at"),
    ("expires_at without zone", {"expires_at": "2026-12-24T01:00:00"}, "expires_at"),
    ("expires before created", {"expires_at": "2026-01-01T00:00:00+00:00"}, "expires_at"),
    ("url scheme", {"bridge_url": "ftp://x/mcp"}, "bridge_url"),
    ("https without ca", {"ca_file": ""}, "ca_file"),
    ("ca file absent", {"ca_file": "/nonexistent/ca.crt"}, "ca_file"),
    ("ca file wrong type", {"ca_file": 5}, "ca_file"),
    ("unknown field", {"worker_tokn": "x"}, "worker_tokn"),
]


@pytest.mark.parametrize(("case", "change", "field"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_field_is_named_with_a_fix(
    tmp_path: Path, ca_file: str, case: str, change: dict[str, Any], field: str | None
) -> None:
    document = valid_document(ca_file)
    for key, value in change.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    path = write(tmp_path / "c.json", document)
    with pytest.raises(ConfigError) as caught:
        load_credentials(str(path))
    error = caught.value
    assert error.path == str(path)
    assert error.field == field
    assert error.fix
    message = str(error)
    assert "\n" not in message
    # Secrets stay out of error messages even when they are malformed.
    for value in (WORKER_TOKEN, COORDINATOR_TOKEN, "s2w_short", "hunter2"):
        assert value not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ("", "not valid JSON")],
)
def test_unparseable_file_names_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "c.json", content)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_credentials(str(path))
    assert caught.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_credentials(str(tmp_path / "absent.json"))


def test_write_private_json_is_0600_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_private_json(str(target), {"a": 1})
    first_inode = target.stat().st_ino
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_private_json(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    # Replaced by rename, never rewritten in place: a concurrent reader sees old or new.
    assert target.stat().st_ino != first_inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_private_json_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mkdir -m 700"):
        write_private_json(str(tmp_path / "nope" / "out.json"), {})


def test_written_document_loads_back(tmp_path: Path, ca_file: str) -> None:
    created = {key: value for key, value in valid_document(ca_file).items() if key not in ("bridge_url", "ca_file")}
    created["coordinator_token"] = COORDINATOR_TOKEN
    document = credentials_document(created, "https://orchestrator:8443/mcp", ca_file)
    path = tmp_path / "w.json"
    write_private_json(str(path), document)
    creds = load_credentials(str(path))
    assert creds.coordinator_token == COORDINATOR_TOKEN
    assert creds.bridge_url == "https://orchestrator:8443/mcp"


def test_watcher_reloads_on_change_and_keeps_old_credentials_when_new_file_is_bad(tmp_path: Path, ca_file: str) -> None:
    path = write(tmp_path / "c.json", valid_document(ca_file))
    watcher = CredentialsWatcher(str(path))
    assert not watcher.changed()
    rotated = tokens.new_token("worker")
    write_private_json(str(path), valid_document(ca_file) | {"worker_token": rotated})
    assert watcher.changed()
    assert watcher.reload().token == rotated
    assert not watcher.changed()
    write(path, "{broken")
    assert watcher.changed()
    with pytest.raises(ConfigError):
        watcher.reload()
    assert watcher.current.token == rotated
    assert not watcher.changed()  # the bad version is reported once, not every round


def test_read_token_file_checks_mode_and_shape(tmp_path: Path) -> None:
    token = tokens.new_token("admin")
    path = tmp_path / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (token + "\n").encode())
    os.close(fd)
    assert read_token_file(str(path)) == token
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_token_file(str(path))
    path.chmod(0o600)
    path.write_text(tokens.new_token("worker"))
    with pytest.raises(ConfigError, match="admin token") as caught:
        read_token_file(str(path))
    assert "s2w_" not in str(caught.value)
