"""`s2-bridge serve` with bad config files: one clear line naming the file and key, exit 78,
and nothing created (no database, no admin token)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import serve_once
from s2_bridge.contract import exitcodes
from s2_bridge.contract.config import load_bridge_config

GOOD = """
[server]
host = "127.0.0.1"
port = 8443
[storage]
path = "{data}/bridge.db"
[auth]
admin_token_file = "{data}/admin.token"
"""


CASES = [
    ("not toml at all [", None, "not valid TOML"),
    ('[server]\nport = "8443"\n', "server.port", "must be int"),
    ("[server]\nport = 70000\n", "server.port", "out of range"),
    ("[server]\nprot = 8443\n", "server.prot", "unknown key"),
    ("[servr]\nport = 8443\n", "servr", "unknown section"),
    ('[storage]\nbackend = "postgres"\n', "storage.backend", "not supported"),
    ("[limits]\nmessage_max_chars = 0\n", "limits.message_max_chars", "greater than 0"),
    ("[health]\nsilent_after_s = true\n", "health.silent_after_s", "must be int"),
    ('[tls]\ncert_file = "/x.crt"\n', "tls.key_file", "is empty"),
    ("server = 3\n", "server", "must be a table"),
]


@pytest.mark.parametrize(("content", "field", "problem"), CASES)
def test_bad_config_names_the_field_and_exits_78(tmp_path: Path, content: str, field: str | None, problem: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(content)
    result = serve_once(config)
    assert result.returncode == exitcodes.CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    assert problem in lines[0]
    assert "fix:" in lines[0]
    if field:
        assert f": {field}:" in lines[0]
    assert list(tmp_path.iterdir()) == [config]


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = serve_once(missing)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert f"{missing}: file not found" in result.stderr


def test_tls_is_required_unless_insecure_http_is_explicit(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(GOOD.format(data=tmp_path / "data"))
    result = serve_once(config)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert "tls: is missing" in result.stderr
    assert "--insecure-http" in result.stderr


def test_tls_files_must_exist(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        GOOD.format(data=tmp_path / "data")
        + f'[tls]\ncert_file = "{tmp_path}/no.crt"\nkey_file = "{tmp_path}/no.key"\n'
    )
    result = serve_once(config)
    assert result.returncode == exitcodes.CONFIG_ERROR
    assert "tls.cert_file" in result.stderr


def test_defaults_are_applied(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(GOOD.format(data=tmp_path))
    loaded = load_bridge_config(str(config))
    assert loaded.limits.message_max_chars == 50_000
    assert loaded.limits.files_involved_max == 20
    assert loaded.health.silent_after_s == 45
    assert loaded.tls is None
