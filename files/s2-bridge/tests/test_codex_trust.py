"""`s2-bridge codex-trust-hooks` (s2_bridge.agent.codex_trust) against the REAL Codex app-server.

Needs `codex` on PATH: npm install -g @openai/codex@0.171.0. Without it these tests fail, unless
S2_NO_CODEX=1 is set (then the real-Codex tests skip; the ones with a fake app-server still run).
Every run uses a temporary CODEX_HOME and HOME, so nothing touches the real ~/.codex.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
from s2_bridge import __version__
from s2_bridge.agent import codex_trust
from s2_bridge.contract import exitcodes

CODEX_PACKAGE = "@openai/codex@0.171.0"
OUR_START = "/opt/s2/bin/s2-bridge hook --credentials /etc/s2/worker-1.json"
OUR_STOP = "/opt/s2/bin/s2-bridge hook --credentials /etc/s2/worker-1.json --timeout-s 1.5"
FOREIGN = "/usr/local/bin/someone-elses-hook.sh --verbose"

CONFIG = """\
model = "gpt-5"

[[hooks.SessionStart]]
matcher = "startup|resume"
[[hooks.SessionStart.hooks]]
type = "command"
command = "{start}"
timeout = 10

[[hooks.UserPromptSubmit]]
[[hooks.UserPromptSubmit.hooks]]
type = "command"
command = "{foreign}"

[[hooks.Stop]]
[[hooks.Stop.hooks]]
type = "command"
command = "{stop}"
timeout = 30

# the owner of the foreign hook switched it off: that must stay exactly so
[hooks.state."{foreign_key}"]
enabled = false
"""


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codex() -> str:
    path = shutil.which("codex")
    if path is None:
        if os.environ.get("S2_NO_CODEX") == "1":
            pytest.skip("codex is not installed and S2_NO_CODEX=1")
        pytest.fail(
            f"codex is not on PATH: run `npm install -g {CODEX_PACKAGE}` (or set S2_NO_CODEX=1 to skip)",
            pytrace=False,
        )
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
    print(f"\nreal Codex: {path} ({version.stdout.strip() or version.stderr.strip()})")
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary CODEX_HOME (and HOME) for this test and for every process it starts."""
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    monkeypatch.setenv("CODEX_HOME", str(codex_home))
    monkeypatch.setenv("HOME", str(tmp_path))
    return codex_home


def write_config(codex_home: Path, *, stop: str = OUR_STOP) -> Path:
    config = codex_home / "config.toml"
    foreign_key = f"{config}:user_prompt_submit:0:0"
    config.write_text(CONFIG.format(start=OUR_START, stop=stop, foreign=FOREIGN, foreign_key=foreign_key))
    return config


def run_command(*args: str, label: str) -> subprocess.CompletedProcess[str]:
    """`python -m s2_bridge.agent.codex_trust ARGS` (the same run() the s2-bridge CLI calls), timed."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "s2_bridge.agent.codex_trust", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(f"codex-trust-hooks {label}: {time.monotonic() - started:.2f} s, exit {done.returncode}")
    print(textwrap.indent(done.stdout + done.stderr, "    "), end="")
    return done


def listing(codex: str) -> dict[str, codex_trust.Hook]:
    """hooks/list through the command's own code path: command -> Hook."""
    with codex_trust.connect(codex, 30.0) as (server, codex_home):
        hooks = codex_trust.list_hooks(server, codex_home).hooks
    return {hook.command: hook for hook in hooks}


def hooks_state(config: Path) -> dict[str, dict[str, object]]:
    return tomllib.loads(config.read_text()).get("hooks", {}).get("state", {})


# --- against the real Codex ------------------------------------------------------------------


def test_trusts_our_hooks_only_then_nothing_then_the_changed_one(codex: str, home: Path) -> None:
    config = write_config(home)
    before = listing(codex)
    assert {hook.trust_status for hook in before.values()} == {"untrusted"}
    # the key shape the state table uses: "<source path>:<event_snake>:<group>:<handler>"
    assert before[FOREIGN].key == f"{config}:user_prompt_submit:0:0"
    start_key, stop_key = before[OUR_START].key, before[OUR_STOP].key

    first = run_command(label="run 1 (2 to trust)")
    assert first.returncode == exitcodes.OK, first.stderr
    lines = first.stdout.splitlines()
    assert lines == [
        f"trusted SessionStart hook {start_key}",
        f"trusted Stop hook {stop_key}",
        "trusted 2 hook(s), 0 already trusted",
    ]
    assert "--credentials" not in first.stdout + first.stderr  # keys and events only, never a command

    after = listing(codex)
    assert after[OUR_START].trust_status == "trusted"
    assert after[OUR_STOP].trust_status == "trusted"
    assert after[FOREIGN].trust_status == "untrusted"
    state = hooks_state(config)
    assert state[start_key] == {"trusted_hash": after[OUR_START].current_hash}
    assert state[stop_key] == {"trusted_hash": after[OUR_STOP].current_hash}
    assert state[before[FOREIGN].key] == {"enabled": False}  # untouched: not trusted, still off
    assert after[FOREIGN].current_hash not in config.read_text()

    second = run_command(label="run 2 (nothing to do)")
    assert second.returncode == exitcodes.OK, second.stderr
    assert second.stdout.splitlines() == ["trusted 0 hook(s), 2 already trusted"]

    # A changed command changes the hash: Codex calls the hook "modified" and would skip it.
    changed_stop = OUR_STOP.replace("1.5", "2")
    config.write_text(config.read_text().replace(OUR_STOP, changed_stop))
    modified = listing(codex)
    assert modified[changed_stop].trust_status == "modified"
    assert modified[OUR_START].trust_status == "trusted"

    third = run_command(label="run 3 (the changed one)")
    assert third.returncode == exitcodes.OK, third.stderr
    assert third.stdout.splitlines() == [f"trusted Stop hook {stop_key}", "trusted 1 hook(s), 1 already trusted"]
    final = listing(codex)
    assert final[changed_stop].trust_status == "trusted"
    assert final[OUR_START].trust_status == "trusted"
    assert final[FOREIGN].trust_status == "untrusted"
    assert hooks_state(config)[stop_key] == {"trusted_hash": final[changed_stop].current_hash}


