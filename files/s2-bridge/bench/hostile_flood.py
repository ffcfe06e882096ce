"""Scenario C of bench_hostile.py: a message flood on two bridges, with and without the retention
and quota settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_bridge import Conn, cpu_seconds, fmt, load_average, machine_cpu, memory_mb, own_cpu, runqueue_wait
from hostile_common import (
    NETWORK_ERRORS,
    Bridge,
    Heartbeats,
    Scenario,
    beats_text,
    is_error_result,
    limiter_changes,
    say,
)

DAY_S = 86_400.0
UNLIMITED_DAYS = 36_500  # 100 years
UNLIMITED_BYTES = 1 << 50  # 1 PiB

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


async def scenario_flood(scenario: Scenario) -> dict[str, Any]:
    args, runtime, ssl_ctx = scenario.args, scenario.runtime, scenario.ssl_ctx
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
        await scenario.start_bridge("limited", 4, limited, lead=args.lead),
        await scenario.start_bridge("unlimited", 4, unlimited, lead=args.lead),
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
