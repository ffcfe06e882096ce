#!/usr/bin/env python3
"""CPU per call of the bridge's ASGI app itself, without HTTP and without sockets: the same MCP
heartbeat tools/call, lean heartbeat and bare UPSERT as bench_bridge.py, driven in-process
through fake ASGI receive/send, timed with process CPU time (so waiting for a CPU on a busy
box does not count). Optionally prints a cProfile of the MCP path.

Run: .venv/bin/python files/s2-bridge/bench/inproc_cost.py [--calls 5000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from s2_bridge.contract import tokens
from s2_bridge.contract.config import load_bridge_config
from s2_bridge.server.serve import build
from s2_bridge.server.store.sqlite import SQLiteStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bare_app import BareApp

PROTOCOL = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 1),
        "state": {},
    }


async def call(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bytes]:
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # a disconnect never comes in this harness
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope(path, headers), receive, send)
    return status, b"".join(chunks)


async def measure(name: str, calls: int, one: Callable[[int], Awaitable[tuple[int, bytes]]]) -> float:
    for i in range(min(200, calls)):  # warm-up
        status, body = await one(i)
        if status != 200 or (b'"ok":true' not in body and b'"ok": true' not in body):
            raise RuntimeError(f"{name}: HTTP {status} {body[:300]!r}")
    start = time.process_time()
    for i in range(calls):
        await one(i)
    per_call = (time.process_time() - start) / calls * 1e6
    print(f"{name:<40} {per_call:7.0f} us CPU per call ({calls} calls)", flush=True)
    return per_call


async def run(args: argparse.Namespace, workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir(mode=0o700)
    config_path = workdir / "bridge.toml"
    config_path.write_text(
        f'[storage]\npath = "{data / "bridge.db"}"\n[auth]\nadmin_token_file = "{data / "admin.token"}"\n'
        "[limits]\ncalls_per_s = 100000\ncalls_burst = 100000\n"
    )
    store = SQLiteStore(str(data / "bridge.db"))
    worker_tokens: list[str] = []
    now = time.time()
    for index in range(args.workers):
        worker = tokens.new_token("worker")
        store.create_conversation(
            worker_id=f"w{index:06d}",
            coordinator_role="s2-orchestrator",
            worker_role=f"bench-worker-{index}",
            coordinator_hash=tokens.token_hash(tokens.new_token("coordinator")),
            worker_hash=tokens.token_hash(worker),
            now=now,
            expires_at=now + 86400,
        )
        worker_tokens.append(worker)
    store.close()
    app, bridge_store = build(load_bridge_config(str(config_path)))
    bare = BareApp(str(data / "bare.db"))
    rng = random.Random(1)
    picks = [rng.randrange(args.workers) for _ in range(args.calls)]
    mcp_headers = [
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", PROTOCOL.encode()),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"heartbeat"),
    ]

    def auth(i: int) -> tuple[bytes, bytes]:
        return (b"authorization", f"Bearer {worker_tokens[picks[i % len(picks)]]}".encode())

    def mcp_body(i: int) -> bytes:
        message = {
            "jsonrpc": "2.0",
            "id": i,
            "method": "tools/call",
            "params": {"name": "heartbeat", "arguments": {}, "_meta": META},
        }
        return json.dumps(message, separators=(",", ":")).encode()

    async def mcp(i: int) -> tuple[int, bytes]:
        return await call(app, "/mcp", [*mcp_headers, auth(i)], mcp_body(i))

    async def lean(i: int) -> tuple[int, bytes]:
        return await call(app, "/v1/heartbeat", [(b"content-type", b"application/json"), auth(i)], b"{}")

    async def bare_call(i: int) -> tuple[int, bytes]:
        return await call(bare, "/", [(b"x-worker", str(picks[i % len(picks)]).encode())], b"{}")

    async with app.lifespan():
        results = {
            "mcp": await measure("MCP heartbeat tool (app only)", args.calls, mcp),
            "lean": await measure("lean /v1/heartbeat (app only)", args.calls, lean),
            "bare": await measure("bare UPSERT app (app only)", args.calls, bare_call),
        }
        print(
            f"ratios of CPU per call: bare/MCP {results['bare'] / results['mcp']:.2f}, "
            f"bare/lean {results['bare'] / results['lean']:.2f}"
        )
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(args.calls):
                await mcp(i)
            profiler.disable()
            stats = pstats.Stats(profiler)
            print("\ncProfile of the MCP path, by own time:")
            stats.sort_stats("tottime").print_stats(25)
            print("cProfile of the MCP path, cumulative, selected functions:")
            stats.sort_stats("cumulative").print_stats(
                r"app.py.*(__call__|_authenticate)|tools.py.*(heartbeat|wrapper|ArgumentErrors)|service.py.*heartbeat"
                r"|_otel.py|handle_modern_request|_to_jsonrpc_response|serve_one|validate_client_request"
                r"|serialize_server_result|call_tool|convert_result|streamable_http_manager.py.*_handle_request"
            )
    bridge_store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="CPU per call of the bridge app, in-process")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="cProfile the MCP path")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="s2-inproc-"))
    try:
        uvloop.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