def test_match_selects_other_hooks(codex: str, home: Path) -> None:
    config = write_config(home)
    done = run_command("--match", "someone-elses-hook", label="--match someone-elses-hook")
    assert done.returncode == exitcodes.OK, done.stderr
    assert done.stdout.splitlines()[-1] == "trusted 1 hook(s), 0 already trusted"
    foreign_key = f"{config}:user_prompt_submit:0:0"
    assert set(hooks_state(config)[foreign_key]) == {"enabled", "trusted_hash"}  # upsert keeps enabled
    assert listing(codex)[OUR_START].trust_status == "untrusted"


@pytest.mark.parametrize(
    ("config_text", "says"),
    [
        ('model = "gpt-5"\n', "no user-level hook in"),
        ('[[hooks.Stop]]\n[[hooks.Stop.hooks]]\ntype = "bogus"\ncommand = "s2-bridge hook"\n', "unknown variant"),
    ],
    ids=["no-hooks", "invalid-config"],
)
def test_nothing_to_trust_is_an_error(codex: str, home: Path, config_text: str, says: str) -> None:
    config = home / "config.toml"
    config.write_text(config_text)
    done = run_command(label="nothing to trust")
    assert done.returncode == exitcodes.UNEXPECTED
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert says in done.stderr
    assert "CODEX_HOME" in done.stderr
    assert config.read_text() == config_text  # nothing written


# --- without the real Codex ------------------------------------------------------------------


def test_codex_not_installed_exits_69(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = run_command("--codex", str(tmp_path / "no-such-codex"), label="--codex missing")
    assert missing.returncode == exitcodes.UNREACHABLE
    assert missing.stderr.count("\n") == 1
    assert f"npm install -g {CODEX_PACKAGE}" in missing.stderr

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    not_on_path = run_command(label="codex not on PATH")
    assert not_on_path.returncode == exitcodes.UNREACHABLE
    assert "codex is not on PATH" in not_on_path.stderr
    assert not_on_path.stderr.count("\n") == 1


def test_empty_match_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        codex_trust.main(["--match", "  "])
    assert exc.value.code == exitcodes.USAGE


FAKE_SERVER = """\
#!{python}
# A fake `codex app-server`: logs what it receives, answers initialize, refuses hooks/list.
import json, sys
log = open({log!r}, "a")
for line in sys.stdin:
    log.write(line)
    log.flush()
    message = json.loads(line)
    if message.get("method") == "initialize":
        print(json.dumps({{"method": "configWarning", "params": {{"summary": "noise"}}}}), flush=True)
        print(json.dumps({{"id": message["id"], "result": {{"codexHome": "/fake"}}}}), flush=True)
    elif "id" in message:
        error = {{"code": -32601, "message": "Method not found: " + message["method"]}}
        print(json.dumps({{"id": message["id"], "error": error}}), flush=True)
"""


def test_handshake_shape_and_a_refused_method(tmp_path: Path, home: Path) -> None:
    log = tmp_path / "received.jsonl"
    fake = tmp_path / "codex"
    fake.write_text(FAKE_SERVER.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    done = run_command("--codex", str(fake), label="fake server refusing hooks/list")
    assert done.returncode == exitcodes.UNEXPECTED
    assert "refused hooks/list: Method not found: hooks/list" in done.stderr
    assert f"npm install -g {CODEX_PACKAGE}" in done.stderr
    received = [json.loads(line) for line in log.read_text().splitlines()]
    assert received == [
        {
            "id": 1,
            "method": "initialize",
            "params": {
                "clientInfo": {"name": "s2_bridge", "title": "s2-bridge codex-trust-hooks", "version": __version__}
            },
        },
        {"method": "initialized"},
        {"id": 2, "method": "hooks/list", "params": {}},
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_hung_app_server_is_bounded_and_its_whole_group_killed(tmp_path: Path, home: Path) -> None:
    pids = tmp_path / "pids"
    fake = tmp_path / "codex"
    # Ignores SIGTERM and stdin EOF, and has a child: only SIGKILL to the group ends both.
    fake.write_text(f"#!/bin/sh\ntrap '' TERM\necho $$ > {pids}\nsleep 300 &\necho $! >> {pids}\nwait\nwait\n")
    fake.chmod(0o755)
    started = time.monotonic()
    done = run_command("--codex", str(fake), "--timeout-s", "1", label="hung fake server, --timeout-s 1")
    elapsed = time.monotonic() - started
    assert done.returncode == exitcodes.UNEXPECTED
    assert "did not answer initialize within 1 s" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert elapsed < 1 + sum(codex_trust.SHUTDOWN_GRACE_S) + 5
    children = [int(pid) for pid in pids.read_text().split()]
    assert len(children) == 2
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)
