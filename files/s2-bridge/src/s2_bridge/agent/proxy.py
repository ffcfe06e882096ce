"""`s2-bridge mcp-proxy`: a lean stdio MCP server in front of the bridge.

Any MCP client that speaks stdio reaches the bridge through it while the token stays in the
0600 credentials file (never on a command line or in the agent's config).

Clients such as Codex give a server about a second to list its tools, and importing the MCP
SDK alone takes longer than that, so this front speaks MCP's stdio framing itself
(newline-delimited JSON-RPC 2.0) and answers `initialize`, `ping` and `tools/list` from the
committed tool catalog (s2_bridge/contract/tool_catalog.json, filtered by permissions.tools_for) with
no SDK import and no round trip. `tools/call` goes to the bridge through BridgeClient, whose
import starts on a thread at start-up so the first call finds it loaded. Calls run
concurrently (a long wait_for_messages never holds up a ping or another call);
`notifications/cancelled` cancels one. Bridge failures come back as is_error results whose text
is the bridge's `{"error": {...}}` JSON. Only protocol frames go to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from s2_bridge import __version__
from s2_bridge.agent.lean_http import tls_context
from s2_bridge.contract import catalog, exitcodes
from s2_bridge.contract.credentials import Credentials, CredentialsWatcher

log = logging.getLogger("s2_bridge.proxy")

# The values of mcp_types.version.HANDSHAKE_PROTOCOL_VERSIONS, oldest first. Importing that
# module loads the whole of mcp_types (~0.35 s), so they are copied here; test_proxy.py
# fails when the SDK's tuple changes.
HANDSHAKE_PROTOCOL_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
SERVER_NAME = "s2-bridge-proxy"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a 50,000-character message fits many times over
EOF_GRACE_S = 2.0  # after stdin closes, calls in flight get this long to answer
CALLS_MODULE = "s2_bridge.agent.proxy_calls"
TOO_LONG = object()  # what the reader hands over for a frame over MAX_FRAME_BYTES


def error_body(code: str, message: str, fix: str | None = None, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    if fix is not None:
        body["fix"] = fix
    return {"error": body}


def tool_error(body: dict[str, Any]) -> dict[str, Any]:
    """An is_error tools/call result carrying the error JSON as its text."""
    return {"content": [{"type": "text", "text": json.dumps(body)}], "isError": True}


def tool_success(result: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(result)}], "structuredContent": result, "isError": False}


def instructions(credentials: Credentials) -> str:
    common = (
        "Read messages with check_messages and pass ack_through=<id of the last message you handled> "
        "to mark them read; wait_for_messages blocks until one arrives; answer with send_to_partner "
        "(reply_to=<message id>). Errors are JSON {error: {code, field, message, fix}}."
    )
    if credentials.side == "lead":
        who = (
            f"the lead ({credentials.worker_role}): every worker's messages reach you; send_to_partner "
            'takes to=<worker id or role>, "all" or a list; assign_task, reassign_task and fleet_status '
            "run the fleet"
        )
    elif credentials.side == "worker":
        who = f"worker {credentials.worker_id} ({credentials.worker_role}); report task progress with update_task"
    else:
        who = f"the coordinator of worker {credentials.worker_id}'s conversation ({credentials.conversation_id})"
    return f"S2 fleet bridge, through a local proxy, as {who}. {common}"


class FrameWriter:
    """Writes one JSON-RPC frame per line to stdout, from either thread; a closed stdout ends
    writing quietly."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.closed = False
        self._lock = threading.Lock()

    def send(self, frame: dict[str, Any]) -> None:
        # ensure_ascii: any string the bridge returned (even a lone surrogate) encodes safely.
        data = json.dumps(frame, separators=(",", ":")).encode("ascii") + b"\n"
        with self._lock:
            if self.closed:
                return
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                self.closed = True
                log.info("stdout is closed: no more answers")


