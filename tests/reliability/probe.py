"""The reliability suite's agent inside a lab container: runs with the runtime's venv python and
talks to the bridge with the runtime's own client (real MCP over TLS), the way agents do.

  probe.py calls < PLAN.json       run tool calls, print one JSON line per call
  probe.py listen --credentials F --match TEXT --count N --deadline-s S
                                   long-poll wait_for_messages, print one JSON line per message
  probe.py dump --credentials F [--side worker|coordinator|lead] [--url U] [--match TEXT]
                                   every message this side can read (after_id paging, no ack)
  probe.py tls-server --cert C --key K --port P --seconds S [--stop-file F]
                                   a TLS listener with any certificate (the impostor test)

Tokens are only ever read from files named in the plan or on the command line; every line
printed has token-shaped strings replaced, so no token reaches the controller's output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from s2_bridge.agent.client import AuthRefused, BridgeClient, BridgeClientError, BridgeUnavailable, ToolCallError
from s2_bridge.contract.credentials import write_private_json
from s2_bridge.contract.tokens import TOKEN_RE

WAIT_S = 25
# A connection that never opened carried no request, so trying again cannot store anything
# twice. The lab's DNS (aardvark-dns) now and then drops a lookup after a podman network
# disconnect/connect, which the client reports as a connect timeout; the harness retries those
# and counts them, so the figures show how often it happened.
NEVER_SENT = ("ConnectTimeout", "name resolution", "Name or service not known")
CONNECT_RETRIES = 3
retried_connects = 0


def emit(record: dict[str, Any]) -> None:
    print(TOKEN_RE.sub("<token>", json.dumps(record)), flush=True)


def read_token(path: str, side: str) -> str:
    text = Path(path).read_text(encoding="utf-8")
    if side == "admin":
        return text.strip()
    return str(json.loads(text)[f"{side}_token"])


def read_endpoint(path: str, side: str, url: str | None, ca: str | None) -> tuple[str, str | None]:
    """The bridge URL and CA: the plan's, else those in the credentials file."""
    if side != "admin" and (url is None or ca is None):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        url = url or data.get("bridge_url")
        ca = ca or data.get("ca_file")
    if not url:
        raise SystemExit(f"probe: no bridge URL for {path}")
    return url, ca


def never_sent(exc: BaseException) -> bool:
    return isinstance(exc, BridgeUnavailable) and any(text in str(exc) for text in NEVER_SENT)


async def call_tool(client: BridgeClient, tool: str, args: dict[str, Any], connect_retries: int) -> dict[str, Any]:
    """One call; a connection that never opened is tried again up to `connect_retries` times."""
    global retried_connects  # noqa: PLW0603 - one counter per probe process
    while True:
        try:
            if tool == "heartbeat_route":
                return await client.heartbeat()
            return await client.call(tool, **args)
        except BridgeUnavailable as exc:
            if connect_retries <= 0 or not never_sent(exc):
                raise
            connect_retries -= 1
            retried_connects += 1
            await asyncio.sleep(1.0)


def outcome(exc: BridgeClientError) -> dict[str, Any]:
    if isinstance(exc, ToolCallError):
        return {"ok": False, "kind": "tool_error", "error": exc.to_dict()["error"]}
    kind = "auth_refused" if isinstance(exc, AuthRefused) else "unavailable"
    return {"ok": False, "kind": kind, "error": {"message": str(exc)}}


# --- calls -----------------------------------------------------------------------------------


class Clients:
    """One open BridgeClient per (token file, side, url): calls reuse their connection."""

    def __init__(self, default_url: str | None, default_ca: str | None) -> None:
        self.default_url = default_url
        self.default_ca = default_ca
        self._open: dict[tuple[str, str], BridgeClient] = {}

    async def get(self, path: str, side: str, fresh: bool = False) -> BridgeClient:
        key = (path, side)
        if fresh and key in self._open:
            await self._open.pop(key).__aexit__(None, None, None)
        if key not in self._open:
            url, ca = read_endpoint(path, side, self.default_url, self.default_ca)
            client = BridgeClient(url, read_token(path, side), ca_file=ca)
            self._open[key] = await client.__aenter__()
        return self._open[key]

    async def close(self) -> None:
        for client in self._open.values():
            await client.__aexit__(None, None, None)


async def sleep_until(at: float | None, stop_file: str | None) -> bool:
    """Wait for wall-clock time `at`; False as soon as `stop_file` exists."""
    while True:
        if stop_file and Path(stop_file).exists():
            return False
        delay = 0.0 if at is None else float(at) - time.time()
        if delay <= 0:
            return True
        await asyncio.sleep(min(delay, 0.5))


