"""Scenario B of bench_hostile.py: a fan-out of parked waits on one inbox, woken by one large message."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from dataclasses import asdict
from typing import Any

from bench_bridge import Conn, CpuMeter, fmt, load_average, memory_mb, open_pool, percentile, start_py_spy, wait_idle
from hostile_common import (
    NETWORK_ERRORS,
    WAIT_TIMEOUT_S,
    Bridge,
    Heartbeats,
    Scenario,
    beats_text,
    is_error_result,
    lag_text,
    limiter_changes,
    measure,
    say,
)

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


async def scenario_fanout(scenario: Scenario) -> dict[str, Any]:
    args, runtime, ssl_ctx = scenario.args, scenario.runtime, scenario.ssl_ctx
    limits = limiter_changes(args)
    notes = []
    if runtime.supports("parked_waits_per_caller"):
        limits["parked_waits_per_caller"] = args.waiters
        notes.append(f"[limits] parked_waits_per_caller = {args.waiters} written to the bench's bridge config")
    else:
        notes.append("this runtime has no parked_waits_per_caller (no cap on parked waits): not written")
    for note in notes:
        say(f"fan-out: {note}")
    bridge = await scenario.start_bridge("fanout", 2, {"limits": limits})
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
