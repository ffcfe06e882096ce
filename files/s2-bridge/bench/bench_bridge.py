#!/usr/bin/env python3
"""Load benchmark of the s2-bridge server: heartbeats at fixed arrival rates, closed-loop
ceilings against a bare endpoint, long-poll delivery, and the server's memory.

It prints figures; it asserts nothing about timing. Everything runs on 127.0.0.1.

What it does, in order:
1. makes a work dir (0700) with a bridge config ([limits] raised so the per-caller limiter never
   triggers), seeds N conversations straight through the store API, and starts the real server
   (`python -m s2_bridge.cli serve`) and the bare reference app (bare_app.py) as subprocesses;
   the tokens live in this process's memory only (the database holds their hashes);
2. "register": every worker heartbeats once (lean route, closed loop), so the server has seen
   all N callers before its memory is read;
3. open loop: for each rate, for D seconds, requests leave at exact arrival times (i / rate) on
   a pool of keep-alive connections, each a heartbeat of a random worker, first over the lean
   route (POST /v1/heartbeat), then as an MCP tools/call (POST /mcp, protocol 2026-07-28);
   latency = completion time - scheduled time, so queueing in the client counts too;
4. ceilings: C connections in a closed loop for D seconds against the MCP heartbeat tool, the
   lean route and the bare app;
5. long-poll: W workers hold wait_for_messages; a sender sends M messages (send_to_partner with
   the coordinator token) at a steady rate; delivery = arrival at the waiter - send start; once
   idle, once under an open-loop MCP heartbeat load;
6. memory: the server's VmRSS after start, after register, after the load, and VmHWM.

Run from the repo with the dev venv: .venv/bin/python files/s2-bridge/bench/bench_bridge.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from s2_bridge.contract import tokens
from s2_bridge.server.store.sqlite import SQLiteStore

HOST = "127.0.0.1"  # the only address this benchmark ever loads
PROTOCOL = "2026-07-28"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
HEARTBEAT_BODY = (
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"heartbeat","arguments":{},"_meta":'
    + json.dumps(META, separators=(",", ":"))
    + "}}"
)
LONGPOLL_TIMEOUT_S = 30
MESSAGE_PREFIX = "bench message seq "


# --- a minimal HTTP/1.1 keep-alive client --------------------------------------------------------


class Conn:
    """One persistent HTTP/1.1 connection; one request at a time; reconnects after an error."""

    def __init__(self, port: int, ssl_ctx: ssl.SSLContext | None) -> None:
        self.port = port
        self.ssl_ctx = ssl_ctx
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            HOST, self.port, ssl=self.ssl_ctx, server_hostname=HOST if self.ssl_ctx else None, limit=1 << 20
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        try:
            self.writer.write(data)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            start = lower.find(b"\r\ncontent-length:")
            if start >= 0:
                end = lower.find(b"\r\n", start + 2)
                body = await self.reader.readexactly(int(lower[start + 17 : end]))
            elif b"\r\ntransfer-encoding: chunked" in lower:
                body = await self._chunked()
            else:
                body = await self.reader.read()
                self.close()
                return status, body
            if b"\r\nconnection: close" in lower:
                self.close()
        except BaseException:
            self.close()
            raise
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


class Wire:
    """Builds the raw requests; the tokens stay in this object's memory."""

    def __init__(self, port: int, bare_port: int, worker_tokens: list[str], coordinator_tokens: list[str]) -> None:
        self.host = f"Host: {HOST}:{port}\r\n"
        self.bare_host = f"Host: {HOST}:{bare_port}\r\n"
        self.worker_tokens = worker_tokens
        self.coordinator_tokens = coordinator_tokens
        self.next_id = 0

    def lean(self, worker: int) -> bytes:
        return (
            f"POST /v1/heartbeat HTTP/1.1\r\n{self.host}content-type: application/json\r\n"
            f"authorization: Bearer {self.worker_tokens[worker]}\r\ncontent-length: 2\r\n\r\n{{}}"
        ).encode()

    def bare(self, worker: int) -> bytes:
        return (
            f"POST / HTTP/1.1\r\n{self.bare_host}content-type: application/json\r\n"
            f"x-worker: {worker}\r\ncontent-length: 2\r\n\r\n{{}}"
        ).encode()

    def _mcp(self, token: str, tool: str, body: str) -> bytes:
        return (
            f"POST /mcp HTTP/1.1\r\n{self.host}content-type: application/json\r\n"
            f"accept: application/json, text/event-stream\r\nmcp-protocol-version: {PROTOCOL}\r\n"
            f"mcp-method: tools/call\r\nmcp-name: {tool}\r\nauthorization: Bearer {token}\r\n"
            f"content-length: {len(body.encode())}\r\n\r\n{body}"
        ).encode()

    def mcp_heartbeat(self, worker: int) -> bytes:
        self.next_id += 1
        return self._mcp(self.worker_tokens[worker], "heartbeat", HEARTBEAT_BODY % self.next_id)

    def mcp_call(self, token: str, tool: str, arguments: dict[str, Any]) -> bytes:
        self.next_id += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments, "_meta": META},
        }
        return self._mcp(token, tool, json.dumps(body, separators=(",", ":")))


