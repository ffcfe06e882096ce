#!/usr/bin/env python3
"""Hostile load against a real TLS bridge on 127.0.0.1: slowloris beside parked waits, a fan-out
of 1,000 parked waits woken by one large message, and a message flood against the retention and
quota settings. Prints figures with the load average beside them; asserts nothing about timing.

Every scenario seeds its conversations through the runtime's own store API (bench_bridge.seed,
run by the runtime under test), starts `python -m s2_bridge.cli serve` over TLS (a CA made here)
as a subprocess, and keeps the tokens in this process's memory only. One scenario or several:

A. `--scenario slowloris`: `--slowloris` (1,100) TLS connections that send a partial request head
   and then one header line every `--trickle-s` (10) s, a share of them (`--silent-share`) that
   finish TLS and send nothing; each reconnects when the server drops it (`--no-reconnect`: not).
   Meanwhile one worker token parks as many `wait_for_messages` as `[limits]
   parked_waits_per_caller` allows (4), and a probe tries one more every `--probe-every` s (it must
   be refused with too_many_waits); a second worker heartbeats on the lean route at `--hb-rate`
   (5/s) for `--duration` (75) s. Reported: heartbeat p50/p99/max and errors, the slowloris
   connections kept open and dropped (counted by the client), server RSS and CPU.
B. `--scenario fanout`: `parked_waits_per_caller = 1000` in the bridge's config; `--waiters`
   (1,000) `wait_for_messages` of one worker token on as many keep-alive connections; one
   `--fanout-chars` (45,000) character message to that inbox; another worker heartbeats at
   `--fanout-hb-rate` (20/s). Reported per round (`--rounds`): the heartbeats from the send until
   the last waiter returned, the time until the last waiter had the message, RSS before/after
   (VmRSS, VmHWM), CPU. `--runtime-src DIR` runs the bridge (and the seeding) from another
   source tree, e.g. a `git worktree add /tmp/old REV`, for before/after figures.
C. `--scenario flood`: two bridges side by side, "limited" (retention and quota defaults, read
   messages kept `--read-retention-s` (60) s, swept every `--sweep-interval-s` (15) s) and
   "unlimited" (retention 100 years, quota 1 PiB). On each, two worker tokens send
   `--flood-chars` (49,000) character messages to a third worker as fast as they can
   (`--flood-senders` closed loops each) for `--flood-seconds` (600) s; the third reads them
   (check_messages with ack_through), and so does a lead token (`--no-lead`: none; a message a
   worker sent counts as read only once the lead's cursor passed it too); a fourth heartbeats at
   `--hb-rate`. Every `--report-every`
   (60) s: DB + WAL size, messages stored, refused (quota_exceeded), heartbeat p50/p99, load.
   `--no-limits-config` writes none of the retention/quota keys (a runtime without them).

The per-caller limiter is raised as in bench_bridge.py (`calls_per_s = calls_burst = 1000`) so it
never answers 429 (`--default-rate-limits` keeps the bridge's defaults). All other bridge settings
are defaults (`[server]` header and handshake deadlines 10 s, 4,096 connections).

Run from the repo root: .venv/bin/python files/s2-bridge/bench/bench_hostile.py --scenario slowloris
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import s2_bridge
import uvloop
from bench_bridge import (
    BENCH_DIR,
    HOST,
    Conn,
    CpuMeter,
    Processes,
    Wire,
    body_ok,
    cpu_seconds,
    fmt,
    free_port,
    machine_cpu,
    make_pki,
    memory_mb,
    open_pool,
    own_cpu,
    percentile,
    raise_fd_limit,
    runqueue_wait,
    start_py_spy,
    wait_healthy,
    wait_idle,
    write_config,
)

SCENARIOS = {"a": "slowloris", "b": "fanout", "c": "flood"} | {n: n for n in ("slowloris", "fanout", "flood")}
DAY_S = 86_400.0
WAIT_TIMEOUT_S = 50  # messaging.WAIT_MAX_S: a parked wait returns after this at the latest
UNLIMITED_DAYS = 36_500  # 100 years
UNLIMITED_BYTES = 1 << 50  # 1 PiB
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
    from s2_bridge import tokens
    from s2_bridge.store.sqlite import SQLiteStore
    lead, store, now = tokens.new_token("lead"), SQLiteStore(sys.argv[2]), time.time()
    store.replace_lead_token(tokens.token_hash(lead), lead_role="bench-lead", now=now, expires_at=now + 86400)
    store.close()
sys.stdout.write(json.dumps([workers, coordinators, lead]))
"""


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


# --- A. slowloris beside parked waits and real heartbeats -----------------------------------------


@dataclass
class SlowlorisCounts:
    slots: int = 0
    silent_slots: int = 0
    opened: int = 0  # TLS handshakes completed
    open_failed: int = 0
    open_now: int = 0
    dropped_eof: int = 0  # the server closed (EOF, or a reset seen as such)
    dropped_reset: int = 0
    answered_503: int = 0
    lifetimes: list[float] = field(default_factory=list)  # seconds from open to drop
    first_open_error: str | None = None


