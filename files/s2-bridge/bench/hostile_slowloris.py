"""Scenario A of bench_hostile.py: slowloris beside parked waits and real heartbeats."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench_bridge import HOST, Conn, CpuMeter, fmt, load_average, memory_mb, percentile
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


async def scenario_slowloris(scenario: Scenario) -> dict[str, Any]:
    args, ssl_ctx = scenario.args, scenario.ssl_ctx
    limits = limiter_changes(args)
    cap = args.parked_waits
    if cap != 4:
        limits["parked_waits_per_caller"] = cap
    bridge = await scenario.start_bridge("slowloris", 2, {"limits": limits})
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