def body_ok(body: bytes) -> bool:
    """Cheap success check for every response: the result object says ok true."""
    return (b'"ok":true' in body or b'"ok": true' in body) and b'"isError":true' not in body


class CallFailed(Exception):
    """An MCP call that did not come back as a successful tool result."""


def tool_result(status: int, body: bytes) -> dict[str, Any]:
    """The structuredContent of an MCP tools/call response (raises CallFailed if not a success)."""
    if status != 200:
        raise CallFailed(f"HTTP {status}: {body[:300]!r}")
    try:
        data = json.loads(body)
    except ValueError:
        raise CallFailed(f"not JSON: {body[:300]!r}") from None
    result = data.get("result")
    content = result.get("structuredContent") if isinstance(result, dict) and not result.get("isError") else None
    if not isinstance(content, dict):
        raise CallFailed(f"tool call failed: {json.dumps(data)[:300]}")
    return content


def check_first(kind: str, status: int, body: bytes) -> str | None:
    """Full check of a phase's first response; returns what is wrong, or None."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    try:
        ok = tool_result(status, body).get("ok") if kind == "mcp" else json.loads(body).get("ok")
    except (ValueError, CallFailed) as exc:
        return str(exc)
    return None if ok is True else f"ok is {ok!r}: {body[:300]!r}"


# --- figures ---------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(process, steal) CPU seconds of the whole machine so far, from the cpu line of /proc/stat.
    Process time is user + nice + system; interrupt time (loopback softirqs are partly ours) and
    idle are left out."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, steal = values[0], values[1], values[2], values[7]
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


def runqueue_wait(pid: int) -> float:
    """Seconds the process's main thread (the event loop) has waited for a CPU while runnable."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


class CpuMeter:
    """CPU used during a phase by the server, by this load generator, by every other process of
    the machine, and stolen by the hypervisor (the box is shared: other jobs show up there)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server0, self.own0, self.wait0 = cpu_seconds(pid), own_cpu(), runqueue_wait(pid)
        (self.busy0, self.steal0), self.wall0 = machine_cpu(), time.perf_counter()

    def stop(self, result: LoadResult | CeilingResult | LongPollResult) -> None:
        """Fill the result's CPU fields: server and load generator CPU seconds, cores used by
        other processes, cores stolen, and the share of the phase the server waited for a CPU."""
        server = cpu_seconds(self.pid) - self.server0
        own = own_cpu() - self.own0
        busy, steal = machine_cpu()
        wall = max(1e-9, time.perf_counter() - self.wall0)
        result.server_cpu_s, result.client_cpu_s = server, own
        result.others_cores = max(0.0, busy - self.busy0 - server - own) / wall
        result.steal_cores = (steal - self.steal0) / wall
        result.server_cpu_wait = (runqueue_wait(self.pid) - self.wait0) / wall


@dataclass
class LoadResult:
    name: str
    offered_per_s: float
    sent: int = 0
    completed: int = 0
    errors: int = 0
    unfinished: int = 0
    achieved_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    server_cpu_s: float = 0.0
    server_us_per_call: float = float("nan")
    client_cpu_s: float = 0.0
    others_cores: float = 0.0
    steal_cores: float = 0.0
    server_cpu_wait: float = 0.0  # share of the phase the server was runnable but not running
    first_error: str | None = None


@dataclass
class CeilingResult:
    name: str
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_s: float = 0.0
    server_cpu_s: float = 0.0
    server_us_per_call: float = float("nan")
    client_cpu_s: float = 0.0
    others_cores: float = 0.0
    steal_cores: float = 0.0
    server_cpu_wait: float = 0.0  # share of the phase the server was runnable but not running
    first_error: str | None = None


@dataclass
class LongPollResult:
    name: str
    waiters: int
    messages: int
    delivered: int = 0
    send_errors: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    send_p50_ms: float = float("nan")
    send_p99_ms: float = float("nan")
    background: str = ""
    rss_before_mb: float = 0.0
    rss_parked_mb: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    others_cores: float = 0.0
    steal_cores: float = 0.0
    server_cpu_wait: float = 0.0


@dataclass
class Report:
    command: str
    workers: int
    tls: bool
    seed_s: float = 0.0
    load_average: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    load: list[LoadResult] = field(default_factory=list)
    ceilings: list[CeilingResult] = field(default_factory=list)
    long_poll: list[LongPollResult] = field(default_factory=list)
    wrk: dict[str, float] = field(default_factory=dict)


# --- shared by the benchmarks (bench_hostile.py too) ------------------------------------------------


async def wait_idle(pid: int, limit_s: float = 20.0) -> float:
    """Wait (at most limit_s) until the server has worked off any backlog: under 5% of a core
    over 0.5 s. Requests of closed connections still run to their end on the server."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            break
    return time.perf_counter() - started