class Slowloris:
    def __init__(self, port: int, ssl_ctx: ssl.SSLContext, args: argparse.Namespace) -> None:
        self.port, self.ssl_ctx, self.args = port, ssl_ctx, args
        self.counts = SlowlorisCounts(slots=args.slowloris, silent_slots=round(args.slowloris * args.silent_share))
        self.open_since: dict[int, float] = {}
        self.ramped = asyncio.Event()
        self.first_opened = 0

    async def run(self, stop: asyncio.Event) -> None:
        ramp = self.args.ramp_s / max(1, self.counts.slots)
        tasks = [
            asyncio.create_task(self._slot(i, i < self.counts.silent_slots, i * ramp, stop))
            for i in range(self.counts.slots)
        ]
        await asyncio.gather(*tasks)

    async def _slot(self, slot: int, silent: bool, delay: float, stop: asyncio.Event) -> None:
        counts = self.counts
        await asyncio.sleep(delay)
        first = True
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, self.port, ssl=self.ssl_ctx, server_hostname=HOST), 20
                )
            except (TimeoutError, *NETWORK_ERRORS) as exc:
                counts.open_failed += 1
                counts.first_open_error = counts.first_open_error or repr(exc)
                await asyncio.sleep(1.0)
                continue
            opened = time.perf_counter()
            counts.opened += 1
            counts.open_now += 1
            self.open_since[slot] = opened
            if first:
                first = False
                self.first_opened += 1
                if self.first_opened == counts.slots:
                    self.ramped.set()
            reading = asyncio.create_task(reader.read(4096))
            dropped = False
            try:
                if not silent:
                    writer.write(f"POST /v1/heartbeat HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n".encode())
                line = 0
                while not stop.is_set():
                    stopping = asyncio.create_task(stop.wait())
                    done, _ = await asyncio.wait(
                        {reading, stopping}, timeout=self.args.trickle_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    stopping.cancel()
                    if reading in done:
                        dropped = True
                        try:
                            data = reading.result()
                        except NETWORK_ERRORS:
                            counts.dropped_reset += 1
                        else:
                            if data.startswith(b"HTTP/1.1 503"):
                                counts.answered_503 += 1
                            else:
                                counts.dropped_eof += 1
                        break
                    if stop.is_set():
                        break
                    if not silent:
                        line += 1
                        writer.write(f"X-Slow-{line}: {line}\r\n".encode())
                        with contextlib.suppress(TimeoutError, *NETWORK_ERRORS):
                            await asyncio.wait_for(writer.drain(), 5)
            finally:
                counts.open_now -= 1
                self.open_since.pop(slot, None)
                if dropped:
                    counts.lifetimes.append(time.perf_counter() - opened)
                reading.cancel()
                writer.close()
            if not self.args.reconnect:
                return


async def parked_wait_loop(
    bridge: Bridge, ssl_ctx: ssl.SSLContext, token: str, stop: asyncio.Event, tally: dict[str, int]
) -> None:
    """Hold one wait_for_messages parked, again and again (each returns after WAIT_TIMEOUT_S)."""
    conn = Conn(bridge.port, ssl_ctx)
    while not stop.is_set():
        request = asyncio.create_task(
            conn.request(bridge.wire.mcp_call(token, "wait_for_messages", {"timeout_s": WAIT_TIMEOUT_S}))
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({request, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not request.done():
            request.cancel()
            break
        try:
            status, body = request.result()
        except NETWORK_ERRORS:
            tally["wait_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        if status == 200 and not is_error_result(body):
            tally["wait_returns"] += 1
        else:
            tally["wait_errors"] += 1
            await asyncio.sleep(0.5)
    conn.close()


async def probe_one_more(bridge: Bridge, ssl_ctx: ssl.SSLContext, token: str, tally: dict[str, int]) -> None:
    """One wait past the cap: refused with too_many_waits (expected), or parked (counted)."""
    conn = Conn(bridge.port, ssl_ctx)
    try:
        status, body = await asyncio.wait_for(
            conn.request(bridge.wire.mcp_call(token, "wait_for_messages", {"timeout_s": WAIT_TIMEOUT_S})), 5
        )
    except TimeoutError:
        tally["probe_parked"] += 1  # still waiting after 5 s: it was not refused
    except NETWORK_ERRORS:
        tally["probe_errors"] += 1
    else:
        if status == 200 and b"too_many_waits" in body:
            tally["probe_refused_too_many_waits"] += 1
        else:
            tally["probe_other"] += 1
    finally:
        conn.close()


async def scenario_slowloris(
    args: argparse.Namespace, workdir: Path, procs: RuntimeProcesses, runtime: Runtime, pki: Any
) -> dict[str, Any]:
    tls, ssl_ctx = pki
    limits = limiter_changes(args)
    cap = args.parked_waits
    if cap != 4:
        limits["parked_waits_per_caller"] = cap
    bridge = await start_bridge("slowloris", workdir, procs, runtime, tls, ssl_ctx, 2, {"limits": limits})
    waiter, beater = bridge.worker(0), 1
    out: dict[str, Any] = {"config": bridge.config, "load_average": {"start": load_average()}}
    rss: dict[str, float] = {"start": memory_mb(bridge.pid)["VmRSS"]}
    stop, stop_attack = asyncio.Event(), asyncio.Event()
    tally = dict.fromkeys(
        (
            "wait_returns",
            "wait_errors",
            "probe_refused_too_many_waits",
            "probe_parked",
            "probe_other",
            "probe_errors",
        ),
        0,
    )
    waits = [asyncio.create_task(parked_wait_loop(bridge, ssl_ctx, waiter, stop, tally)) for _ in range(cap)]
    attack = Slowloris(bridge.port, ssl_ctx, args)
    attack_task = asyncio.create_task(attack.run(stop_attack))
    say(
        f"slowloris: opening {attack.counts.slots} TLS connections over {args.ramp_s:g} s"
        f" ({attack.counts.silent_slots} send nothing after TLS, the rest a partial head and one line"
        f" every {args.trickle_s:g} s; reconnect after a drop: {args.reconnect}); {cap} waits parked"
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(attack.ramped.wait(), args.ramp_s + 60)
    rss["attack ramped"] = memory_mb(bridge.pid)["VmRSS"]
    counts = attack.counts
    say(f"ramped: {counts.open_now} open, {counts.open_failed} failed opens; RSS {rss['attack ramped']:.1f} MB")
    out["load_average"]["window start"] = load_average()

    beats = Heartbeats(bridge.port, ssl_ctx, lambda: bridge.wire.lean(beater), args.hb_rate)
    meter, started = CpuMeter(bridge.pid), time.perf_counter()
    drops0 = attack.counts.dropped_eof + attack.counts.dropped_reset + attack.counts.answered_503
    opened0 = attack.counts.opened
    open_at_start = dict(attack.open_since)
    beat_task = asyncio.create_task(beats.run(stop))
    samples: list[int] = []
    probes: list[asyncio.Task[None]] = []
    next_probe = started + 2.0
    next_report = started + 15.0
    while time.perf_counter() - started < args.duration:
        await asyncio.sleep(1.0)
        samples.append(attack.counts.open_now)
        now = time.perf_counter()
        if now >= next_probe:
            probes.append(asyncio.create_task(probe_one_more(bridge, ssl_ctx, waiter, tally)))
            next_probe += args.probe_every
        if now >= next_report:
            next_report += 15.0
            say(
                f"  t={now - started:4.0f} s: heartbeats {beats_text(beats.summary())};"
                f" slowloris open {attack.counts.open_now}, dropped"
                f" {attack.counts.dropped_eof + attack.counts.dropped_reset + attack.counts.answered_503 - drops0}"
                f" in the window; RSS {memory_mb(bridge.pid)['VmRSS']:.1f} MB"
            )
    lag = args.lag.summary(started)
    survivors = sum(1 for slot, since in attack.open_since.items() if open_at_start.get(slot) == since)
    open_at_end = attack.counts.open_now
    stop.set()
    await beat_task
    cpu = measure(meter, started)
    await asyncio.gather(*probes, return_exceptions=True)
    stop_attack.set()
    await asyncio.gather(attack_task, *waits, return_exceptions=True)
    mem = memory_mb(bridge.pid)
    rss["end"], rss["peak (VmHWM)"] = mem["VmRSS"], mem["VmHWM"]
    out["load_average"]["end"] = load_average()
    c = attack.counts
    lifetimes = sorted(c.lifetimes)
    out.update(
        {
            "heartbeats": beats.summary(),
            "bench_loop_lag": lag,
            "heartbeat_rate": args.hb_rate,
            "duration_s": args.duration,
            "slowloris": {
                "slots": c.slots,
                "silent_slots": c.silent_slots,
                "reconnect": args.reconnect,
                "trickle_s": args.trickle_s,
                "tls_opened_total": c.opened,
                "tls_opened_in_window": c.opened - opened0,
                "open_failed": c.open_failed,
                "first_open_error": c.first_open_error,
                "dropped_in_window": c.dropped_eof + c.dropped_reset + c.answered_503 - drops0,
                "dropped_total": {"eof": c.dropped_eof, "reset": c.dropped_reset, "503": c.answered_503},
                "open_in_window": {
                    "min": min(samples, default=0),
                    "median": statistics.median(samples) if samples else 0,
                    "max": max(samples, default=0),
                },
                "open_at_end": open_at_end,
                "open_the_whole_window": survivors,
                "lifetime_s": {
                    "p50": percentile(lifetimes, 0.5),
                    "min": lifetimes[0] if lifetimes else float("nan"),
                    "max": lifetimes[-1] if lifetimes else float("nan"),
                },
            },
            "parked_waits": {"cap": cap, **tally},
            "server_rss_mb": rss,
            "server_cpu": asdict(cpu),
        }
    )
    hb = out["heartbeats"]
    say(f"heartbeats @ {args.hb_rate:g}/s for {args.duration:g} s: {beats_text(hb)}; {lag_text(lag)}")
    if hb["first_error"]:
        print(f"  first heartbeat error: {hb['first_error']}")
    say(
        f"slowloris: {c.slots} slots, {c.opened - opened0} TLS connections opened in the window,"
        f" {out['slowloris']['dropped_in_window']} dropped by the server in it (lifetime p50"
        f" {fmt(out['slowloris']['lifetime_s']['p50'])} s, max {fmt(out['slowloris']['lifetime_s']['max'])} s),"
        f" open: min {out['slowloris']['open_in_window']['min']} / median"
        f" {out['slowloris']['open_in_window']['median']} / max {out['slowloris']['open_in_window']['max']},"
        f" {open_at_end} at the end, {survivors} open the whole window; {c.open_failed} opens failed"
    )
    say(
        f"parked waits: {cap} held ({tally['wait_returns']} timed out and re-parked, {tally['wait_errors']} errors);"
        f" one more: {tally['probe_refused_too_many_waits']} refused with too_many_waits,"
        f" {tally['probe_parked']} parked, {tally['probe_other']} other answers, {tally['probe_errors']} errors"
    )
    say(f"server: RSS {' -> '.join(f'{k} {v:.1f}' for k, v in rss.items())} MB; {cpu.text()}")
    return out


# --- B. fan-out: 1,000 waits on one inbox, one large message ----------------------------------------


async def fanout_round(
    args: argparse.Namespace,
    bridge: Bridge,
    ssl_ctx: ssl.SSLContext,
    conns: list[Conn],
    after_id: int,
    number: int,
) -> dict[str, Any]:
    inbox_token, beater = bridge.worker(0), 1
    marker = f"fan-out round {number} "
    body = (marker + "payload text for every parked waiter; " * (args.fanout_chars // 30 + 1))[: args.fanout_chars]
    arrivals: dict[int, float] = {}
    sizes: list[int] = []
    problems: dict[str, int] = {"early": 0, "error": 0, "timed_out": 0, "other": 0}
    sent_at = 0.0
    first_problem: list[str] = []

    async def wait_one(index: int, conn: Conn) -> None:
        arguments: dict[str, Any] = {"timeout_s": WAIT_TIMEOUT_S, "after_id": after_id}
        try:
            status, answer = await conn.request(bridge.wire.mcp_call(inbox_token, "wait_for_messages", arguments))
        except NETWORK_ERRORS as exc:
            problems["error"] += 1
            first_problem.append(repr(exc))
            return
        arrived = time.perf_counter()
        if not sent_at:
            problems["early"] += 1
            first_problem.append(f"returned before the send: {answer[:300]!r}")
        elif status == 200 and not is_error_result(answer) and marker.encode() in answer:
            arrivals[index] = arrived
            sizes.append(len(answer))
        elif b'"timed_out":true' in answer or b'"timed_out": true' in answer:
            problems["timed_out"] += 1
        else:
            problems["other"] += 1
            first_problem.append(f"HTTP {status}: {answer[:300]!r}")

    rss_idle = memory_mb(bridge.pid)["VmRSS"]
    waits = [asyncio.create_task(wait_one(i, c)) for i, c in enumerate(conns)]
    await asyncio.sleep(args.settle)
    await wait_idle(bridge.pid)
    parked = memory_mb(bridge.pid)
    stop = asyncio.Event()
    beats = Heartbeats(bridge.port, ssl_ctx, lambda: bridge.wire.lean(beater), args.fanout_hb_rate)
    beat_task = asyncio.create_task(beats.run(stop))
    sender = Conn(bridge.port, ssl_ctx)
    await sender.open()
    await asyncio.sleep(args.baseline_s)
    profiler = start_py_spy(args.py_spy, bridge.pid, args.py_spy_s, f"fanout-round-{number}")
    meter = CpuMeter(bridge.pid)
    coordinator = bridge.wire.coordinator_tokens[0]
    request = bridge.wire.mcp_call(coordinator, "send_to_partner", {"message": body})
    sent_at = time.perf_counter()
    status, answer = await sender.request(request)
    send_ms = (time.perf_counter() - sent_at) * 1000
    sender.close()
    if status != 200 or is_error_result(answer):
        raise RuntimeError(f"the fan-out send failed: HTTP {status} {answer[:300]!r}")
    message_id = int(json.loads(answer)["result"]["structuredContent"]["message_id"])
    _, late = await asyncio.wait(waits, timeout=WAIT_TIMEOUT_S + 10)
    for task in late:
        task.cancel()
    last = max(arrivals.values(), default=float("nan"))
    cpu = measure(meter, sent_at)
    await asyncio.sleep(0.5)
    stop.set()
    await beat_task
    if profiler is not None:
        await asyncio.to_thread(profiler.wait, args.py_spy_s + 30)
    after = memory_mb(bridge.pid)
    delays = sorted(t - sent_at for t in arrivals.values())
    end = last if arrivals else sent_at + 1
    window = beats.summary(sent_at, end)
    window_ms = [b.latency * 1000 for b in beats.beats if sent_at <= b.scheduled < end and b.latency is not None]
    lag = args.lag.summary(sent_at, end)
    result = {
        "round": number,
        "waiters": len(conns),
        "delivered": len(arrivals),
        "problems": problems,
        "first_problem": first_problem[0] if first_problem else None,
        "message_chars": len(body),
        "response_body_bytes_median": statistics.median(sizes) if sizes else 0,
        "send_ms": send_ms,
        "first_waiter_ms": delays[0] * 1000 if delays else float("nan"),
        "p50_waiter_ms": percentile(delays, 0.5) * 1000,
        "last_waiter_ms": delays[-1] * 1000 if delays else float("nan"),
        "heartbeats_send_to_last": window,
        "heartbeat_latencies_send_to_last_ms": window_ms,
        "bench_loop_lag_send_to_last": lag,
        "heartbeats_before_send": beats.summary(0.0, sent_at),
        "heartbeats_whole_round": beats.summary(),
        "rss_mb": {
            "idle": rss_idle,
            "parked": parked["VmRSS"],
            "after": after["VmRSS"],
            "VmHWM after": after["VmHWM"],
        },
        "cpu_send_to_last": asdict(cpu),
        "load_average": load_average(),
        "message_id": message_id,
    }
    say(
        f"round {number}: {len(arrivals)}/{len(conns)} waiters got the {len(body):,}-char message;"
        f" first {fmt(result['first_waiter_ms'])} ms, p50 {fmt(result['p50_waiter_ms'])} ms,"
        f" last {fmt(result['last_waiter_ms'])} ms after the send (send call {send_ms:.1f} ms;"
        f" each answer {result['response_body_bytes_median']:,.0f} bytes of body);"
        f" problems {problems}"
    )
    say(
        f"  heartbeats @ {args.fanout_hb_rate:g}/s, send -> last waiter: {beats_text(window)}; {lag_text(lag)};"
        f" before the send: {beats_text(result['heartbeats_before_send'])}"
    )
    say(
        f"  RSS idle {rss_idle:.1f} -> parked {parked['VmRSS']:.1f} -> after {after['VmRSS']:.1f} MB,"
        f" VmHWM {after['VmHWM']:.1f} MB; send -> last waiter: {cpu.text()}"
    )
    if first_problem:
        print(f"  first problem: {first_problem[0]}", flush=True)
    return result


async def scenario_fanout(
    args: argparse.Namespace, workdir: Path, procs: RuntimeProcesses, runtime: Runtime, pki: Any
) -> dict[str, Any]:
    tls, ssl_ctx = pki
    limits = limiter_changes(args)
    notes = []
    if runtime.supports("parked_waits_per_caller"):
        limits["parked_waits_per_caller"] = args.waiters
        notes.append(f"[limits] parked_waits_per_caller = {args.waiters} written to the bench's bridge config")
    else:
        notes.append("this runtime has no parked_waits_per_caller (no cap on parked waits): not written")
    for note in notes:
        say(f"fan-out: {note}")
    bridge = await start_bridge("fanout", workdir, procs, runtime, tls, ssl_ctx, 2, {"limits": limits})
    rss_start = memory_mb(bridge.pid)
    conns = await open_pool(bridge.port, ssl_ctx, args.waiters)
    say(f"fan-out: {len(conns)} keep-alive TLS connections open; RSS {memory_mb(bridge.pid)['VmRSS']:.1f} MB")
    rounds = []
    after_id = 0
    for number in range(1, args.rounds + 1):
        result = await fanout_round(args, bridge, ssl_ctx, conns, after_id, number)
        after_id = result["message_id"]
        rounds.append(result)
        await wait_idle(bridge.pid)
    for conn in conns:
        conn.close()
    mem = memory_mb(bridge.pid)
    pooled = sorted(x for r in rounds for x in r["heartbeat_latencies_send_to_last_ms"])
    errors = sum(r["heartbeats_send_to_last"]["errors"] for r in rounds)
    lasts = [r["last_waiter_ms"] for r in rounds]
    result = {
        "notes": notes,
        "config": bridge.config,
        "waiters": args.waiters,
        "rss_mb": {"start": rss_start["VmRSS"], "end": mem["VmRSS"], "VmHWM end": mem["VmHWM"]},
        "rounds": rounds,
        "pooled_send_to_last": {
            "heartbeats": len(pooled),
            "errors": errors,
            "p50_ms": percentile(pooled, 0.5),
            "p99_ms": percentile(pooled, 0.99),
            "max_ms": pooled[-1] if pooled else float("nan"),
            "last_waiter_median_ms": statistics.median(lasts) if lasts else float("nan"),
        },
    }
    p = result["pooled_send_to_last"]
    say(
        f"fan-out, {len(rounds)} rounds pooled: heartbeats from the send to the last waiter: {p['heartbeats']},"
        f" {errors} errors, p50 {fmt(p['p50_ms'])} ms, p99 {fmt(p['p99_ms'])} ms, max {fmt(p['max_ms'])} ms;"
        f" last waiter (median of rounds) {fmt(p['last_waiter_median_ms'])} ms"
    )
    return result


# --- C. flood: two bridges, with and without retention and quota ------------------------------------


@dataclass
class FloodCounts:
    stored: int = 0
    stored_bytes: int = 0
    quota_refused: int = 0
    rate_limited: int = 0
    other_errors: int = 0
    read: int = 0  # by the recipient worker
    lead_read: int = 0  # by the lead (every worker's messages)
    read_errors: int = 0
    first_error: str | None = None


class Flood:
    """On one bridge: workers 0 and 1 send to worker 2 as fast as they can, worker 2 reads with
    ack_through (and so does the lead, unless --no-lead: a message a worker sent counts as read
    only once the lead's cursor is past it too), worker 3 heartbeats."""

    def __init__(self, args: argparse.Namespace, bridge: Bridge, ssl_ctx: ssl.SSLContext) -> None:
        self.args, self.bridge, self.ssl_ctx = args, bridge, ssl_ctx
        self.counts = FloodCounts()
        self.beats = Heartbeats(bridge.port, ssl_ctx, lambda: bridge.wire.lean(3), args.hb_rate)
        self.filler = ("flood payload, fifty kilobytes of it; " * (args.flood_chars // 30 + 1))[: args.flood_chars]
        self.snapshots: list[dict[str, Any]] = []
        self.cpu_mark = self.cpu_now()
        self.beat_mark = 0.0
        self.last: dict[str, int] = {}

    async def send_loop(self, sender: int, lane: int, stop: asyncio.Event) -> None:
        conn = Conn(self.bridge.port, self.ssl_ctx)
        token, counts, seq = self.bridge.worker(sender), self.counts, 0
        to = "w000002"  # the reader: bench_bridge.seed names worker i w{i:06d}
        while not stop.is_set():
            seq += 1
            text = f"{sender}/{lane}/{seq} " + self.filler[: self.args.flood_chars - 24]
            try:
                status, body = await conn.request(
                    self.bridge.wire.mcp_call(token, "send_to_partner", {"message": text, "to": to})
                )
            except NETWORK_ERRORS as exc:
                counts.other_errors += 1
                counts.first_error = counts.first_error or repr(exc)
                await asyncio.sleep(0.2)
                continue
            if status == 200 and not is_error_result(body):
                counts.stored += 1
                counts.stored_bytes += len(text.encode())
            elif b"quota_exceeded" in body:
                counts.quota_refused += 1
                if self.args.refused_pause_s:
                    await asyncio.sleep(self.args.refused_pause_s)
            elif status == 429:
                counts.rate_limited += 1
                await asyncio.sleep(0.05)
            else:
                counts.other_errors += 1
                counts.first_error = counts.first_error or f"HTTP {status}: {body[:300]!r}"
                await asyncio.sleep(0.2)
        conn.close()

    async def read_loop(self, token: str, counter: str, stop: asyncio.Event) -> None:
        conn = Conn(self.bridge.port, self.ssl_ctx)
        counts, ack = self.counts, None
        while not stop.is_set():
            arguments: dict[str, Any] = {"limit": self.args.read_batch}
            if ack is not None:
                arguments["ack_through"] = ack
            try:
                status, body = await conn.request(self.bridge.wire.mcp_call(token, "check_messages", arguments))
                content = json.loads(body)["result"]["structuredContent"] if status == 200 else None
            except (*NETWORK_ERRORS, KeyError, TypeError) as exc:
                counts.read_errors += 1
                counts.first_error = counts.first_error or f"check_messages: {exc!r}"
                await asyncio.sleep(0.5)
                continue
            if not isinstance(content, dict):
                counts.read_errors += 1
                counts.first_error = counts.first_error or f"check_messages: HTTP {status}: {body[:300]!r}"
                await asyncio.sleep(0.5)
                continue
            messages = content.get("messages") or []
            if messages:
                ack = max(int(m["id"]) for m in messages)
                setattr(counts, counter, getattr(counts, counter) + len(messages))
            else:
                await asyncio.sleep(0.2)
        conn.close()

    def db_figures(self) -> dict[str, Any]:
        db = self.bridge.db_path
        sizes = {}
        for suffix in ("", "-wal"):
            path = Path(f"{db}{suffix}")
            sizes["db_mb" if not suffix else "wal_mb"] = path.stat().st_size / 1e6 if path.exists() else 0.0
        rows: dict[str, Any] = {}
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                rows["message_rows"] = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                rows["audit_rows"] = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                rows["free_mb"] = conn.execute("PRAGMA freelist_count").fetchone()[0] * page / 1e6
        except sqlite3.Error as exc:
            rows["db_error"] = str(exc)
        return sizes | rows

    def cpu_now(self) -> tuple[float, float, float, float, float]:
        """(time, server CPU s, bench CPU s, server run-queue wait s, machine busy CPU s)"""
        pid = self.bridge.pid
        return time.perf_counter(), cpu_seconds(pid), own_cpu(), runqueue_wait(pid), machine_cpu()[0]

    async def snapshot(self, started: float, final: bool = False) -> dict[str, Any]:
        figures = await asyncio.to_thread(self.db_figures)
        mark = self.cpu_mark
        self.cpu_mark = current = self.cpu_now()
        now = current[0]
        dt = max(1e-9, now - mark[0])
        cores = [(current[i] - mark[i]) / dt for i in range(1, 5)]
        beats = self.beats.summary(self.beat_mark, now)
        lag = self.args.lag.summary(self.beat_mark, now)
        self.beat_mark = now
        c = self.counts
        totals = {
            "stored": c.stored,
            "quota_refused": c.quota_refused,
            "rate_limited": c.rate_limited,
            "other_errors": c.other_errors,
            "read": c.read,
            "lead_read": c.lead_read,
        }
        delta = {k: v - self.last.get(k, 0) for k, v in totals.items()}
        self.last = totals
        snap = {
            "t_s": round(now - started, 1),
            "final": final,
            **figures,
            "totals": totals,
            "interval": delta,
            "stored_mb_total": c.stored_bytes / 1e6,
            "heartbeats": beats,
            "server_cores": cores[0],
            "bench_cores": cores[1],
            "server_cpu_wait": cores[2],  # share of the interval the server was runnable, not running
            "machine_busy_cores": cores[3],  # every process: user + nice + system
            "bench_loop_lag": lag,
            "rss_mb": memory_mb(self.bridge.pid)["VmRSS"],
            "load_average": load_average(),
        }
        self.snapshots.append(snap)
        return snap


def snapshot_line(name: str, s: dict[str, Any]) -> str:
    hb = s["heartbeats"]
    rows = s.get("message_rows", "?")
    return (
        f"| {s['t_s']:.0f} | {name} | {s['db_mb']:.1f} + {s['wal_mb']:.1f} | {s.get('free_mb', float('nan')):.1f}"
        f" | {rows} | {s['totals']['stored']} (+{s['interval']['stored']}) | {s['totals']['quota_refused']}"
        f" (+{s['interval']['quota_refused']}) | {s['totals']['read']} / {s['totals']['lead_read']}"
        f" | {s['totals']['other_errors']}"
        f" | {fmt(hb['p50_ms'])} / {fmt(hb['p99_ms'])} / {fmt(hb['max_ms'])} ({hb['errors']} err)"
        f" | {s['server_cores']:.2f}, {s['server_cpu_wait']:.0%} | {s['machine_busy_cores']:.2f}"
        f" | {s['bench_cores']:.2f} / {fmt(s['bench_loop_lag']['p99_ms'])}"
        f" | {s['rss_mb']:.0f} | {' '.join(f'{x:.2f}' for x in s['load_average'])} |"
    )


SNAPSHOT_HEAD = (
    "| t s | bridge | DB + WAL MB | free pages MB | message rows | stored (+interval) | quota_exceeded"
    " (+interval) | read by worker / lead | other errors | heartbeats p50 / p99 / max ms | server cores, waited"
    " | machine busy cores | bench cores / loop lag p99 ms | RSS MB | load 1/5/15 |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


async def scenario_flood(
    args: argparse.Namespace, workdir: Path, procs: RuntimeProcesses, runtime: Runtime, pki: Any
) -> dict[str, Any]:
    tls, ssl_ctx = pki
    wanted = ("read_messages_days", "sweep_interval_s", "stored_bytes_per_sender")
    missing = [key for key in wanted if not runtime.supports(key)]
    notes = []
    if args.no_limits_config:
        notes.append("--no-limits-config: no [retention] table and no stored_bytes_per_sender on either bridge")
        limited: dict[str, dict[str, Any]] = {"limits": limiter_changes(args)}
        unlimited: dict[str, dict[str, Any]] = {"limits": limiter_changes(args)}
    elif missing:
        raise SystemExit(
            f"this runtime ({runtime.src}) has no {', '.join(missing)} in its config: the bridge would refuse"
            " the keys; wait for them or pass --no-limits-config"
        )
    else:
        quota = {} if args.quota_bytes is None else {"stored_bytes_per_sender": args.quota_bytes}
        limited = {
            "limits": limiter_changes(args) | quota,
            "retention": {
                "read_messages_days": args.read_retention_s / DAY_S,
                "sweep_interval_s": args.sweep_interval_s,
            },
        }
        unlimited = {
            "limits": limiter_changes(args) | {"stored_bytes_per_sender": UNLIMITED_BYTES},
            "retention": {
                "read_messages_days": UNLIMITED_DAYS,
                "unread_messages_days": UNLIMITED_DAYS,
                "audit_days": UNLIMITED_DAYS,
            },
        }
        notes.append(
            f"limited: read messages kept {args.read_retention_s:g} s, swept every {args.sweep_interval_s:g} s,"
            + ("" if args.quota_bytes is None else f" stored_bytes_per_sender = {args.quota_bytes:,},")
            + " the other retention and quota keys at their defaults; unlimited: retention 100 years, quota 1 PiB"
        )
    notes.append(
        "a lead token reads with ack_through too"
        if args.lead
        else "--no-lead: nobody moves the lead's cursor, so no worker-sent message ever counts as read"
    )
    for note in notes:
        say(f"flood: {note}")
    bridges = [
        await start_bridge("limited", workdir, procs, runtime, tls, ssl_ctx, 4, limited, lead=args.lead),
        await start_bridge("unlimited", workdir, procs, runtime, tls, ssl_ctx, 4, unlimited, lead=args.lead),
    ]
    floods = [Flood(args, bridge, ssl_ctx) for bridge in bridges]
    stop_send, stop_all = asyncio.Event(), asyncio.Event()
    tasks = []
    for flood in floods:
        tasks += [
            asyncio.create_task(flood.send_loop(sender, lane, stop_send))
            for sender in (0, 1)
            for lane in range(args.flood_senders)
        ]
        tasks += [
            asyncio.create_task(flood.read_loop(flood.bridge.worker(2), "read", stop_all)),
            asyncio.create_task(flood.beats.run(stop_all)),
        ]
        if flood.bridge.lead_token:
            tasks.append(asyncio.create_task(flood.read_loop(flood.bridge.lead_token, "lead_read", stop_all)))
    started = time.perf_counter()
    for flood in floods:
        flood.cpu_mark = flood.cpu_now()
        flood.beat_mark = started
    say(
        f"flood: 2 senders x {args.flood_senders} closed loops of {args.flood_chars:,}-char messages per bridge"
        f" for {args.flood_seconds:g} s, a reader (check_messages, limit {args.read_batch}, ack_through), heartbeats"
        f" @ {args.hb_rate:g}/s; then {args.tail_s:g} s without senders"
    )
    print(SNAPSHOT_HEAD, flush=True)
    end_send = started + args.flood_seconds
    end_all = end_send + args.tail_s
    next_report = started + args.report_every
    while time.perf_counter() < end_all:
        now = time.perf_counter()
        if now >= end_send and not stop_send.is_set():
            stop_send.set()
        await asyncio.sleep(max(0.1, min(next_report, end_send if not stop_send.is_set() else end_all) - now))
        if time.perf_counter() >= next_report:
            next_report += args.report_every
            for flood in floods:
                print(snapshot_line(flood.bridge.name, await flood.snapshot(started)), flush=True)
    stop_send.set()
    stop_all.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    out: dict[str, Any] = {"notes": notes, "bridges": {}}
    for flood in floods:
        final = await flood.snapshot(started, final=True)
        print(snapshot_line(flood.bridge.name + " (final)", final), flush=True)
        out["bridges"][flood.bridge.name] = {
            "config": flood.bridge.config,
            "counts": asdict(flood.counts),
            "heartbeats_whole_run": flood.beats.summary(),
            "snapshots": flood.snapshots,
            "rss_mb": memory_mb(flood.bridge.pid),
        }
        if flood.counts.first_error:
            print(f"  {flood.bridge.name}: first error: {flood.counts.first_error}", flush=True)
    for name, data in out["bridges"].items():
        say(f"{name}: heartbeats over the whole run: {beats_text(data['heartbeats_whole_run'])}")
    return out


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenario",
        required=True,
        help="slowloris (A), fanout (B), flood (C), or a comma list of them",
    )
    parser.add_argument("--runtime-src", metavar="DIR", help="run the bridge from this source tree (DIR/src)")
    parser.add_argument("--json", help="write the figures here (default /tmp/bench-hostile-<UTC time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (it holds the admin tokens)")
    parser.add_argument("--default-rate-limits", action="store_true", help="keep [limits] calls_per_s/burst defaults")
    parser.add_argument("--hb-rate", type=float, default=5.0, help="heartbeats/s in slowloris and flood (5)")
    a = parser.add_argument_group("A. slowloris")
    a.add_argument("--slowloris", type=int, default=1100, help="attacking connections (1,100)")
    a.add_argument("--silent-share", type=float, default=0.1, help="share that sends nothing after TLS (0.1)")
    a.add_argument("--trickle-s", type=float, default=10.0, help="one header line every this many s (10)")
    a.add_argument("--ramp-s", type=float, default=10.0, help="open the attackers over this many s (10)")
    a.add_argument("--no-reconnect", dest="reconnect", action="store_false", help="do not reopen a dropped one")
    a.add_argument("--duration", type=float, default=75.0, help="heartbeat window, s (75)")
    a.add_argument("--parked-waits", type=int, default=4, help="the cap to park up to (4 = the default)")
    a.add_argument("--probe-every", type=float, default=5.0, help="one wait past the cap every this many s (5)")
    b = parser.add_argument_group("B. fan-out")
    b.add_argument("--waiters", type=int, default=1000, help="parked waits on one inbox (1,000)")
    b.add_argument("--fanout-chars", type=int, default=45_000, help="size of the one message (45,000)")
    b.add_argument("--fanout-hb-rate", type=float, default=20.0, help="heartbeats/s (20)")
    b.add_argument("--rounds", type=int, default=5, help="fan-outs in one run (5)")
    b.add_argument("--settle", type=float, default=2.0, help="s for the waits to park (2)")
    b.add_argument("--baseline-s", type=float, default=3.0, help="s of heartbeats before the send (3)")
    b.add_argument("--py-spy", metavar="DIR", help="profile the server from each send into DIR (raw stacks)")
    b.add_argument("--py-spy-s", type=float, default=5.0, help="seconds py-spy records from the send (5)")
    c = parser.add_argument_group("C. flood")
    c.add_argument("--flood-seconds", type=float, default=600.0, help="s of sending (600)")
    c.add_argument("--flood-senders", type=int, default=3, help="closed loops per sender token (3)")
    c.add_argument("--flood-chars", type=int, default=49_000, help="characters per message (49,000; max 50,000)")
    c.add_argument("--read-batch", type=int, default=50, help="check_messages limit of the reader (50)")
    c.add_argument("--report-every", type=float, default=60.0, help="s between figures (60)")
    c.add_argument("--tail-s", type=float, default=30.0, help="s after the senders stop (30)")
    c.add_argument("--read-retention-s", type=float, default=60.0, help="limited bridge: read messages kept (60)")
    c.add_argument("--sweep-interval-s", type=float, default=15.0, help="limited bridge: sweep interval (15)")
    c.add_argument("--refused-pause-s", type=float, default=0.0, help="a sender's pause after quota_exceeded (0)")
    c.add_argument("--no-limits-config", action="store_true", help="write no retention/quota keys")
    c.add_argument("--quota-bytes", type=int, help="limited bridge: stored_bytes_per_sender (default: the default)")
    c.add_argument("--no-lead", dest="lead", action="store_false", help="no lead token reading with ack")
    args = parser.parse_args(argv)
    args.scenarios = []
    for name in args.scenario.split(","):
        key = name.strip().lower()
        if key not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}: use slowloris, fanout or flood")
        args.scenarios.append(SCENARIOS[key])
    return args


async def run(args: argparse.Namespace, report: dict[str, Any], workdir: Path, procs: RuntimeProcesses) -> None:
    runtime = Runtime.find(args.runtime_src)
    report["runtime"] = runtime.describe()
    say(f"runtime: {json.dumps(report['runtime'])}")
    tls = make_pki(workdir)
    pki = (tls, ssl.create_default_context(cafile=tls[0]))
    scenarios = {"slowloris": scenario_slowloris, "fanout": scenario_fanout, "flood": scenario_flood}
    args.lag, stop = LoopLag(), asyncio.Event()
    lag_task = asyncio.create_task(args.lag.run(stop))
    try:
        for name in args.scenarios:
            say(f"=== scenario {name} ===")
            report["scenarios"][name] = await scenarios[name](args, workdir, procs, runtime, pki)
            report["load_average"][f"after {name}"] = load_average()
    finally:
        stop.set()
        await lag_task


def print_summary(report: dict[str, Any]) -> None:
    print("\n=== results ===")
    print(f"command: {report['command']}")
    print(f"date: {report['date']}; bench tree {report['bench_commit']}; runtime {json.dumps(report.get('runtime'))}")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in report["load_average"].items()))
    a = report["scenarios"].get("slowloris")
    if a:
        hb, sl, pw = a["heartbeats"], a["slowloris"], a["parked_waits"]
        print("\nA. slowloris + parked waits vs real heartbeats (goal: 0 errors, p99 < 250 ms)")
        print(
            "| heartbeats/s | calls | errors | p50 ms | p99 ms | max ms | bench loop lag p99 ms"
            " | slowloris open min/median/max"
            " | dropped in window | lifetime p50 s | one more wait: refused / tried | server RSS start -> end MB"
            " | server CPU | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        cpu = a["server_cpu"]
        tried = pw["probe_refused_too_many_waits"] + pw["probe_parked"] + pw["probe_other"] + pw["probe_errors"]
        print(
            f"| {a['heartbeat_rate']:g} | {hb['calls']} | {hb['errors']} | {fmt(hb['p50_ms'])} | {fmt(hb['p99_ms'])}"
            f" | {fmt(hb['max_ms'])} | {fmt(a['bench_loop_lag']['p99_ms'])}"
            f" | {sl['open_in_window']['min']}/{sl['open_in_window']['median']}"
            f"/{sl['open_in_window']['max']} | {sl['dropped_in_window']} | {fmt(sl['lifetime_s']['p50'])}"
            f" | {pw['probe_refused_too_many_waits']} / {tried} | {a['server_rss_mb']['start']:.1f} ->"
            f" {a['server_rss_mb']['end']:.1f} | {cpu['server_cpu_s']:.1f} s, waited {cpu['server_cpu_wait']:.0%}"
            f" | {a['load_average']['window start']} -> {a['load_average']['end']} |"
        )
    b = report["scenarios"].get("fanout")
    if b:
        print(f"\nB. fan-out: {b['waiters']} waits on one inbox, one message (goal: heartbeat p99 < 100 ms)")
        for note in b["notes"]:
            print(f"   {note}")
        print(
            "| round | delivered | last waiter ms | heartbeats send->last: n, p50 / p99 / max ms, errors"
            " | bench loop lag max ms | before the send p99 ms | server CPU send->last s, waited"
            " | RSS parked -> after MB | VmHWM MB | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in b["rounds"]:
            hb = r["heartbeats_send_to_last"]
            print(
                f"| {r['round']} | {r['delivered']}/{r['waiters']} | {fmt(r['last_waiter_ms'])} | {hb['calls']},"
                f" {fmt(hb['p50_ms'])} / {fmt(hb['p99_ms'])} / {fmt(hb['max_ms'])}, {hb['errors']}"
                f" | {fmt(r['bench_loop_lag_send_to_last']['max_ms'])} | {fmt(r['heartbeats_before_send']['p99_ms'])}"
                f" | {r['cpu_send_to_last']['server_cpu_s']:.2f}, {r['cpu_send_to_last']['server_cpu_wait']:.0%}"
                f" | {r['rss_mb']['parked']:.1f} -> {r['rss_mb']['after']:.1f} | {r['rss_mb']['VmHWM after']:.1f}"
                f" | {r['load_average']} |"
            )
        p = b["pooled_send_to_last"]
        print(
            f"rounds pooled, heartbeats from the send to the last waiter: {p['heartbeats']}, {p['errors']} errors,"
            f" p50 {fmt(p['p50_ms'])} / p99 {fmt(p['p99_ms'])} / max {fmt(p['max_ms'])} ms;"
            f" last waiter (median of the rounds) {fmt(p['last_waiter_median_ms'])} ms;"
            f" server RSS start {b['rss_mb']['start']:.1f}, end {b['rss_mb']['end']:.1f}, VmHWM"
            f" {b['rss_mb']['VmHWM end']:.1f} MB"
        )
    c = report["scenarios"].get("flood")
    if c:
        print("\nC. flood")
        for note in c["notes"]:
            print(f"   {note}")
        print(SNAPSHOT_HEAD)
        for name, data in c["bridges"].items():
            for snap in data["snapshots"]:
                print(snapshot_line(name + (" (final)" if snap["final"] else ""), snap))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_hostile.py", *argv])
    stamp = datetime.datetime.now(datetime.UTC)
    bench_commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report: dict[str, Any] = {
        "command": command,
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "bench_commit": bench_commit,
        "cores": os.cpu_count(),
        "load_average": {"start": load_average()},
        "scenarios": {},
    }
    print(f"command: {command}", flush=True)
    raise_fd_limit(args.slowloris + args.waiters + 4096)  # the bridge inherits it too
    workdir = Path(tempfile.mkdtemp(prefix="s2-bench-hostile-"))  # 0700
    procs = RuntimeProcesses()
    try:
        uvloop.run(run(args, report, workdir, procs))
    finally:
        procs.stop()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["load_average"]["end"] = load_average()
    print_summary(report)
    out = Path(args.json or f"/tmp/bench-hostile-{stamp.strftime('%Y%m%dT%H%M%S')}.json")
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
