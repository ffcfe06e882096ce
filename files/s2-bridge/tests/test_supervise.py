"""`s2-bridge supervise` (the keepalive's supervisor where systemd is absent) run for real: it
supervises a real keepalive heartbeating to a real bridge; its lock, pid file, log, backoff,
77/78 policy and signals are checked from outside, as the wsl molecule scenario does."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Bridge, create_conversation
from fixtures_client import CLI, admin_call, cli_env, worker_health, write_worker_credentials

pytestmark = pytest.mark.anyio

STARTED = re.compile(r"keepalive started \(pid (\d+)\)")


@dataclass
class Supervised:
    """One supervisor's command line and files, in a test's tmp_path."""

    credentials: Path
    tmp: Path
    created: dict[str, Any] = field(default_factory=dict)
    interval: str = "0.3"
    extra: tuple[str, ...] = ("--backoff-min-s", "1", "--backoff-max-s", "2")

    @property
    def pid_file(self) -> Path:
        return self.tmp / "run" / "s2-keepalive-supervisor.pid"

    @property
    def log(self) -> Path:
        return self.tmp / "log" / "s2-keepalive.log"

    def argv(self, action: str) -> list[str]:
        return [
            *CLI,
            "supervise",
            "--credentials",
            str(self.credentials),
            "--interval",
            self.interval,
            "--run-dir",
            str(self.tmp / "run"),
            "--log-dir",
            str(self.tmp / "log"),
            *self.extra,
            action,
        ]

    def cli(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(action), capture_output=True, text=True, timeout=60, check=False, env=cli_env())

    def foreground(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv("run"), env=cli_env(), text=True)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def children(self) -> list[int]:
        return [int(pid) for pid in STARTED.findall(self.text())]

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.text(), re.MULTILINE)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {pattern!r} not in the log within {timeout} s:\n{self.text()}")
            time.sleep(0.05)

    def wait_status(self, code: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.cli("status").returncode != code:
            if time.monotonic() > deadline:
                raise AssertionError(f"status never exited {code}:\n{self.text()}")
            time.sleep(0.1)

    def kill_all(self) -> None:
        pids = self.children()
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids.append(int(self.pid_file.read_text()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.05)


@pytest.fixture
async def supervised(plain_bridge: Bridge, tmp_path: Path):
    created = await create_conversation(plain_bridge, "7")
    sup = Supervised(write_worker_credentials(plain_bridge, created, tmp_path / "c.json"), tmp_path, created)
    try:
        yield sup
    finally:
        sup.kill_all()


async def test_start_is_single_instance_and_stop_ends_both(supervised: Supervised, plain_bridge: Bridge) -> None:
    assert supervised.cli("status").returncode == 3
    first = supervised.cli("start")
    assert (first.returncode, first.stdout) == (0, "started\n"), first.stderr
    supervised.wait_log(r"heartbeating for worker 7")
    assert supervised.cli("start").stdout == "running\n"
    # a second supervisor in the foreground finds the lock held and leaves
    second = supervised.foreground()
    assert second.wait(timeout=30) == 0
    assert "already running; exiting" in supervised.text()
    assert len(supervised.children()) == 1
    status = supervised.cli("status")
    assert (status.returncode, status.stdout) == (0, "running\n")
    assert (await worker_health(plain_bridge, "7"))["health"] == "healthy"

    pid = int(supervised.pid_file.read_text())
    assert supervised.cli("stop").stdout == "stopped\n"
    wait_gone(pid)
    wait_gone(supervised.children()[0])
    assert not supervised.pid_file.exists()
    assert supervised.cli("status").returncode == 3
    assert supervised.cli("stop").stdout == "not running\n"
    assert "stopped on request" in supervised.text()


async def test_a_killed_keepalive_is_restarted_after_the_backoff(supervised: Supervised, plain_bridge: Bridge) -> None:
    assert supervised.cli("start").stdout == "started\n"
    supervised.wait_log(r"heartbeating for worker 7")
    killed = supervised.children()[0]
    # what the wsl scenario's `pgrep -f 's2-bridge keepalive'` finds
    assert "s2-bridge keepalive --credentials" in Path(f"/proc/{killed}/cmdline").read_text().replace("\0", " ")
    killed_at = time.monotonic()
    os.kill(killed, signal.SIGKILL)
    supervised.wait_log(STARTED.pattern, count=2)
    restarted_after = time.monotonic() - killed_at
    assert re.search(r"keepalive exited 137 after \d+s; restarting in 1s", supervised.text())
    assert restarted_after >= 1.0, "restarted before the backoff"
    new = supervised.children()[1]
    assert new != killed and alive(new) and not alive(killed)
    supervised.wait_log(r"heartbeating for worker 7", count=2)
    assert (await worker_health(plain_bridge, "7"))["health"] == "healthy"
    assert supervised.cli("status").returncode == 0


async def test_failures_back_off_doubling_up_to_the_cap(supervised: Supervised) -> None:
    supervised.interval = "0"  # the keepalive refuses it at once: exit 2, a failure
    assert supervised.cli("start").stdout == "started\n"
    delays = supervised.wait_log(r"keepalive exited 2 after \d+s; restarting in (\S+)s", count=4, timeout=60)
    assert delays[:4] == ["1", "2", "2", "2"]
    assert supervised.cli("status").returncode == 0


async def test_exit_78_stops_the_supervisor_with_78(supervised: Supervised) -> None:
    supervised.credentials.write_text("{oops")  # a bad credentials file: the keepalive exits 78
    process = supervised.foreground()
    assert process.wait(timeout=60) == 78
    assert len(supervised.children()) == 1, supervised.text()
    assert "keepalive exited 78" in supervised.text()
    assert "not restarting" in supervised.text()
    assert not supervised.pid_file.exists()
    assert supervised.cli("status").returncode == 3


async def test_exit_77_stops_the_supervisor_with_77(supervised: Supervised, plain_bridge: Bridge) -> None:
    process = supervised.foreground()
    try:
        supervised.wait_log(r"heartbeating for worker 7")
        conversation = supervised.created["conversation_id"]
        await admin_call(plain_bridge, "revoke_conversation", conversation_id=conversation)
        assert process.wait(timeout=60) == 77
    finally:
        process.kill()
    assert len(supervised.children()) == 1, supervised.text()
    assert "keepalive exited 77" in supervised.text()
    assert not supervised.pid_file.exists()


async def test_a_keepalive_exiting_0_stops_the_supervisor(supervised: Supervised) -> None:
    process = supervised.foreground()
    try:
        supervised.wait_log(r"heartbeating for worker 7")
        os.kill(supervised.children()[0], signal.SIGTERM)  # the keepalive stops cleanly: exit 0
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert "keepalive stopped (exit 0); supervisor stops too" in supervised.text()
    assert len(supervised.children()) == 1
    assert not supervised.pid_file.exists()


async def test_term_stops_the_keepalive_and_removes_the_pid_file(supervised: Supervised) -> None:
    process = supervised.foreground()
    try:
        supervised.wait_log(r"heartbeating for worker 7")
        assert int(supervised.pid_file.read_text()) == process.pid
        child = supervised.children()[0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    wait_gone(child)
    assert not supervised.pid_file.exists()
    assert "stopped on request" in supervised.text()
    assert len(supervised.children()) == 1


async def test_restart_restarts_the_keepalive_at_once(supervised: Supervised) -> None:
    assert supervised.cli("restart").stdout == "started\n"  # not running: restart starts
    supervised.wait_log(r"heartbeating for worker 7")
    assert supervised.cli("restart").stdout == "restarted\n"
    supervised.wait_log(STARTED.pattern, count=2)
    first, second = supervised.children()
    wait_gone(first)
    assert alive(second)
    assert "restarting the keepalive on request" in supervised.text()
    assert "restarting in" not in supervised.text()
    supervisor = int(supervised.pid_file.read_text())
    assert supervised.cli("replace").stdout == "started\n"
    wait_gone(supervisor)
    assert int(supervised.pid_file.read_text()) != supervisor


async def test_the_log_is_written_rotated_and_holds_no_token(supervised: Supervised) -> None:
    supervised.extra = (*supervised.extra, "--log-max-bytes", "4096")
    supervised.log.parent.mkdir(mode=0o700)
    supervised.log.write_text("old line\n" * 600)  # past the cap
    assert supervised.cli("start").stdout == "started\n"
    supervised.wait_log(r"heartbeating for worker 7")
    rotated = supervised.log.with_name("s2-keepalive.log.1")
    assert rotated.read_text().startswith("old line\n")
    text = supervised.text()
    assert "old line" not in text
    assert re.search(r"^\S+Z s2-keepalive-supervisor\[\d+\]: started$", text, re.MULTILINE)
    assert "INFO s2_bridge.keepalive: heartbeating for worker 7" in text  # the keepalive's own lines
    assert supervised.created["worker_token"] not in text
    assert supervised.log.stat().st_mode & 0o077 == 0
