"""The lead's fleet-wide long-poll: one `wait_for_messages` with the lead token wakes for a
message from any of N workers. Prints delivery figures; asserts nothing about timing.

What one run does (everything on 127.0.0.1, the real server as a subprocess, TLS unless --plain):
1. seeds N conversations (`--workers`, default 1,000) and one lead token through the store API
   (bench_bridge.seed), starts `s2-bridge serve`;
2. background: every worker heartbeats on the lean route at its real cadence (N / 15 s) for the
   whole run, so the lead waits beside a live fleet;
3. the lead loops `wait_for_messages` (MCP, 2026-07-28 protocol, raw JSON-RPC) with after_id;
4. `--messages` messages leave at `--send-rate`/s, each from a random worker
   (`send_to_partner` without `to`: to the lead); delivery = arrival at the lead minus send start.

Run from the repo root: .venv/bin/python files/s2-bridge/bench/bench_lead.py [--workers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from bench_bridge import (
    HOST,
    CallFailed,
    Conn,
    Processes,
    Wire,
    free_port,
    make_pki,
    memory_mb,
    percentile,
    seed,
    tool_result,
    wait_healthy,
    work_dir,
    write_config,
)
from s2_bridge.contract import tokens
from s2_bridge.server.store.sqlite import SQLiteStore

PREFIX = "lead-bench "
HEARTBEAT_EVERY_S = 15.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--send-rate", type=float, default=20.0, help="messages per second")
    parser.add_argument("--senders", type=int, default=8, help="sender connections")
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of TLS")
    parser.add_argument("--drain", type=float, default=10.0)
    return parser.parse_args(argv)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


async def heartbeats(port: int, ssl_ctx: Any, wire: Wire, stop: asyncio.Event, count: int) -> tuple[int, int]:
    """Every worker's lean heartbeat at its cadence, spread evenly; returns (ok, errors)."""
    conns = [Conn(port, ssl_ctx) for _ in range(4)]
    ok = errors = 0
    interval = HEARTBEAT_EVERY_S / count

    async def beat(conn: Conn, offset: int) -> None:
        nonlocal ok, errors
        worker = offset
        next_at = time.perf_counter() + offset * interval
        while not stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                status, _ = await conn.request(wire.lean(worker % count))
                ok += status == 200
                errors += status != 200
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
            worker += len(conns)
            next_at += interval * len(conns)

    await asyncio.gather(*(beat(c, i) for i, c in enumerate(conns)))
    for conn in conns:
        conn.close()
    return ok, errors


async def run(args: argparse.Namespace, workdir: Path, procs: Processes) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o700)
    tls = None if args.plain else make_pki(workdir)
    port = free_port()
    config = write_config(workdir, data, port, tls)
    worker_tokens, coordinator_tokens = seed(data / "bridge.db", args.workers)
    lead_token = tokens.new_token("lead")
    store = SQLiteStore(str(data / "bridge.db"))
    now = time.time()
    store.replace_lead_token(tokens.token_hash(lead_token), lead_role="bench-lead", now=now, expires_at=now + 86400)
    store.close()
    log = workdir / "bridge.log"
    command = [sys.executable, "-m", "s2_bridge.cli", "serve", "--config", str(config)]
    server = procs.start([*command, "--insecure-http"] if tls is None else command, log)
    ssl_ctx = None if tls is None else ssl.create_default_context(cafile=tls[0])
    await wait_healthy(server, port, ssl_ctx, log)
    wire = Wire(port, port, worker_tokens, coordinator_tokens)
    rng = random.Random(7)
    stop = asyncio.Event()
    background = asyncio.create_task(heartbeats(port, ssl_ctx, wire, stop, args.workers))
    await asyncio.sleep(2.0)

    received: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    wait_errors = 0

    async def lead_loop() -> None:
        nonlocal wait_errors
        conn = Conn(port, ssl_ctx)
        after_id = 0
        while not stop.is_set():
            try:
                status, body = await conn.request(
                    wire.mcp_call(lead_token, "wait_for_messages", {"after_id": after_id, "timeout_s": 20})
                )
                arrived = time.perf_counter()
                content = tool_result(status, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, CallFailed):
                wait_errors += 1
                await asyncio.sleep(0.05)
                continue
            for message in content.get("messages", []):
                after_id = max(after_id, int(message["id"]))
                text = str(message.get("message", ""))
                if text.startswith(PREFIX):
                    received.setdefault(int(text[len(PREFIX) :]), arrived)
        conn.close()

    waiter = asyncio.create_task(lead_loop())
    await asyncio.sleep(1.0)
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(args.senders):
        free.put_nowait(Conn(port, ssl_ctx))
    send_errors = 0

    async def send(seq: int) -> None:
        nonlocal send_errors
        conn = await free.get()
        worker = rng.randrange(args.workers)
        try:
            sent_at[seq] = time.perf_counter()
            status, body = await conn.request(
                wire.mcp_call(worker_tokens[worker], "send_to_partner", {"message": f"{PREFIX}{seq}"})
            )
            tool_result(status, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, CallFailed):
            send_errors += 1
            sent_at.pop(seq, None)
        finally:
            free.put_nowait(conn)

    print(f"lead long-poll: {args.workers} workers heartbeating every {HEARTBEAT_EVERY_S:g} s; {load()}", flush=True)
    rss_before = memory_mb(server.pid)["VmRSS"]
    t0 = time.perf_counter()
    sends = []
    for seq in range(args.messages):
        delay = t0 + seq / args.send_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.create_task(send(seq)))
    await asyncio.wait(sends, timeout=args.drain)
    deadline = time.perf_counter() + args.drain
    while time.perf_counter() < deadline and any(seq not in received for seq in sent_at):
        await asyncio.sleep(0.05)
    stop.set()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    beats_ok, beat_errors = await background
    delays = sorted(received[s] - sent_at[s] for s in sent_at if s in received)
    print(
        f"  {len(delays)} of {len(sent_at)} messages from random workers reached the lead's one wait "
        f"({send_errors} send errors, {wait_errors} wait errors); "
        f"delivery p50 {percentile(delays, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(delays, 0.99) * 1000:.1f} ms, max {(delays[-1] if delays else float('nan')) * 1000:.1f} ms; "
        f"{load()}",
        flush=True,
    )
    print(
        f"  background heartbeats: {beats_ok} ok, {beat_errors} errors; server RSS {rss_before:.0f} -> "
        f"{memory_mb(server.pid)['VmRSS']:.0f} MB; {'TLS' if tls else 'plain HTTP'} on {HOST}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes()
    with work_dir("s2-bench-lead-", procs) as workdir:
        uvloop.run(run(args, workdir, procs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
