"""What bench_hostile.py's three scenarios share: the runtime under test (`--runtime-src`), its
config and seeding, a started bridge, open-loop heartbeats, the bench's own loop lag, CPU figures,
and the printing with the load average beside every line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import s2_bridge
from bench_bridge import (
    BENCH_DIR,
    HOST,
    Conn,
    CpuMeter,
    Processes,
    Wire,
    body_ok,
    fmt,
    free_port,
    percentile,
    wait_healthy,
    write_config,
)

WAIT_TIMEOUT_S = 50  # messaging.WAIT_MAX_S: a parked wait returns after this at the latest
NETWORK_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError, ssl.SSLError)
# Runs bench_bridge.seed (and, asked, issues a lead token as bench_lead.py does) with the runtime
# under test (PYTHONPATH); the tokens come back on a pipe.
SEED_CODE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench_bridge import seed
workers, coordinators = seed(Path(sys.argv[2]), int(sys.argv[3]))
lead = None
if sys.argv[4] == "lead":
    from s2_bridge.contract import tokens
    from s2_bridge.server.store.sqlite import SQLiteStore
    lead, store, now = tokens.new_token("lead"), SQLiteStore(sys.argv[2]), time.time()
    store.replace_lead_token(tokens.token_hash(lead), lead_role="bench-lead", now=now, expires_at=now + 86400)
    store.close()
sys.stdout.write(json.dumps([workers, coordinators, lead]))
"""


def load_text() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def say(text: str) -> None:
    print(f"{text}  [{load_text()}]", flush=True)


# --- the runtime under test ------------------------------------------------------------------------


