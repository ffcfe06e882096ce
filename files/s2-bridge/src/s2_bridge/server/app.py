"""The bridge's ASGI application: authentication, the MCP endpoint, and two plain routes.

Routes:
- POST /mcp           MCP Streamable HTTP (stateless, JSON responses: see PERFORMANCE.md)
- POST /v1/heartbeat  the lean heartbeat path for daemons (~3x cheaper than an MCP call)
- GET  /v1/updates    new messages and open tasks for the agents' hook command
- GET  /healthz       liveness, no token, no data
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from s2_bridge.contract.errors import BridgeError
from s2_bridge.contract.logsafe import log_text
from s2_bridge.contract.models import AgentStatus
from s2_bridge.server.caller import Caller
from s2_bridge.server.ratelimit import CallerLimiter, FailureLimiter
from s2_bridge.server.retention import Retention
from s2_bridge.server.service import BridgeService
from s2_bridge.server.tools import CALLER_KEY, build_mcp

log = logging.getLogger("s2_bridge.app")

MAX_HEARTBEAT_BODY = 4096
UPDATES_LIMIT_DEFAULT = 20


class HeartbeatBody(BaseModel, extra="forbid"):
    status: AgentStatus | None = None


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BridgeApp:
    """Authenticates every request to /mcp and /v1/*, then dispatches."""

    def __init__(self, service: BridgeService) -> None:
        self.service = service
        limits = service.limits
        self.callers = CallerLimiter(limits.calls_per_s, limits.calls_burst)
        self.failures = FailureLimiter(limits.auth_failures_per_min)
        self.retention = Retention(service.store, service.config.retention, service.clock)
        self.mcp = build_mcp(service)
        # Bearer tokens already defeat DNS rebinding (a browser cannot attach them), and the
        # bridge is reached by name and address from other machines.
        self.mcp_app: ASGIApp = self.mcp.streamable_http_app(
            json_response=True,
            stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.mcp.session_manager.run():
            # retention sweeps in the background, a transaction at a time (retention.py)
            sweeper = asyncio.create_task(self.retention.run_forever(), name="s2-retention")
            try:
                yield
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await _send_json(send, 200, {"ok": True})
            return
        if path.rstrip("/") != "/mcp" and not path.startswith("/v1/"):
            await _send_json(send, 404, {"error": {"code": "not_found", "message": f"no route {log_text(path)}"}})
            return
        caller = await self._authenticate(scope, send)
        if caller is None:
            return
        if not self.callers.allow(caller.key):
            retry = max(1, round(self.callers.retry_after(caller.key)))
            await _send_json(
                send,
                429,
                {
                    "error": {
                        "code": "rate_limited",
                        "message": "too many calls",
                        "fix": f"retry in {retry} s",
                    }
                },
                [(b"retry-after", str(retry).encode())],
            )
            return
        if path == "/v1/heartbeat":
            await self._heartbeat(caller, scope, receive, send)
            return
        if path == "/v1/updates":
            await self._updates(caller, scope, send)
            return
        if path.startswith("/v1/"):
            await _send_json(send, 404, {"error": {"code": "not_found", "message": f"no route {log_text(path)}"}})
            return
        if path != "/mcp":
            # Starlette's own slash redirect builds an absolute Location from the Host header.
            await _redirect_to_mcp(scope, send)
            return
        scope.setdefault("state", {})[CALLER_KEY] = caller
        await self.mcp_app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with self.lifespan():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def _authenticate(self, scope: Scope, send: Send) -> Caller | None:
        remote = log_text((scope.get("client") or ("unknown", 0))[0], 64)
        token = _bearer(scope)
        outcome = "missing bearer token" if token is None else self.service.authenticate(token, remote)
        if isinstance(outcome, Caller):
            return outcome
        count = self.failures.record(remote)
        limit = self.failures.per_minute
        # Audit each failure up to the limit, then one flood record per window: a flood must not
        # grow the audit table without bound.
        path = log_text(scope["path"])  # caller-supplied: escaped and capped in logs and audit
        if count <= limit:
            self.service.audit_auth_failure(remote, outcome, path)
            log.warning("refused %s from %s: %s", path, remote, log_text(outcome))
        elif count == limit + 1:
            self.service.audit_auth_flood(remote, path)
            log.warning("auth failures from %s over %d/min: answering 429", remote, limit)
        if self.failures.blocked(remote) and count > limit:
            await _send_json(
                send,
                429,
                {
                    "error": {
                        "code": "rate_limited",
                        "message": "too many failed authentications",
                        "fix": "wait a minute",
                    }
                },
                [(b"retry-after", b"60")],
            )
            return None
        await _send_json(
            send,
            401,
            {
                "error": {
                    "code": "unauthenticated",
                    "message": outcome,
                    "fix": "send Authorization: Bearer TOKEN with a current token from the credentials file",
                }
            },
            [(b"www-authenticate", b'Bearer error="invalid_token"')],
        )
        return None

    async def _heartbeat(self, caller: Caller, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await _send_json(send, 405, {"error": {"code": "method_not_allowed", "message": "use POST"}})
            return
        raw = await _read_body(receive, MAX_HEARTBEAT_BODY)
        if raw is None:
            await _send_json(send, 413, {"error": {"code": "too_large", "message": "body over 4 KiB"}})
            return
        try:
            body = HeartbeatBody.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            field = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "body"
            error = BridgeError(
                "invalid_argument",
                exc.errors()[0]["msg"],
                field=field,
                fix='send {"status": "working"} or {}',
            )
            await _send_json(send, 400, error.to_dict())
            return
        try:
            ack = self.service.heartbeat(caller, body.status)
        except BridgeError as exc:
            await _send_json(send, 403, exc.to_dict())
            return
        await _send_json(send, 200, ack.model_dump(mode="json"))

    async def _updates(self, caller: Caller, scope: Scope, send: Send) -> None:
        if scope["method"] != "GET":
            await _send_json(send, 405, {"error": {"code": "method_not_allowed", "message": "use GET"}})
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        try:
            after = _int_param(query, "after", None)
            limit = _int_param(query, "limit", UPDATES_LIMIT_DEFAULT)
            updates = self.service.updates(caller, after, limit if limit is not None else UPDATES_LIMIT_DEFAULT)
        except BridgeError as exc:
            await _send_json(send, 403 if exc.code == "forbidden" else 400, exc.to_dict())
            return
        await _send_json(send, 200, updates.model_dump(mode="json"))


async def _redirect_to_mcp(scope: Scope, send: Send) -> None:
    """307 from /mcp/ (and /mcp//...) to the canonical /mcp, with a relative Location."""
    query = scope.get("query_string", b"")
    location = b"/mcp" + (b"?" + query if query else b"")
    await send(
        {
            "type": "http.response.start",
            "status": 307,
            "headers": [(b"location", location), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def _int_param(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isdigit() or len(text) > 18:
        raise BridgeError(
            "invalid_argument", f"{name} must be a whole number", field=name, fix=f"pass {name}=N with N >= 0"
        )
    return int(text)
