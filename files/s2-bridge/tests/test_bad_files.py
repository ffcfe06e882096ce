"""Malformed config and credentials files, met the way a host meets them: through the installed
`s2-bridge` console script in a real process. Every command must exit 78 with exactly one
stderr line that names the file and the problem, and no traceback (docs/CONTRACTS.md).

Not repeated here: serve's per-key errors (test_serve_config.py, also a subprocess) and a
credentials file readable by others (test_cli.py's entry-point test). test_cli.py checks many
field errors in-process through main(); this table covers the file-level problems (missing,
empty, truncated, binary, a directory, nested too deeply), the [watchdog] table, CA files and
the serve TLS pair as a real process would hit them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from fixtures_client import cli_env
from s2_bridge.contract import exitcodes, tokens

WORKER_TOKEN = tokens.new_token("worker")
ADMIN_TOKEN = tokens.new_token("admin")
GARBAGE = b"\xff\xfe\x00\x80\xc3(garbage\x9f"


def entry_point() -> str:
    """The console script pip installed next to this interpreter (what the units run)."""
    script = Path(sys.executable).with_name("s2-bridge")
    if script.is_file():
        return str(script)
    found = shutil.which("s2-bridge")
    if found is None:
        pytest.fail("no s2-bridge console script next to this Python: pip install -e files/s2-bridge")
    return found


def write_file(path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, content.encode() if isinstance(content, str) else content)
    os.close(fd)
    path.chmod(mode)
    return path


def directory(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


# --- the files -------------------------------------------------------------------------------


def credentials(**change: Any) -> str:
    """A credentials document per docs/CONTRACTS.md; a value of None drops that field."""
    body: dict[str, Any] = {
        "conversation_id": "conv_0123456789abcdef",
        "worker_id": "3",
        "worker_role": "worker-3-tests",
        "coordinator_token": "",
        "worker_token": WORKER_TOKEN,
        "created_at": "2026-11-24T01:00:00+00:00",
        "expires_at": "2036-12-24T01:00:00+00:00",
        "bridge_url": "http://127.0.0.1:9/mcp",
        "ca_file": "",
    }
    for key, value in change.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body)


def admin_token(folder: Path, mode: int = 0o600) -> Path:
    return write_file(folder / "admin.token", ADMIN_TOKEN + "\n", mode)


def admin_toml(folder: Path, extra: str = "", url: str = "http://127.0.0.1:9/mcp") -> str:
    return f'bridge_url = "{url}"\nadmin_token_file = "{admin_token(folder)}"\n{extra}'


def bridge_toml(folder: Path, extra: str = "") -> str:
    data = folder / "data"
    return (
        f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[storage]\npath = "{data}/bridge.db"\n[auth]\nadmin_token_file = "{data}/admin.token"\n{extra}'
    )


@dataclass(frozen=True)
class Case:
    """One malformed input: `write(tmp)` makes it and returns the path given to the command."""

    id: str
    write: Callable[[Path], Path]
    field: str | None  # the key the line must name (None: the whole file is wrong)
    problem: str  # text the line must hold: what is wrong
    names: str | None = None  # the file the line must name, if not the one given (under tmp)


def file_cases(name: str, *, empty: tuple[str | None, str], binary: str, deep: str, parse: str) -> list[Case]:
    """Problems with the file itself rather than with one of its fields."""
    return [
        Case("missing", lambda d: d / name, None, "file not found"),
        Case("empty", lambda d: write_file(d / name, ""), *empty),
        Case("binary", lambda d: write_file(d / name, GARBAGE), None, binary),
        Case("directory", lambda d: directory(d / name), None, "is a directory"),
        Case("nested too deeply", lambda d: write_file(d / name, deep), None, parse),
    ]


def credentials_case(case: str, field: str, problem: str, **change: Any) -> Case:
    return Case(case, lambda d: write_file(d / "c.json", credentials(**change)), field, problem)


def with_ca(make_ca: Callable[[Path], str], url: str = "https://x:8443/mcp") -> Callable[[Path], Path]:
    """A credentials file (https) whose ca_file is what `make_ca` made."""
    return lambda d: write_file(d / "c.json", credentials(bridge_url=url, ca_file=make_ca(d)))


def absent_ca(folder: Path) -> str:
    return f"{folder}/no-ca.crt"


def garbage_ca(folder: Path) -> str:
    return str(write_file(folder / "ca.crt", "this is not a certificate\n", 0o644))


CREDENTIAL_CASES = [
    *file_cases(
        "c.json", empty=(None, "not valid JSON"), binary="not UTF-8", deep="[" * 100_000, parse="not valid JSON"
    ),
    Case("truncated", lambda d: write_file(d / "c.json", credentials()[:80]), None, "not valid JSON"),
    credentials_case("wrong type", "worker_id", "must be a string", worker_id=3),
    credentials_case("unknown field", "worker_tokn", "unknown field", worker_tokn=WORKER_TOKEN),
    credentials_case("missing field", "worker_role", "is missing", worker_role=None),
    Case("https ca_file absent", with_ca(absent_ca), "ca_file", "does not exist"),
    Case("https ca_file not PEM", with_ca(garbage_ca), "ca_file", "cannot be loaded as a PEM CA certificate"),
]


def admin_case(
    case: str, field: str | None, problem: str, text: Callable[[Path], str], names: str | None = None
) -> Case:
    return Case(case, lambda d: write_file(d / "admin.toml", text(d)), field, problem, names)


def open_token_config(folder: Path) -> str:
    text = admin_toml(folder)
    admin_token(folder, 0o644)
    return text


ADMIN_CASES = [
    *file_cases(
        "admin.toml", empty=("bridge_url", "is missing"), binary="not valid TOML", deep="a = " + "[" * 100_000,
        parse="not valid TOML",
    ),
    admin_case("not toml", None, "not valid TOML", lambda d: 'bridge_url = "http://x\n'),
    admin_case("truncated", None, "not valid TOML", lambda d: admin_toml(d, "[watchdog")),
    admin_case("wrong type", "bridge_url", "must be str",
               lambda d: f'bridge_url = 9\nadmin_token_file = "{admin_token(d)}"\n'),
    admin_case("unknown key", "ca_fil", "unknown key", lambda d: admin_toml(d, 'ca_fil = "/x"\n')),
    admin_case("missing key", "admin_token_file", "is missing", lambda d: 'bridge_url = "http://127.0.0.1:9/mcp"\n'),
    admin_case("https ca_file absent", "ca_file", "does not exist",
               lambda d: admin_toml(d, f'ca_file = "{absent_ca(d)}"\n', "https://x/mcp")),
    admin_case("https ca_file not PEM", "ca_file", "cannot be loaded as a PEM CA certificate",
               lambda d: admin_toml(d, f'ca_file = "{garbage_ca(d)}"\n', "https://x/mcp")),
    admin_case("admin token file absent", None, "file not found",
               lambda d: f'bridge_url = "http://127.0.0.1:9/mcp"\nadmin_token_file = "{d}/gone.token"\n',
               names="gone.token"),
    admin_case("admin token file mode 0644", None, "chmod 600", open_token_config, names="admin.token"),
]  # fmt: skip


def watchdog_case(setting: str, problem: str) -> Case:
    field = "watchdog." + setting.split(" = ", 1)[0]
    table = f"[watchdog]\n{setting}\n"
    return Case(setting, lambda d: write_file(d / "watchdog.toml", admin_toml(d, table)), field, problem)


WATCHDOG_CASES = [
    watchdog_case("interval_s = nan", "must be greater than 0"),
    watchdog_case("threshold_s = inf", "must be greater than 0"),
    watchdog_case("check_timeout_s = 0", "must be greater than 0"),
    watchdog_case("grace_s = -1", "must not be negative"),
    watchdog_case('interval_s = "15s"', "must be float"),
    watchdog_case("intervl_s = 15", "unknown key"),
    Case(
        "not a table",
        lambda d: write_file(d / "watchdog.toml", admin_toml(d, "watchdog = 15\n")),
        "watchdog",
        "must be a table",
    ),
]


def bad_tls(folder: Path) -> str:
    key = write_file(folder / "server.key", GARBAGE)
    return bridge_toml(folder, f'[tls]\ncert_file = "{garbage_ca(folder)}"\nkey_file = "{key}"\n')


def serve_case(case: str, field: str | None, problem: str, text: Callable[[Path], str]) -> Case:
    return Case(case, lambda d: write_file(d / "bridge.toml", text(d)), field, problem)


SERVE_CASES = [
    *file_cases(
        "bridge.toml", empty=("tls", "is missing"), binary="not valid TOML", deep="a = " + "[" * 100_000,
        parse="not valid TOML",
    ),
    serve_case("truncated", None, "not valid TOML", lambda d: bridge_toml(d, "[limits")),
    serve_case("limit nan", "limits.calls_per_s", "must be greater than 0",
               lambda d: bridge_toml(d, "[limits]\ncalls_per_s = nan\n")),
    serve_case("tls files not PEM", "tls.cert_file", "not a PEM certificate and its key", bad_tls),
]  # fmt: skip


# --- the commands ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    id: str
    argv: tuple[str, ...]  # "{tmp}" stands for the test's directory
    option: str  # the option that takes the file


SERVE = Command("serve", ("serve",), "--config")
CREDENTIAL_COMMANDS = [
    Command("keepalive", ("keepalive", "--interval", "1"), "--credentials"),
    Command("check-messages", ("check-messages",), "--credentials"),
    Command("mcp-proxy", ("mcp-proxy",), "--credentials"),
]
WATCHDOG = Command("watchdog", ("watchdog",), "--config")
ADMIN_CONFIG_COMMANDS = [
    WATCHDOG,
    Command("status", ("status",), "--config"),
    Command("admin list", ("admin", "list-conversations"), "--config"),
]
OTHER_ADMIN_ACTIONS = [
    Command("admin create", ("admin", "create-conversation", "--my-role", "s2-orchestrator",
            "--partner-role", "worker-5-tests", "--out", "{tmp}/full.json"), "--config"),
    Command("admin rotate", ("admin", "rotate-conversation", "--conversation-id", "conv_0123456789abcdef",
            "--out", "{tmp}/full.json"), "--config"),
    Command("admin revoke", ("admin", "revoke-conversation", "--conversation-id", "conv_0123456789abcdef"),
            "--config"),
]  # fmt: skip
# Every admin action goes through the same loader: two cases each show that they share it.
SHARED_BY_ADMIN_ACTIONS = ("not toml", "https ca_file absent")

TABLE = [
    *((SERVE, case) for case in SERVE_CASES),
    *((command, case) for command in CREDENTIAL_COMMANDS for case in CREDENTIAL_CASES),
    *((command, case) for command in ADMIN_CONFIG_COMMANDS for case in ADMIN_CASES),
    *((WATCHDOG, case) for case in WATCHDOG_CASES),
    *((command, case) for command in OTHER_ADMIN_ACTIONS for case in ADMIN_CASES if case.id in SHARED_BY_ADMIN_ACTIONS),
]


def run(command: Command, path: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    argv = [arg.replace("{tmp}", str(tmp)) for arg in command.argv]
    return subprocess.run(
        [entry_point(), *argv, command.option, str(path)],
        stdin=subprocess.DEVNULL,  # mcp-proxy reads MCP frames there: EOF, never a hang
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        env=cli_env(),
        cwd=tmp,
        check=False,
    )


@pytest.mark.parametrize(("command", "case"), [pytest.param(c, k, id=f"{c.id}: {k.id}") for c, k in TABLE])
def test_bad_file_exits_78_with_one_line_naming_the_file_and_problem(
    tmp_path: Path, command: Command, case: Case
) -> None:
    path = case.write(tmp_path)
    done = run(command, path, tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == exitcodes.CONFIG_ERROR, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.strip(), done.stderr
    assert str((tmp_path / case.names) if case.names else path) in line
    if case.field:
        assert f": {case.field}: " in line
    assert case.problem in line
    assert "fix:" in line
    assert done.stdout == ""  # mcp-proxy above all: stdout is the MCP channel
    assert WORKER_TOKEN not in done.stderr
    assert ADMIN_TOKEN not in done.stderr
    if command is SERVE:
        assert not (tmp_path / "data").exists()  # refused before a database or token was made


@pytest.mark.parametrize(
    "argv",
    [["check-messages", "--credentials", "c.json"], ["status", "--config", "admin.toml"]],
    ids=["check-messages", "status"],
)
def test_a_ca_file_is_not_loaded_for_a_plain_http_url(tmp_path: Path, argv: list[str]) -> None:
    """Only https uses ca_file: a stale one beside an http:// URL is no crash. Nothing listens
    on the port, so the command reaches the network and says so in one line (69)."""
    url = f"http://127.0.0.1:{free_port()}/mcp"
    write_file(tmp_path / "c.json", credentials(bridge_url=url, ca_file=f"{tmp_path}/no-ca.crt"))
    write_file(tmp_path / "admin.toml", admin_toml(tmp_path, f'ca_file = "{tmp_path}/no-ca.crt"\n', url))
    done = subprocess.run(
        [entry_point(), *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
        cwd=tmp_path,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == exitcodes.UNREACHABLE, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "bridge unreachable" in lines[0], done.stderr