@dataclass
class Runtime:
    """Where the bridge's code comes from: the installed package or `--runtime-src`."""

    src: Path  # the directory holding the s2_bridge package
    env: dict[str, str]
    config_text: str

    @classmethod
    def find(cls, runtime_src: str | None) -> Runtime:
        env = dict(os.environ)
        if runtime_src is None:
            src = Path(s2_bridge.__file__).resolve().parent.parent
        else:
            root = Path(runtime_src).resolve()
            candidates = [root / "src", root / "files" / "s2-bridge" / "src", root]
            found = [c for c in candidates if (c / "s2_bridge" / "__init__.py").is_file()]
            if not found:
                raise SystemExit(f"--runtime-src {runtime_src}: no s2_bridge package in {root}/src or below")
            src = found[0]
            env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
        return cls(src, env, (src / "s2_bridge" / "config.py").read_text())

    def supports(self, key: str) -> bool:
        """Whether the runtime's config knows `key` (unknown keys make the bridge exit 78)."""
        return re.search(rf"^\s+{re.escape(key)}\s*:", self.config_text, re.MULTILINE) is not None

    def describe(self) -> dict[str, str]:
        def git(*args: str) -> str | None:
            out = subprocess.run(["git", "-C", str(self.src), *args], capture_output=True, text=True, check=False)
            return out.stdout.strip() if out.returncode == 0 else None

        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "."))
        probe = subprocess.run(
            [sys.executable, "-c", "import s2_bridge; print(s2_bridge.__file__)"],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        ).stdout.strip()
        return {
            "src": str(self.src),
            "imported_from": probe,
            "commit": commit or "not in a git work tree",
            "tree": "?" if commit is None else "working tree with uncommitted changes" if dirty else "clean",
        }

    def seed(self, db_path: Path, count: int, lead: bool) -> tuple[list[str], list[str], str | None]:
        out = subprocess.run(
            [sys.executable, "-c", SEED_CODE, str(BENCH_DIR), str(db_path), str(count), "lead" if lead else "-"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"seeding with {self.src} failed:\n{out.stderr[-2000:]}")
        workers, coordinators, lead_token = json.loads(out.stdout)
        return workers, coordinators, lead_token


class RuntimeProcesses(Processes):
    """bench_bridge's process list, with an environment (PYTHONPATH for --runtime-src)."""

    def start_env(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:
            process = subprocess.Popen(args, stdout=handle, stderr=handle, env=env)
        self.started.append(process)
        return process


# --- config: bench_bridge's file, then the scenario's keys -----------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def patch_config(path: Path, changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge `changes` into the TOML file (a value None removes the key); returns the result."""
    data = tomllib.loads(path.read_text())
    for table, values in changes.items():
        section = data.setdefault(table, {})
        for key, value in values.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value
        if not section:
            del data[table]
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return data


@dataclass
class Bridge:
    """One running bridge: its process, port, files and seeded tokens."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    db_path: Path
    log: Path
    config: dict[str, Any]
    wire: Wire
    lead_token: str | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker(self, index: int) -> str:
        return self.wire.worker_tokens[index]


async def start_bridge(
    name: str,
    workdir: Path,
    procs: RuntimeProcesses,
    runtime: Runtime,
    tls: tuple[str, str, str],
    ssl_ctx: ssl.SSLContext,
    conversations: int,
    changes: dict[str, dict[str, Any]],
    lead: bool = False,
) -> Bridge:
    home = workdir / name
    home.mkdir(mode=0o700)
    data = home / "data"
    data.mkdir(mode=0o700)
    port = free_port()
    config_path = write_config(home, data, port, tls)
    config = patch_config(config_path, changes)
    workers, coordinators, lead_token = runtime.seed(data / "bridge.db", conversations, lead)
    log = home / "server.log"
    command = [sys.executable, "-m", "s2_bridge.cli", "--log-level", "WARNING", "serve", "--config", str(config_path)]
    process = procs.start_env(command, log, runtime.env)
    await wait_healthy(process, port, ssl_ctx, log)
    shown = {table: values for table, values in config.items() if table in ("limits", "retention", "server")}
    say(f"bridge {name!r}: pid {process.pid} on https://{HOST}:{port}; config {json.dumps(shown)}")
    wire = Wire(port, port, workers, coordinators)
    return Bridge(name, process, port, data / "bridge.db", log, config, wire, lead_token)


@dataclass(frozen=True)
class Scenario:
    """What bench_hostile.py hands every scenario: its arguments, the work directory, the process
    list, the runtime under test and the bench PKI (ca, cert, key files) with a client context."""

    args: argparse.Namespace
    workdir: Path
    procs: RuntimeProcesses
    runtime: Runtime
    tls: tuple[str, str, str]
    ssl_ctx: ssl.SSLContext

    async def start_bridge(
        self, name: str, conversations: int, changes: dict[str, dict[str, Any]], lead: bool = False
    ) -> Bridge:
        return await start_bridge(
            name, self.workdir, self.procs, self.runtime, self.tls, self.ssl_ctx, conversations, changes, lead
        )


def limiter_changes(args: argparse.Namespace) -> dict[str, Any]:
    """bench_bridge raises the per-caller limiter to 1000/s; --default-rate-limits removes that."""
    return {"calls_per_s": None, "calls_burst": None} if args.default_rate_limits else {}


# --- open-loop heartbeats with their timestamps ----------------------------------------------------


@dataclass
class Beat:
    scheduled: float
    latency: float | None  # seconds; None: failed
    error: str | None = None


class Heartbeats:
    """One worker's lean heartbeats (POST /v1/heartbeat, what the keepalive sends) at a fixed
    arrival rate on a few keep-alive connections. Latency = completion - scheduled send time, so
    a wait for a free connection counts; a call slower than `timeout_s` is an error."""

    def __init__(
        self, port: int, ssl_ctx: ssl.SSLContext, request: Callable[[], bytes], rate: float, conns: int = 4
    ) -> None:
        self.port, self.ssl_ctx, self.request, self.rate = port, ssl_ctx, request, rate
        self.conns = conns
        self.timeout_s = 10.0
        self.beats: list[Beat] = []
        self.inflight: dict[int, float] = {}
        self.started = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        free: asyncio.Queue[Conn] = asyncio.Queue()
        for _ in range(self.conns):
            free.put_nowait(Conn(self.port, self.ssl_ctx))
        tasks: set[asyncio.Task[None]] = set()
        self.started = time.perf_counter()
        number = 0
        while not stop.is_set():
            due = self.started + number / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
            task = asyncio.create_task(self._one(number, due, free))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            number += 1
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.timeout_s + 1)
        while not free.empty():
            free.get_nowait().close()

    async def _one(self, number: int, due: float, free: asyncio.Queue[Conn]) -> None:
        self.inflight[number] = due
        conn = await free.get()
        try:
            status, body = await asyncio.wait_for(conn.request(self.request()), self.timeout_s)
        except TimeoutError:
            self.beats.append(Beat(due, None, f"no answer in {self.timeout_s:g} s"))
        except NETWORK_ERRORS as exc:
            self.beats.append(Beat(due, None, repr(exc)))
        else:
            if status == 200 and body_ok(body):
                self.beats.append(Beat(due, time.perf_counter() - due))
            else:
                self.beats.append(Beat(due, None, f"HTTP {status}: {body[:200]!r}"))
        finally:
            free.put_nowait(conn)
            self.inflight.pop(number, None)

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
        """Figures of the beats scheduled in [start, end); calls still in flight count with their
        age as a lower bound, so a stall shows in the percentiles instead of vanishing."""
        now = time.perf_counter()
        chosen = [b for b in self.beats if start <= b.scheduled < end]
        latencies = [b.latency for b in chosen if b.latency is not None]
        pending = [now - due for due in self.inflight.values() if start <= due < end]
        values = sorted(latencies + pending)
        errors = [b.error for b in chosen if b.error]
        return {
            "calls": len(chosen) + len(pending),
            "ok": len(latencies),
            "errors": len(errors),
            "unfinished": len(pending),
            "p50_ms": percentile(values, 0.5) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": (values[-1] * 1000) if values else float("nan"),
            "first_error": errors[0] if errors else None,
        }


def beats_text(s: dict[str, Any]) -> str:
    return (
        f"{s['ok']}/{s['calls']} ok, {s['errors']} errors, p50 {fmt(s['p50_ms'])} ms, p99 {fmt(s['p99_ms'])} ms,"
        f" max {fmt(s['max_ms'])} ms" + (f" ({s['unfinished']} unfinished)" if s["unfinished"] else "")
    )


class LoopLag:
    """How late this process's event loop wakes a 50 ms sleep. Every latency the bench measures
    includes this delay of its own, so a busy bench shows here and not as a slow server."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            self.samples.append((started, time.perf_counter() - started - 0.05))

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float]:
        values = sorted(lag for at, lag in self.samples if start <= at < end)
        return {
            "p50_ms": percentile(values, 0.5) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": (values[-1] * 1000) if values else float("nan"),
        }


def lag_text(s: dict[str, float]) -> str:
    return f"bench loop lag p50 {fmt(s['p50_ms'])} / p99 {fmt(s['p99_ms'])} / max {fmt(s['max_ms'])} ms"


@dataclass
class Cpu:
    """What bench_bridge.CpuMeter fills in."""

    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    others_cores: float = 0.0
    steal_cores: float = 0.0
    server_cpu_wait: float = 0.0
    seconds: float = 0.0

    def text(self) -> str:
        cores = self.server_cpu_s / self.seconds if self.seconds else float("nan")
        return (
            f"server CPU {self.server_cpu_s:.2f} s ({cores:.2f} cores), waited for a CPU {self.server_cpu_wait:.0%};"
            f" bench CPU {self.client_cpu_s:.2f} s; other processes {self.others_cores:.2f} cores,"
            f" steal {self.steal_cores:.2f}"
        )


def measure(meter: CpuMeter, started: float) -> Cpu:
    cpu = Cpu()
    meter.stop(cpu)  # type: ignore[arg-type]  # CpuMeter only sets the five attributes
    cpu.seconds = time.perf_counter() - started
    return cpu


def is_error_result(body: bytes) -> bool:
    return b'"isError":true' in body or b'"isError": true' in body