def frames(stream: BinaryIO) -> Iterator[Any]:
    """Non-empty lines of stdin; TOO_LONG stands for a frame over MAX_FRAME_BYTES."""
    while line := stream.readline(MAX_FRAME_BYTES + 1):
        if len(line) > MAX_FRAME_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(MAX_FRAME_BYTES)) and not rest.endswith(b"\n"):
                pass  # drop the rest of the oversized frame
            yield TOO_LONG
        elif line.strip():
            yield line


class BridgeThread:
    """The thread that runs tool calls. From start-up it imports proxy_calls (BridgeClient:
    httpx2 and the MCP SDK, about a second), then runs its event loop. Calls that arrive
    before that wait in a list; the front never waits for this thread."""

    def __init__(self, watcher: CredentialsWatcher, writer: FrameWriter) -> None:
        self.watcher = watcher
        self.writer = writer
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, str, dict[str, Any]]] = []
        self._runner: Any = None  # proxy_calls.CallRunner once loaded
        self._failure: str | None = None
        self._submitted = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="bridge", daemon=True).start()

    def _run(self) -> None:
        try:
            runner = importlib.import_module(CALLS_MODULE).CallRunner(self.watcher, self.writer.send)
        except BaseException as exc:  # answered to every call from now on
            self._fail(f"cannot load the bridge client: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._runner = runner
            pending, self._pending = self._pending, []
        for call in pending:
            runner.submit(*call)
        self.ready.set()
        runner.run()

    def _fail(self, problem: str) -> None:
        log.error("%s", problem)
        with self._lock:
            self._failure = problem
            pending, self._pending = self._pending, []
        for request_id, _, _ in pending:
            self._answer_broken(request_id)
        self.ready.set()

    def _answer_broken(self, request_id: Any) -> None:
        body = error_body("proxy_broken", self._failure or "", "reinstall s2-bridge on this host")
        self.writer.send({"jsonrpc": "2.0", "id": request_id, "result": tool_error(body)})

    def submit(self, request_id: Any, name: str, arguments: dict[str, Any]) -> None:
        with self._lock:
            self._submitted += 1
            runner, failed = self._runner, self._failure is not None
            if runner is None and not failed:
                self._pending.append((request_id, name, arguments))
                return
        if failed:
            self._answer_broken(request_id)
        else:
            runner.submit(request_id, name, arguments)

    def cancel(self, request_id: Any) -> None:
        """notifications/cancelled: the call stops and gets no answer."""
        with self._lock:
            self._pending = [call for call in self._pending if call[0] != request_id]
            runner = self._runner
        if runner is not None:
            runner.cancel(request_id)

    def finish(self, grace_s: float) -> None:
        """End of input: calls in flight get grace_s to answer; the rest are cancelled."""
        if not self._submitted:
            return  # no call was ever made: nothing to wait for, not even the import
        started = time.monotonic()
        if self.ready.wait(grace_s) and self._runner is not None:
            self._runner.finish(max(0.0, grace_s - (time.monotonic() - started)))


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(message)


def _request_id(message: Any) -> Any:
    """The id of a request (a string or an integer; None for a notification), or RpcError for
    anything that is not a JSON-RPC object or whose id has another type."""
    if not isinstance(message, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC object (batches are not supported)")
    if "id" not in message:
        return None
    value = message["id"]
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string or an integer")


class StdioProxy:
    """The front: answers each frame on the main thread at once, and hands tools/call to the
    bridge thread, where calls overlap."""

    def __init__(
        self, watcher: CredentialsWatcher, writer: FrameWriter, bridge: BridgeThread, tools: list[dict[str, Any]]
    ) -> None:
        self.watcher = watcher
        self.writer = writer
        self.bridge = bridge
        self.catalog = tools

    @property
    def tools(self) -> list[dict[str, Any]]:
        return catalog.tools_for(self.watcher.current.side, self.catalog)

    def reply(self, request_id: Any, result: dict[str, Any]) -> None:
        self.writer.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def reply_error(self, request_id: Any, error: RpcError) -> None:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.data is not None:
            body["data"] = error.data
        self.writer.send({"jsonrpc": "2.0", "id": request_id, "error": body})

    def handle(self, line: Any) -> None:
        """One frame from stdin: answer it, start a call, or act on a notification."""
        if line is TOO_LONG:
            self.reply_error(None, RpcError(PARSE_ERROR, f"Parse error: frame over {MAX_FRAME_BYTES} bytes"))
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            self.reply_error(None, RpcError(PARSE_ERROR, "Parse error: not a JSON value"))
            return
        if isinstance(message, dict) and "method" not in message and ("result" in message or "error" in message):
            return  # an answer to a request; this server sends none
        request_id = None
        try:
            request_id = _request_id(message)
            self._dispatch(message, request_id)
        except RpcError as exc:
            self.reply_error(request_id, exc)

    def _dispatch(self, message: dict[str, Any], request_id: Any) -> None:
        method = message.get("method")
        params = message.get("params", {})
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            raise RpcError(INVALID_REQUEST, 'Invalid Request: needs "jsonrpc": "2.0" and a string "method"')
        if "id" not in message:
            if isinstance(params, dict):
                self._notification(method, params)
            return  # a notification is never answered, not even when it is wrong
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: params must be an object")
        if method == "tools/call":
            self._start_call(request_id, params)
        elif method == "initialize":
            self.reply(request_id, self._initialize(params))
        elif method == "ping":
            self.reply(request_id, {})
        elif method == "tools/list":
            self.reply(request_id, {"tools": self.tools})
        else:  # server/discover among them: the SDK's auto mode then falls back to initialize
            raise RpcError(METHOD_NOT_FOUND, "Method not found", method)

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else HANDSHAKE_PROTOCOL_VERSIONS[-1]
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": __version__},
            "instructions": instructions(self.watcher.current),
        }

    def _notification(self, method: str, params: dict[str, Any]) -> None:
        if method != "notifications/cancelled":
            return  # notifications/initialized and the rest need nothing from us
        request_id = params.get("requestId")
        if isinstance(request_id, str | int):
            self.bridge.cancel(request_id)

    def _start_call(self, request_id: Any, params: dict[str, Any]) -> None:
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs a string name and an object arguments")
        allowed = [tool["name"] for tool in self.tools]
        if name not in allowed:
            problem, fix = f"{name!r} is not available here", f"use one of: {', '.join(allowed)}"
            self.reply(request_id, tool_error(error_body("unknown_tool", problem, fix, "name")))
            return
        self.bridge.submit(request_id, name, arguments)


def describe(credentials: Credentials) -> str:
    if credentials.side == "lead":
        return f"the lead ({credentials.worker_role})"
    return f"the {credentials.side} of conversation {credentials.conversation_id}"


class Stop(Exception):
    """SIGTERM: stop reading and exit 0."""


def _stop(signum: int, frame: Any) -> None:
    raise Stop


def serve(watcher: CredentialsWatcher, tools: list[dict[str, Any]]) -> int:
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must never corrupt the protocol stream
    writer = FrameWriter(out)
    bridge = BridgeThread(watcher, writer)
    bridge.start()
    proxy = StdioProxy(watcher, writer, bridge, tools)
    log.info("proxying stdio to %s as %s", watcher.current.bridge_url, describe(watcher.current))
    signal.signal(signal.SIGTERM, _stop)
    try:
        for line in frames(sys.stdin.buffer):
            proxy.handle(line)
        log.info("stdin closed: exiting")
        bridge.finish(EOF_GRACE_S)
    except Stop:
        log.info("stopping on request")
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    watcher = CredentialsWatcher(args.credentials)  # a bad first file: ConfigError, exit 78
    if watcher.current.bridge_url.startswith("https://"):
        tls_context(watcher.current.ca_file, watcher.path)  # so is a CA file that cannot be loaded
    try:
        tools = catalog.load()
    except catalog.CatalogError as exc:
        print(f"s2-bridge mcp-proxy: {exc}", file=sys.stderr)
        return exitcodes.UNEXPECTED
    return serve(watcher, tools)
