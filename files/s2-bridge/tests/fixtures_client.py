"""Helpers for the client-side tests: run `s2-bridge` commands as real subprocesses and watch
their log lines, and talk to the bridge as the admin or a coordinator."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from conftest import Bridge, call, connect
from s2_bridge.contract.credentials import credentials_document, write_private_json

CLI = [sys.executable, "-m", "s2_bridge.cli"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a one-shot command to completion."""
    return subprocess.run([*CLI, *args], check=False, capture_output=True, text=True, timeout=timeout, env=cli_env())


@dataclass
class Daemon:
    """A long-running `s2-bridge` subprocess whose stderr lines are collected with arrival times."""

    args: Sequence[str]
    process: subprocess.Popen[str] = field(init=False)
    lines: list[tuple[float, str]] = field(default_factory=list)
    _reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.process = subprocess.Popen(
            [*CLI, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matching(self, pattern: str, since: float = 0.0) -> list[tuple[float, str]]:
        regex = re.compile(pattern)
        return [(at, line) for at, line in list(self.lines) if at >= since and regex.search(line)]

    async def wait_for(self, pattern: str, timeout: float = 30.0, since: float = 0.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(pattern, since)
            if found:
                return found[0]
            if self.process.poll() is not None:
                await anyio.sleep(0.2)  # let the reader drain the last lines
                found = self.matching(pattern, since)
                if found:
                    return found[0]
                raise AssertionError(f"exited {self.process.returncode} before {pattern!r}:\n{self.text()}")
            await anyio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text()}")

    async def wait_exit(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s:\n{self.text()}")
            await anyio.sleep(0.05)
        self._reader.join(timeout=5)
        return self.process.returncode

    def running(self) -> bool:
        return self.process.poll() is None

    async def terminate(self, timeout: float = 20.0) -> int:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit(timeout)

    def kill(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()


async def admin_call(bridge: Bridge, tool: str, **arguments: Any) -> dict[str, Any]:
    async with connect(bridge, bridge.admin_token) as admin:
        result = await call(admin, tool, **arguments)
    assert "error" not in result, result
    return result


async def as_coordinator(created: dict[str, Any], bridge: Bridge, tool: str, **arguments: Any) -> dict[str, Any]:
    async with connect(bridge, created["coordinator_token"]) as coordinator:
        result = await call(coordinator, tool, **arguments)
    assert "error" not in result, result
    return result


def write_worker_credentials(bridge: Bridge, created: dict[str, Any], path: Path) -> Path:
    """The worker's copy (no coordinator token), 0600, via the same writer the admin command uses."""
    document = credentials_document(created, bridge.url, bridge.ca_file)
    document["coordinator_token"] = ""
    write_private_json(str(path), document)
    return path


async def worker_health(bridge: Bridge, worker_id: str) -> dict[str, Any]:
    fleet = await admin_call(bridge, "fleet_status")
    return next(w for w in fleet["workers"] if w["worker_id"] == worker_id)
