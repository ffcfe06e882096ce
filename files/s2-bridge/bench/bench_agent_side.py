#!/usr/bin/env python3
"""Agent-side start-up costs: what an agent's client waits for on every session and prompt.

It prints figures; it asserts nothing about timing. Everything runs on 127.0.0.1 against a
real `s2-bridge serve` over TLS (a CA made here; the clients verify it). The load average
(1 minute, os.getloadavg) at the start and end of every series is printed beside it: on a
shared box it explains most of the spread.

Series, each of --runs processes started one after the other:
1. proxy: spawn `s2-bridge mcp-proxy --credentials F` (the console script the agent config
   runs), write initialize + notifications/initialized + tools/list, time until the tools/list
   answer (what Codex waits about a second for), and until the answer to a first tools/call
   (heartbeat) sent right after it; stdin is then closed and the exit awaited (not timed).
   --baseline-proxy FILE runs the same series against an older proxy module (e.g. the
   SDK-based one: `git show REV:files/s2-bridge/src/s2_bridge/proxy.py > /tmp/old_proxy.py`).
2. hook: `s2-bridge hook --credentials F` with a UserPromptSubmit event on stdin, wall time
   from spawn to exit: bridge up with nothing new; bridge up with one new message per run
   (sent before the clock starts); a closed port; a black hole (a listening socket that never
   accepts: TCP connects, nothing answers) at the default deadline and at --timeout-s 0.5.

Bytecode: an installed runtime has its .pyc files (pip compiles them at install), while a dev
shell with PYTHONDONTWRITEBYTECODE=1 and the editable install recompiles s2_bridge on every
start. By default the children get PYTHONPYCACHEPREFIX=<work dir>/pycache (and may write it),
and one untimed run of each command fills it: the installed case. --no-bytecode-cache measures
the other one.

Run from the repo with the dev venv: .venv/bin/python files/s2-bridge/bench/bench_agent_side.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_bridge import HOST, Processes, free_port, make_pki, work_dir, write_config
from s2_bridge.agent.client import BridgeClient
from s2_bridge.agent.lean_http import HttpFailure, get_json, tls_context
from s2_bridge.contract.credentials import credentials_document, write_private_json

VENV_BIN = Path(sys.executable).parent
S2_BRIDGE = str(VENV_BIN / "s2-bridge")
PROMPT_EVENT = json.dumps({"hook_event_name": "UserPromptSubmit", "prompt": "go on"})
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
}
FRAMES = [
    INITIALIZE,
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]
HEARTBEAT = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "heartbeat", "arguments": {}}}


@dataclass
class Series:
    name: str
    runs: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    load_start: float
    load_end: float
    extra: dict[str, float]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def load1() -> float:
    return os.getloadavg()[0]


def series(name: str, samples: list[float], load_start: float, **extra: list[float]) -> Series:
    summary = {f"{key}_p50_ms": percentile(values, 0.5) * 1000 for key, values in extra.items()}
    summary |= {f"{key}_p99_ms": percentile(values, 0.99) * 1000 for key, values in extra.items()}
    result = Series(
        name=name,
        runs=len(samples),
        p50_ms=percentile(samples, 0.5) * 1000,
        p99_ms=percentile(samples, 0.99) * 1000,
        max_ms=max(samples) * 1000,
        load_start=load_start,
        load_end=load1(),
        extra=summary,
    )
    extras = "".join(f"; {key.replace('_ms', '')} {value:,.0f} ms" for key, value in summary.items())
    print(
        f"{name:44s} p50 {result.p50_ms:7,.0f} ms  p99 {result.p99_ms:7,.0f} ms  max {result.max_ms:7,.0f} ms"
        f"{extras}   (load avg {result.load_start:.2f} -> {result.load_end:.2f}, {result.runs} runs)",
        flush=True,
    )
    return result


# --- the bridge and the identities -------------------------------------------------------------------


def start_bridge(workdir: Path, procs: Processes) -> tuple[str, str, str]:
    """A TLS bridge on a free port: (bridge_url, ca_file, admin token)."""
    data = workdir / "data"
    data.mkdir(mode=0o700)
    tls = make_pki(workdir)
    port = free_port()
    config = write_config(workdir, data, port, tls)
    log = workdir / "bridge.log"
    process = procs.start([sys.executable, "-m", "s2_bridge.cli", "serve", "--config", str(config)], log)
    url = f"https://{HOST}:{port}/mcp"
    context = tls_context(tls[0], str(config))
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(url, "", "/healthz", context=context, deadline=time.monotonic() + 2)
            break
        except HttpFailure:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not start:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    return url, tls[0], (data / "admin.token").read_text().strip()


async def make_identities(url: str, ca_file: str, admin_token: str, folder: Path) -> dict[str, Any]:
    async with BridgeClient(url, admin_token, ca_file=ca_file) as admin:
        created = await admin.call(
            "create_conversation", my_role="s2-orchestrator", partner_role="worker-3-bench", worker_id="3"
        )
        lead = await admin.call("rotate_lead")
    worker = credentials_document(created, url, ca_file) | {"coordinator_token": ""}
    write_private_json(str(folder / "s2-worker-3-credentials.json"), worker)
    write_private_json(str(folder / "s2-lead-credentials.json"), credentials_document(lead, url, ca_file))
    return {"created": created, "lead_token": lead["lead_token"]}


async def send_to_worker(url: str, ca_file: str, lead_token: str, text: str) -> None:
    async with BridgeClient(url, lead_token, ca_file=ca_file) as lead:
        await lead.call("send_to_partner", message=text, to="3")


# --- the proxy -----------------------------------------------------------------------------------------


def proxy_command(credentials: Path, baseline: Path | None) -> list[str]:
    if baseline is None:
        return [S2_BRIDGE, "mcp-proxy", "--credentials", str(credentials)]
    code = (
        "import argparse, logging, sys; sys.path.insert(0, sys.argv[1]); "
        "logging.basicConfig(level='WARNING'); "
        f"import {baseline.stem} as old; sys.exit(old.run(argparse.Namespace(credentials=sys.argv[2])))"
    )
    return [sys.executable, "-c", code, str(baseline.parent), str(credentials)]


CHILD_ENV = dict(os.environ)


def child_env(workdir: Path, bytecode_cache: bool) -> None:
    """The environment of every timed child (see the module's docstring)."""
    if bytecode_cache:
        CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    else:
        CHILD_ENV["PYTHONDONTWRITEBYTECODE"] = "1"


def one_proxy_run(command: list[str]) -> tuple[float, float]:
    """(seconds to the tools/list answer, seconds to the first tools/call answer)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=CHILD_ENV
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"".join(json.dumps(frame).encode() + b"\n" for frame in FRAMES))
    process.stdin.flush()
    listed = call = 0.0
    while not call:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the proxy closed stdout early")
        reply = json.loads(line)
        if reply.get("id") == 2:
            listed = time.perf_counter() - started
            if not reply["result"]["tools"]:
                raise RuntimeError("empty tools/list")
            process.stdin.write(json.dumps(HEARTBEAT).encode() + b"\n")
            process.stdin.flush()
        elif reply.get("id") == 3:
            call = time.perf_counter() - started
            if reply["result"].get("isError"):
                raise RuntimeError(f"heartbeat failed: {reply['result']}")
    process.stdin.close()
    process.wait(timeout=30)
    return listed, call


def proxy_series(name: str, command: list[str], runs: int) -> Series:
    one_proxy_run(command)  # untimed: fills the bytecode cache
    start = load1()
    listed: list[float] = []
    calls: list[float] = []
    for _ in range(runs):
        first, call = one_proxy_run(command)
        listed.append(first)
        calls.append(call)
    return series(name, listed, start, first_call=calls)


# --- the hook ------------------------------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_hook_run(credentials: Path, *extra: str) -> tuple[float, float, str]:
    """(wall seconds from spawn to exit, CPU seconds of the process, its stdout)."""
    cpu = children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [S2_BRIDGE, "hook", "--credentials", str(credentials), *extra],
        input=PROMPT_EVENT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=CHILD_ENV,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"hook exited {done.returncode}: {done.stderr}")
    return elapsed, children_cpu() - cpu, done.stdout


def hook_series(name: str, credentials: Path, runs: int, *extra: str, before: Callable[[], None] | None = None,
                expect_output: bool | None = None) -> Series:  # fmt: skip
    start = load1()
    samples: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        if before is not None:
            before()
        elapsed, used, stdout = one_hook_run(credentials, *extra)
        if expect_output is not None and bool(stdout) != expect_output:
            raise RuntimeError(f"{name}: unexpected output {stdout[:200]!r}")
        samples.append(elapsed)
        cpu.append(used)
    return series(name, samples, start, cpu=cpu)


def unreachable_file(source: Path, folder: Path, port: int) -> Path:
    """The worker's file pointing at another port (its own state file, beside it)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    document = json.loads(source.read_text())
    document["bridge_url"] = f"https://{HOST}:{port}/mcp"
    path = folder / source.name
    write_private_json(str(path), document)
    return path


def run_hooks(args: argparse.Namespace, workdir: Path, url: str, ca_file: str, ids: dict[str, Any]) -> list[Series]:
    worker = workdir / "s2-worker-3-credentials.json"
    lead_token = ids["lead_token"]
    results = []
    one_hook_run(worker)  # untimed: fills the bytecode cache; the cursor starts at the read cursor
    results.append(hook_series("hook, bridge up, nothing new", worker, args.runs, expect_output=False))
    counter = iter(range(1_000_000))

    def new_message() -> None:
        asyncio.run(send_to_worker(url, ca_file, lead_token, f"bench message {next(counter)}"))

    results.append(
        hook_series("hook, bridge up, 1 new message", worker, args.runs, before=new_message, expect_output=True)
    )
    closed = unreachable_file(worker, workdir / "closed", free_port())
    results.append(hook_series("hook, closed port", closed, args.runs, expect_output=False))
    with socket.socket() as hole:
        hole.bind((HOST, 0))
        hole.listen(1024)  # never accepts: the kernel completes the TCP handshake, nothing answers
        holed = unreachable_file(worker, workdir / "hole", hole.getsockname()[1])
        runs = max(3, args.runs // 3)
        results.append(hook_series("hook, black hole, default deadline (1.5 s)", holed, runs, expect_output=False))
        results.append(hook_series("hook, black hole, --timeout-s 0.5", holed, runs, "--timeout-s", "0.5"))
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="processes per series (default 30)")
    parser.add_argument("--baseline-proxy", type=Path, help="an older proxy module to run the same proxy series on")
    parser.add_argument("--skip", default="", help="comma-separated: proxy,hook")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="children compile s2_bridge on every start")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    procs = Processes()
    results: list[Series] = []
    with work_dir("s2-bench-agent-", procs, args.keep) as workdir:
        child_env(workdir, not args.no_bytecode_cache)
        cache = "off (compiled on every start)" if args.no_bytecode_cache else "on (an installed runtime)"
        print(f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}; bytecode cache {cache}", flush=True)
        url, ca_file, admin_token = start_bridge(workdir, procs)
        ids = asyncio.run(make_identities(url, ca_file, admin_token, workdir))
        worker = workdir / "s2-worker-3-credentials.json"
        if "proxy" not in skip:
            results.append(proxy_series("proxy: spawn -> tools/list answer", proxy_command(worker, None), args.runs))
            if args.baseline_proxy:
                command = proxy_command(worker, args.baseline_proxy.resolve())
                results.append(proxy_series(f"baseline {args.baseline_proxy.name}", command, args.runs))
        if "hook" not in skip:
            results.extend(run_hooks(args, workdir, url, ca_file, ids))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