async def open_pool(port: int, ssl_ctx: ssl.SSLContext | None, size: int) -> list[Conn]:
    """`size` open keep-alive connections, opened 100 at a time (not to flood the accept backlog)."""
    conns = [Conn(port, ssl_ctx) for _ in range(size)]
    for start in range(0, size, 100):
        await asyncio.gather(*(c.open() for c in conns[start : start + 100]))
    return conns


# --- targets -------------------------------------------------------------------------------------


@dataclass
class Target:
    """One kind of request against one port, and how to tell a success."""

    kind: str  # "lean", "mcp" or "bare"
    port: int
    make: Callable[[int], bytes]


class Bench:
    def __init__(self, args: argparse.Namespace, wire: Wire, server_pid: int, ssl_ctx: ssl.SSLContext | None) -> None:
        self.args = args
        self.wire = wire
        self.server_pid = server_pid
        self.ssl_ctx = ssl_ctx
        self.rng = random.Random(args.seed)
        self.workers = len(wire.worker_tokens)
        self.used_waiters: set[int] = set()

    def target(self, kind: str) -> Target:
        if kind == "lean":
            return Target(kind, self.args.port, self.wire.lean)
        if kind == "mcp":
            return Target(kind, self.args.port, self.wire.mcp_heartbeat)
        return Target(kind, self.args.bare_port, self.wire.bare)

    async def quiesce(self, pid: int | None = None, limit_s: float = 20.0) -> float:
        return await wait_idle(pid or self.server_pid, limit_s)

    async def open_pool(self, port: int, size: int) -> list[Conn]:
        return await open_pool(port, self.ssl_ctx, size)

    # 2. every worker once
    async def register_all(self, concurrency: int) -> tuple[int, int, float]:
        conns = await self.open_pool(self.args.port, concurrency)
        order = list(range(self.workers))
        position = 0
        errors = 0
        deadline = time.perf_counter() + self.args.register_timeout

        async def run(conn: Conn) -> None:
            nonlocal position, errors
            while position < len(order) and time.perf_counter() < deadline:
                worker = order[position]
                position += 1
                try:
                    status, body = await conn.request(self.wire.lean(worker))
                    if status != 200 or not body_ok(body):
                        errors += 1
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(run(c) for c in conns))
        for conn in conns:
            conn.close()
        return position, errors, time.perf_counter() - started

    # 3. open loop
    async def open_loop(self, kind: str, rate: float, duration: float, name: str | None = None) -> LoadResult:
        target = self.target(kind)
        result = LoadResult(name or f"{kind} @ {rate:g}/s", rate)
        conns = await self.open_pool(target.port, self.args.pool)
        total = int(rate * duration)
        queue: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        latencies: list[float] = []
        inflight: dict[int, float] = {}
        all_done = asyncio.Event()
        first = True
        last_done = 0.0
        rng = random.Random(self.rng.random())

        async def consume(slot: int, conn: Conn) -> None:
            nonlocal first, last_done
            while True:
                scheduled, worker = await queue.get()
                inflight[slot] = scheduled
                try:
                    status, body = await conn.request(target.make(worker))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)
                else:
                    done = time.perf_counter()
                    if first:
                        first = False
                        problem = check_first(kind, status, body)
                        if problem:
                            result.first_error = problem
                    if status == 200 and body_ok(body):
                        result.completed += 1
                        latencies.append(done - scheduled)
                        last_done = done
                    else:
                        result.errors += 1
                        result.first_error = result.first_error or f"HTTP {status}: {body[:200]!r}"
                del inflight[slot]
                if result.completed + result.errors >= total:
                    all_done.set()

        consumers = [asyncio.create_task(consume(i, c)) for i, c in enumerate(conns)]
        meter = CpuMeter(self.server_pid)
        t0 = time.perf_counter() + 0.05
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((due, rng.randrange(self.workers)))
            result.sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), self.args.drain)
        finished = time.perf_counter()
        # Whatever is still queued or in flight has waited at least this long: keep it as a lower
        # bound so an overload shows in the percentiles instead of vanishing from them.
        pending = [finished - s for s in inflight.values()]
        while not queue.empty():
            pending.append(finished - queue.get_nowait()[0])
        result.unfinished = len(pending)
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        for conn in conns:
            conn.close()
        meter.stop(result)
        # achieved = completions over the time from the first scheduled send to the last completion
        window = max(last_done - t0, duration)
        result.achieved_per_s = result.completed / window
        if result.completed:
            result.server_us_per_call = result.server_cpu_s / result.completed * 1e6
        values = sorted(latencies + pending)
        result.p50_ms = percentile(values, 0.50) * 1000
        result.p99_ms = percentile(values, 0.99) * 1000
        result.max_ms = (values[-1] if values else float("nan")) * 1000
        return result

    # 4. closed loop
    async def ceiling(self, kind: str, duration: float) -> CeilingResult:
        target = self.target(kind)
        result = CeilingResult(f"{kind} closed loop, {self.args.ceiling_conns} conns")
        conns = await self.open_pool(target.port, self.args.ceiling_conns)
        first = True
        rng = random.Random(self.rng.random())

        async def run(conn: Conn, stop_at: float) -> None:
            nonlocal first
            while time.perf_counter() < stop_at:
                try:
                    status, body = await conn.request(target.make(rng.randrange(self.workers)))
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors += 1
                    result.first_error = result.first_error or repr(exc)
                    continue
                if first:
                    first = False
                    result.first_error = check_first(kind, status, body)
                if status == 200 and body_ok(body):
                    result.calls += 1
                else:
                    result.errors += 1

        pid = self.server_pid if kind != "bare" else self.args.bare_pid
        profiler = start_py_spy(self.args.py_spy, pid, duration, f"ceiling-{kind}")
        meter = CpuMeter(pid)
        started = time.perf_counter()
        stop_at = started + duration
        tasks = [asyncio.create_task(run(c, stop_at)) for c in conns]
        _, late = await asyncio.wait(tasks, timeout=duration + self.args.drain)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.seconds = time.perf_counter() - started
        for conn in conns:
            conn.close()
        meter.stop(result)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, duration + 30)
        result.per_s = result.calls / result.seconds
        if result.calls:
            result.server_us_per_call = result.server_cpu_s / result.calls * 1e6
        return result

    # 5. long-poll
    async def long_poll(self, waiters: int, messages: int, send_rate: float, background_rate: float) -> LongPollResult:
        name = "long-poll, idle" if not background_rate else f"long-poll, under MCP heartbeats @ {background_rate:g}/s"
        result = LongPollResult(name, waiters, messages)
        # Fresh workers each time: the waits of an earlier round are still parked on the server
        # (a closed connection does not cancel them), and a message would wake those too.
        chosen = self.rng.sample(sorted(set(range(self.workers)) - self.used_waiters), waiters)
        self.used_waiters.update(chosen)
        received: dict[int, float] = {}
        sent_at: dict[int, float] = {}
        send_latencies: list[float] = []
        stop = asyncio.Event()
        result.rss_before_mb = memory_mb(self.server_pid)["VmRSS"]
        conns = await self.open_pool(self.args.port, waiters)
        wait_errors = 0

        async def wait_loop(worker: int, conn: Conn) -> None:
            nonlocal wait_errors
            after_id: int | None = None
            while not stop.is_set():
                arguments: dict[str, Any] = {"timeout_s": LONGPOLL_TIMEOUT_S}
                if after_id is not None:
                    arguments["after_id"] = after_id
                try:
                    status, body = await conn.request(
                        self.wire.mcp_call(self.wire.worker_tokens[worker], "wait_for_messages", arguments)
                    )
                    arrived = time.perf_counter()
                    content = tool_result(status, body)
                except (OSError, asyncio.IncompleteReadError, ValueError, CallFailed):
                    wait_errors += 1
                    await asyncio.sleep(0.1)
                    continue
                for message in content.get("messages", []):
                    after_id = max(after_id or 0, int(message["id"]))
                    text = str(message.get("message", ""))
                    if text.startswith(MESSAGE_PREFIX):
                        received.setdefault(int(text[len(MESSAGE_PREFIX) :]), arrived)

        waiting = [asyncio.create_task(wait_loop(w, c)) for w, c in zip(chosen, conns, strict=True)]
        # Give the server time to park every waiter (it answers nothing until a message comes):
        # at least --settle s, and until it is idle again.
        await asyncio.sleep(self.args.settle)
        await self.quiesce()
        result.rss_parked_mb = memory_mb(self.server_pid)["VmRSS"]
        meter = CpuMeter(self.server_pid)
        background: asyncio.Task[LoadResult] | None = None
        send_duration = messages / send_rate
        if background_rate:
            background = asyncio.create_task(
                self.open_loop("mcp", background_rate, send_duration + 1.0, name=f"background of {name}")
            )
            await asyncio.sleep(0.5)
        senders = await self.open_pool(self.args.port, self.args.senders)
        free: asyncio.Queue[Conn] = asyncio.Queue()
        for conn in senders:
            free.put_nowait(conn)
        recipients = self.rng.sample(chosen, messages) if messages <= waiters else self.rng.choices(chosen, k=messages)

        async def send(seq: int, worker: int) -> None:
            conn = await free.get()
            try:
                started = time.perf_counter()
                sent_at[seq] = started
                status, body = await conn.request(
                    self.wire.mcp_call(
                        self.wire.coordinator_tokens[worker], "send_to_partner", {"message": f"{MESSAGE_PREFIX}{seq}"}
                    )
                )
                tool_result(status, body)
                send_latencies.append(time.perf_counter() - started)
            except (OSError, asyncio.IncompleteReadError, ValueError, CallFailed):
                result.send_errors += 1
                sent_at.pop(seq, None)
            finally:
                free.put_nowait(conn)

        sends: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for seq, worker in enumerate(recipients):
            delay = t0 + seq / send_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(send(seq, worker)))
        if sends:
            await asyncio.wait(sends, timeout=self.args.drain)
        deadline = time.perf_counter() + self.args.drain
        while time.perf_counter() < deadline and any(seq not in received for seq in sent_at):
            await asyncio.sleep(0.05)
        meter.stop(result)
        stop.set()
        for task in [*waiting, *sends]:
            task.cancel()
        await asyncio.gather(*waiting, *sends, return_exceptions=True)
        for conn in [*conns, *senders]:
            conn.close()
        if background is not None:
            load = await background
            result.background = (
                f"{load.achieved_per_s:.0f}/s p50 {load.p50_ms:.1f} p99 {load.p99_ms:.1f} ms, {load.errors} errors"
            )
        delays = sorted(received[seq] - sent_at[seq] for seq in sent_at if seq in received)
        result.delivered = len(delays)
        result.p50_ms = percentile(delays, 0.5) * 1000
        result.p99_ms = percentile(delays, 0.99) * 1000
        result.max_ms = (delays[-1] if delays else float("nan")) * 1000
        send_latencies.sort()
        result.send_p50_ms = percentile(send_latencies, 0.5) * 1000
        result.send_p99_ms = percentile(send_latencies, 0.99) * 1000
        if wait_errors:
            print(f"  note: {wait_errors} wait_for_messages calls failed", flush=True)
        return result


