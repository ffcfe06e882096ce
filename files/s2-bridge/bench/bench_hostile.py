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
import datetime
import json
import os
import shlex
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from bench_bridge import BENCH_DIR, fmt, load_average, make_pki, raise_fd_limit, work_dir
from hostile_common import LoopLag, Runtime, RuntimeProcesses, Scenario, say
from hostile_fanout import scenario_fanout
from hostile_flood import SNAPSHOT_HEAD, scenario_flood, snapshot_line
from hostile_slowloris import scenario_slowloris

SCENARIOS = {"a": "slowloris", "b": "fanout", "c": "flood"} | {n: n for n in ("slowloris", "fanout", "flood")}


# The scenarios: hostile_slowloris.py (A), hostile_fanout.py (B), hostile_flood.py (C); what they share:
# hostile_common.py. This file parses the arguments, runs the scenarios asked for and prints the summary.


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
    scenario = Scenario(args, workdir, procs, runtime, tls, ssl.create_default_context(cafile=tls[0]))
    scenarios = {"slowloris": scenario_slowloris, "fanout": scenario_fanout, "flood": scenario_flood}
    args.lag, stop = LoopLag(), asyncio.Event()
    lag_task = asyncio.create_task(args.lag.run(stop))
    try:
        for name in args.scenarios:
            say(f"=== scenario {name} ===")
            report["scenarios"][name] = await scenarios[name](scenario)
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
        "load_average": {},
        "scenarios": {},
    }
    print(f"command: {command}", flush=True)
    raise_fd_limit(args.slowloris + args.waiters + 4096)  # the bridge inherits it too
    procs = RuntimeProcesses()
    with work_dir("s2-bench-hostile-", procs, args.keep, report["load_average"]) as workdir:
        uvloop.run(run(args, report, workdir, procs))
    print_summary(report)
    out = Path(args.json or f"/tmp/bench-hostile-{stamp.strftime('%Y%m%dT%H%M%S')}.json")
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