async def one_call(clients: Clients, index: int, call: dict[str, Any]) -> None:
    """Run one planned call (at its wall-clock `at`, retrying as the plan says) and print it."""
    if not await sleep_until(call.get("at"), call.get("stop_file")):
        return  # the controller said stop: the rest of the plan is not sent
    path, side, tool = call["token_file"], call["side"], call["tool"]
    attempts = int(call.get("attempts", 1))
    record: dict[str, Any] = {"index": index, "tag": call.get("tag")}
    t0 = time.time()
    for attempt in range(1, attempts + 1):
        # A refused token may mean a rotation just landed: reread the file for the next try.
        client = await clients.get(path, side, fresh=attempt > 1 and call.get("reload", False))
        try:
            result = await call_tool(client, tool, call.get("args", {}), int(call.get("connect_retries", 0)))
        except BridgeClientError as exc:
            record.update(outcome(exc), attempts=attempt)
            retry = isinstance(exc, AuthRefused | BridgeUnavailable) and attempt < attempts
            if retry:
                await asyncio.sleep(float(call.get("retry_delay_s", 0.5)))
                continue
            break
        else:
            saved = call.get("save_to")
            if saved:  # the result holds tokens: keep it in a 0600 file, print no token
                write_private_json(saved, result)
            record.update(ok=True, result=result, attempts=attempt)
            break
    record.update(t0=t0, t1=time.time(), retried_connects=retried_connects)
    emit(record)


async def run_calls(plan: dict[str, Any]) -> None:
    clients = Clients(plan.get("url"), plan.get("ca"))
    try:
        calls = plan["calls"]
        if plan.get("concurrent"):
            await asyncio.gather(*(one_call(clients, i, c) for i, c in enumerate(calls)))
        else:
            for index, call in enumerate(calls):
                await one_call(clients, index, call)
                gap = float(plan.get("gap_s", 0))
                if gap:
                    await asyncio.sleep(gap)
    finally:
        await clients.close()


# --- listen and dump -------------------------------------------------------------------------


async def drain(bridge: BridgeClient, after_id: int, match: str | None) -> tuple[int, list[dict[str, Any]]]:
    """Everything readable after `after_id`, paging with wait_for_messages (which never acks)."""
    found: list[dict[str, Any]] = []
    while True:
        page = await call_tool(bridge, "wait_for_messages", {"after_id": after_id, "timeout_s": 0}, CONNECT_RETRIES)
        if not page["messages"]:
            return after_id, found
        for message in page["messages"]:
            after_id = max(after_id, int(message["id"]))
            if match is None or match in message["message"]:
                found.append(message)


async def listen(args: argparse.Namespace) -> None:
    side = args.side
    url, ca = read_endpoint(args.credentials, side, args.url, args.ca)
    deadline = time.time() + args.deadline_s
    seen = 0
    async with BridgeClient(url, read_token(args.credentials, side), ca_file=ca) as bridge:
        after_id, _ = await drain(bridge, 0, None)  # skip what was there before
        emit({"event": "ready", "after_id": after_id, "at": time.time()})
        while seen < args.count and time.time() < deadline:
            wait = max(0, min(WAIT_S, int(deadline - time.time())))
            try:
                page = await bridge.call("wait_for_messages", after_id=after_id, timeout_s=wait)
            except BridgeUnavailable as exc:  # a read: always safe to try again until the deadline
                global retried_connects  # noqa: PLW0603 - one counter per probe process
                retried_connects += 1
                emit({"event": "unavailable", "error": str(exc), "at": time.time()})
                await asyncio.sleep(0.5)
                continue
            received_at = time.time()
            for message in page["messages"]:
                after_id = max(after_id, int(message["id"]))
                if args.match in message["message"]:
                    seen += 1
                    emit({"event": "message", "received_at": received_at, **message})
    emit({"event": "done", "seen": seen, "at": time.time(), "retried_connects": retried_connects})


async def dump(args: argparse.Namespace) -> None:
    url, ca = read_endpoint(args.credentials, args.side, args.url, args.ca)
    async with BridgeClient(url, read_token(args.credentials, args.side), ca_file=ca) as bridge:
        _, found = await drain(bridge, args.after_id, args.match)
    emit({"messages": found, "retried_connects": retried_connects})


# --- an impostor TLS server --------------------------------------------------------------------


def tls_server(args: argparse.Namespace) -> None:
    """Accept TLS handshakes with the given certificate for a while; count the clients that
    completed one (a client that trusts only the fleet CA must not)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    completed = attempted = 0
    deadline = time.time() + args.seconds
    with socket.create_server(("0.0.0.0", args.port), reuse_port=True) as server:
        server.settimeout(0.5)
        emit({"event": "ready", "port": args.port})
        while time.time() < deadline and not (args.stop_file and Path(args.stop_file).exists()):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            attempted += 1
            conn.settimeout(3)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    completed += 1
                    tls.sendall(b"HTTP/1.1 503 impostor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass
    emit({"event": "done", "attempted": attempted, "completed": completed})


def main() -> None:
    parser = argparse.ArgumentParser(prog="probe.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("calls")
    for name in ("listen", "dump"):
        p = sub.add_parser(name)
        p.add_argument("--credentials", required=True)
        p.add_argument("--side", default="worker", choices=["worker", "coordinator", "lead"])
        p.add_argument("--url")
        p.add_argument("--ca")
        p.add_argument("--match", default=None if name == "dump" else "")
        if name == "listen":
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--deadline-s", type=float, required=True)
        else:
            p.add_argument("--after-id", type=int, default=0)
    p = sub.add_parser("tls-server")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--stop-file", help="stop early once this file exists")
    args = parser.parse_args()
    if args.command == "calls":
        asyncio.run(run_calls(json.load(sys.stdin)))
    elif args.command == "listen":
        asyncio.run(listen(args))
    elif args.command == "dump":
        asyncio.run(dump(args))
    else:
        tls_server(args)


if __name__ == "__main__":
    main()