def start_py_spy(folder: str | None, pid: int, duration: float, label: str) -> subprocess.Popen[bytes] | None:
    """With --py-spy DIR: sample the server during a phase into DIR/<label>.txt (collapsed stacks)."""
    if not folder:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    Path(folder).mkdir(parents=True, exist_ok=True)
    out = str(Path(folder) / f"{label}.txt")
    args = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", "200"]
    args += ["--nonblocking", "--format", "raw", "-o", out]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --- set-up: PKI, data dir, seeding, processes ----------------------------------------------------


def make_pki(folder: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1; returns (ca_file, cert_file, key_file)."""

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("s2 bench CA"))
        .issuer_name(name("s2 bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(HOST))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.crt": cert.public_bytes(serialization.Encoding.PEM),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for file_name, data in files.items():
        path = folder / file_name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return str(folder / "ca.crt"), str(folder / "server.crt"), str(folder / "server.key")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(workdir: Path, data: Path, port: int, tls: tuple[str, str, str] | None) -> Path:
    tls_section = f'[tls]\ncert_file = "{tls[1]}"\nkey_file = "{tls[2]}"\n' if tls else ""
    path = workdir / "bridge.toml"
    path.write_text(
        f'[server]\nhost = "{HOST}"\nport = {port}\n'
        f"{tls_section}"
        f'[storage]\nbackend = "sqlite"\npath = "{data / "bridge.db"}"\n'
        f'[auth]\nadmin_token_file = "{data / "admin.token"}"\n'
        "[limits]\ncalls_per_s = 1000\ncalls_burst = 1000\n"
    )
    return path


def seed(db_path: Path, count: int) -> tuple[list[str], list[str]]:
    """N conversations through the store API; returns (worker tokens, coordinator tokens)."""
    store = SQLiteStore(str(db_path))
    worker_tokens: list[str] = []
    coordinator_tokens: list[str] = []
    now = time.time()
    try:
        for index in range(count):
            worker, coordinator = tokens.new_token("worker"), tokens.new_token("coordinator")
            store.create_conversation(
                worker_id=f"w{index:06d}",
                coordinator_role="s2-orchestrator",
                worker_role=f"bench-worker-{index}",
                coordinator_hash=tokens.token_hash(coordinator),
                worker_hash=tokens.token_hash(worker),
                now=now,
                expires_at=now + 7 * 24 * 3600,
            )
            worker_tokens.append(worker)
            coordinator_tokens.append(coordinator)
    finally:
        store.close()
    return worker_tokens, coordinator_tokens


class Processes:
    """The server subprocesses; stop() ends exactly the ones started here."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as handle:
            process = subprocess.Popen(args, stdout=handle, stderr=handle)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def work_dir(prefix: str, procs: Processes, keep: bool = False, load: dict[str, Any] | None = None) -> Iterator[Path]:
    """One run's work dir (0700). On the way out, the processes in `procs` stop and the dir is
    removed (`keep`: kept, and its path printed). `load`, if given, gets the load average under
    "start" and, after a run that raised nothing, "end"."""
    if load is not None:
        load["start"] = load_average()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # 0700
    try:
        yield workdir
    finally:
        procs.stop()
        if keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if load is not None:
        load["end"] = load_average()


async def wait_healthy(process: subprocess.Popen[bytes], port: int, ssl_ctx: ssl.SSLContext | None, log: Path) -> None:
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        conn = Conn(port, ssl_ctx)
        try:
            status, _ = await conn.request(request)
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            conn.close()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no answer on /healthz of port {port} in 60 s:\n{log.read_text()[-2000:]}")


# --- optional extra: wrk -----------------------------------------------------------------------------


def run_wrk(args: argparse.Namespace, wire: Wire, workdir: Path, scheme: str) -> dict[str, float]:
    """Ceilings with wrk (C) as the client, if it is installed. Its Lua script holds tokens: it is
    written 0600 into the 0700 data dir and deleted right after the run."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk: not installed, skipped", flush=True)
        return {}
    sample = wire.worker_tokens[: min(len(wire.worker_tokens), 2000)]
    figures: dict[str, float] = {}
    mcp_body = HEARTBEAT_BODY % 1
    scripts = {
        "lean": (
            f"http://{HOST}:{args.port}/v1/heartbeat",
            'wrk.method = "POST"\nwrk.body = "{}"\n'
            "request = function()\n"
            '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. toks[math.random(#toks)],'
            ' ["Content-Type"] = "application/json"})\nend\n',
        ),
        "mcp": (
            f"http://{HOST}:{args.port}/mcp",
            f'wrk.method = "POST"\nwrk.body = {json.dumps(mcp_body)}\n'
            "request = function()\n"
            '  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. toks[math.random(#toks)],'
            ' ["Content-Type"] = "application/json", ["Accept"] = "application/json, text/event-stream",'
            f' ["MCP-Protocol-Version"] = "{PROTOCOL}", ["Mcp-Method"] = "tools/call", ["Mcp-Name"] = "heartbeat"}})\n'
            "end\n",
        ),
        "bare": (
            f"http://{HOST}:{args.bare_port}/",
            'wrk.method = "POST"\nwrk.body = "{}"\n'
            "request = function()\n"
            '  return wrk.format(nil, nil, {["X-Worker"] = tostring(math.random(1000)),'
            ' ["Content-Type"] = "application/json"})\nend\n',
        ),
    }
    for kind, (plain_url, body) in scripts.items():
        script = workdir / "data" / f"wrk-{kind}.lua"  # the 0700 data dir, like the database
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("toks = {" + ",".join(f'"{t}"' for t in sample) + "}\n" + body)
        url = plain_url.replace("http://", f"{scheme}://")
        out = subprocess.run(
            [wrk, "-t1", f"-c{args.ceiling_conns}", f"-d{int(args.ceiling_duration)}s", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=args.ceiling_duration + 30,
            check=False,
        ).stdout
        script.unlink()
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                figures[kind] = float(line.split()[1])
            if "Non-2xx" in line:
                print(f"wrk {kind}: {line.strip()}", flush=True)
        print(f"wrk {kind}: {figures.get(kind, float('nan')):.0f} calls/s", flush=True)
    return figures


# --- output --------------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN check


def print_load(result: LoadResult) -> None:
    lower = " (incl. unfinished as lower bounds)" if result.unfinished else ""
    print(
        f"{result.name:<22} achieved {result.achieved_per_s:7.0f}/s  p50 {fmt(result.p50_ms):>8} ms"
        f"  p99 {fmt(result.p99_ms):>8} ms  max {fmt(result.max_ms):>8} ms{lower}  errors {result.errors}"
        f"  unfinished {result.unfinished}  server cpu {result.server_cpu_s:.2f} s"
        f" ({fmt(result.server_us_per_call, 0)} us/call)  client cpu {result.client_cpu_s:.2f} s"
        f"  others {result.others_cores:.2f} cores, steal {result.steal_cores:.2f},"
        f" server waited for a CPU {result.server_cpu_wait:.0%} of the time",
        flush=True,
    )
    if result.first_error:
        print(f"  first error: {result.first_error}", flush=True)


def print_table(report: Report) -> None:
    print("\n=== results ===")
    print(f"command: {report.command}")
    print(f"workers seeded: {report.workers:,} in {report.seed_s:.1f} s; tls: {report.tls}")
    print("load average (1/5/15 min): " + "; ".join(f"{k} {v}" for k, v in report.load_average.items()))
    print(
        "\n| phase | offered/s | achieved/s | p50 ms | p99 ms | max ms | errors | unfinished"
        " | server CPU us/call | other procs / steal, cores | server waiting for CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report.load:
        print(
            f"| {r.name} | {r.offered_per_s:g} | {r.achieved_per_s:.0f} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} |"
            f" {fmt(r.max_ms)} | {r.errors} | {r.unfinished} | {fmt(r.server_us_per_call, 0)} |"
            f" {r.others_cores:.2f} / {r.steal_cores:.2f} | {r.server_cpu_wait:.0%} |"
        )
    print(
        "\n| ceiling (closed loop) | calls/s | errors | server CPU us/call | client CPU s"
        " | other procs / steal, cores | server waiting for CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in report.ceilings:
        print(
            f"| {c.name} | {c.per_s:.0f} | {c.errors} | {fmt(c.server_us_per_call, 0)} | {c.client_cpu_s:.1f} |"
            f" {c.others_cores:.2f} / {c.steal_cores:.2f} | {c.server_cpu_wait:.0%} |"
        )
    by_kind = {c.name.split()[0]: c.per_s for c in report.ceilings}
    if by_kind.get("bare"):
        print(
            f"\nratios: MCP/bare {by_kind.get('mcp', 0) / by_kind['bare']:.2f},"
            f" lean/bare {by_kind.get('lean', 0) / by_kind['bare']:.2f}"
        )
    if report.wrk:
        print("wrk (extra): " + ", ".join(f"{k} {v:.0f}/s" for k, v in report.wrk.items()))
    print(
        "\n| long-poll | waiters | delivered/sent | p50 ms | p99 ms | max ms | send p50/p99 ms"
        " | server RSS before / parked, MB | server waiting for CPU | background |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in report.long_poll:
        print(
            f"| {p.name} | {p.waiters} | {p.delivered}/{p.messages - p.send_errors} | {fmt(p.p50_ms)} |"
            f" {fmt(p.p99_ms)} | {fmt(p.max_ms)} | {fmt(p.send_p50_ms)}/{fmt(p.send_p99_ms)} |"
            f" {p.rss_before_mb:.1f} / {p.rss_parked_mb:.1f} | {p.server_cpu_wait:.0%} | {p.background or '-'} |"
        )
    print("\n| server memory | MB |")
    print("|---|---|")
    for key, value in report.memory.items():
        print(f"| {key} | {value:.1f} |")


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="s2-bridge load benchmark (loopback only)")
    parser.add_argument("--workers", type=int, default=30_000, help="conversations to seed (default 30000)")
    parser.add_argument("--rates", default="670,2000,6700", help="open-loop arrival rates, calls/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop phase")
    parser.add_argument("--pool", type=int, default=500, help="keep-alive connections of the open-loop client")
    parser.add_argument("--drain", type=float, default=10.0, help="max seconds to wait for stragglers")
    parser.add_argument("--ceiling-conns", type=int, default=64, help="connections of the closed loops")
    parser.add_argument("--ceiling-duration", type=float, default=10.0, help="seconds per closed loop")
    parser.add_argument("--waiters", type=int, default=1000, help="workers holding wait_for_messages")
    parser.add_argument("--messages", type=int, default=300, help="messages sent to the waiters")
    parser.add_argument("--send-rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--senders", type=int, default=8, help="sender connections")
    parser.add_argument("--longpoll-load", type=float, default=670.0, help="MCP heartbeats/s beside the 2nd run")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds for the waiters to park")
    parser.add_argument("--register-timeout", type=float, default=120.0, help="bound of the register phase")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a CA made here")
    parser.add_argument("--wrk", action="store_true", help="also measure the ceilings with wrk, if installed")
    parser.add_argument("--skip", default="", help="comma list of phases to skip: load,ceiling,longpoll")
    parser.add_argument("--py-spy", metavar="DIR", help="profile the servers during the ceilings into DIR")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (it holds the admin token)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 workers, 2 s phases")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers = min(args.workers, 2000)
        args.duration = args.ceiling_duration = 2.0
        args.drain = 5.0
        args.pool = min(args.pool, 100)
        args.waiters = min(args.waiters, 200)
        args.messages = min(args.messages, 60)
        args.send_rate = max(args.send_rate, 30.0)
        args.settle = 1.0
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    args.skip_set = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


async def run(args: argparse.Namespace, report: Report, workdir: Path, procs: Processes) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o700)
    tls = make_pki(workdir) if args.tls else None
    ssl_ctx = ssl.create_default_context(cafile=tls[0]) if tls else None
    args.port, args.bare_port = free_port(), free_port()
    config = write_config(workdir, data, args.port, tls)

    started = time.perf_counter()
    worker_tokens, coordinator_tokens = seed(data / "bridge.db", args.workers)
    report.seed_s = time.perf_counter() - started
    print(f"seeded {args.workers:,} conversations in {report.seed_s:.1f} s", flush=True)

    serve = [sys.executable, "-m", "s2_bridge.cli", "--log-level", "WARNING", "serve", "--config", str(config)]
    if not tls:
        serve.append("--insecure-http")
    server = procs.start(serve, workdir / "server.log")
    bare_cmd = [sys.executable, str(BENCH_DIR / "bare_app.py"), "--port", str(args.bare_port), "--db"]
    bare_cmd.append(str(data / "bare.db"))
    if tls:
        bare_cmd += ["--cert-file", tls[1], "--key-file", tls[2]]
    bare = procs.start(bare_cmd, workdir / "bare.log")
    args.bare_pid = bare.pid
    await wait_healthy(server, args.port, ssl_ctx, workdir / "server.log")
    await wait_healthy(bare, args.bare_port, ssl_ctx, workdir / "bare.log")
    print(f"server pid {server.pid} on {HOST}:{args.port}; bare app pid {bare.pid} on {HOST}:{args.bare_port}")
    await asyncio.sleep(1.0)
    report.memory["RSS after start, N seeded"] = memory_mb(server.pid)["VmRSS"]

    wire = Wire(args.port, args.bare_port, worker_tokens, coordinator_tokens)
    bench = Bench(args, wire, server.pid, ssl_ctx)
    done, errors, seconds = await bench.register_all(args.ceiling_conns)
    report.memory["RSS after every worker heartbeat once"] = memory_mb(server.pid)["VmRSS"]
    print(
        f"register: {done:,} workers heartbeat once in {seconds:.1f} s ({done / seconds:.0f}/s), {errors} errors",
        flush=True,
    )
    await bench.quiesce()

    if "load" not in args.skip_set:
        for rate in args.rate_list:
            for kind in ("lean", "mcp"):
                result = await bench.open_loop(kind, rate, args.duration)
                report.load.append(result)
                print_load(result)
                await bench.quiesce()
        report.memory["RSS after open-loop phases"] = memory_mb(server.pid)["VmRSS"]

    if "ceiling" not in args.skip_set:
        for kind in ("mcp", "lean", "bare"):
            ceiling = await bench.ceiling(kind, args.ceiling_duration)
            report.ceilings.append(ceiling)
            print(
                f"{ceiling.name:<30} {ceiling.per_s:7.0f} calls/s  errors {ceiling.errors}"
                f"  server cpu {fmt(ceiling.server_us_per_call, 0)} us/call  client cpu {ceiling.client_cpu_s:.1f} s"
                f"  others {ceiling.others_cores:.2f} cores, steal {ceiling.steal_cores:.2f},"
                f" server waited for a CPU {ceiling.server_cpu_wait:.0%} of the time",
                flush=True,
            )
            if ceiling.first_error:
                print(f"  first error: {ceiling.first_error}", flush=True)
            await bench.quiesce(args.bare_pid if kind == "bare" else server.pid)
        if args.wrk:
            report.wrk = await asyncio.to_thread(run_wrk, args, wire, workdir, "https" if tls else "http")

    if "longpoll" not in args.skip_set:
        for background in (0.0, args.longpoll_load):
            poll = await bench.long_poll(args.waiters, args.messages, args.send_rate, background)
            report.long_poll.append(poll)
            print(
                f"{poll.name}: delivered {poll.delivered}/{poll.messages - poll.send_errors}"
                f"  p50 {fmt(poll.p50_ms)} ms  p99 {fmt(poll.p99_ms)} ms  max {fmt(poll.max_ms)} ms"
                f"  (send p50 {fmt(poll.send_p50_ms)} ms){'  background: ' + poll.background if background else ''}"
                f"  RSS {poll.rss_before_mb:.1f} -> {poll.rss_parked_mb:.1f} MB with the waiters parked"
                f"  others {poll.others_cores:.2f} cores, server waited for a CPU {poll.server_cpu_wait:.0%}",
                flush=True,
            )
            await bench.quiesce()
            if not args.longpoll_load:
                break

    mem = memory_mb(server.pid)
    report.memory["RSS at the end"] = mem["VmRSS"]
    report.memory["peak RSS (VmHWM)"] = mem["VmHWM"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_bridge.py", *argv])
    print(f"command: {command}", flush=True)
    raise_fd_limit(args.pool + args.waiters + args.ceiling_conns + args.senders + 1024)
    report = Report(command=command, workers=args.workers, tls=args.tls)
    procs = Processes()
    with work_dir("s2-bench-", procs, args.keep, report.load_average) as workdir:
        uvloop.run(run(args, report, workdir, procs))
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
