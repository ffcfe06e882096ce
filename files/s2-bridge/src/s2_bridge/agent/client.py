"""BridgeClient: the one way the runtime's commands and daemons talk to the bridge.

It owns one keep-alive HTTP transport (bearer token, TLS verified against the fleet CA) and
turns every failure into one of three exceptions the callers act on:
BridgeUnavailable (back off and retry), AuthRefused (stop: exit 77) and ToolCallError (the
bridge refused this call and said why). No printing here; callers decide what to show.

Each tool call runs in its own short MCP client session over the shared transport: a
network error inside an MCP session tears the whole session down, so scoping it to one
call keeps one failure from poisoning later calls. After the first call the negotiated
protocol is reused, so a call costs one HTTP request.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from s2_bridge.contract.config import AdminConfig
from s2_bridge.contract.credentials import Credentials, read_token_file
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.loopback import PLAIN_HTTP_FIX, plain_http_refusal

CALL_TIMEOUT_S = 30.0
HEARTBEAT_TIMEOUT_S = 10.0
LONG_POLL_MARGIN_S = 15.0  # wait_for_messages may hold a call for timeout_s; allow that plus this
MAX_LONG_POLL_S = 60.0
AUTH_STATUSES = (401, 403)


class BridgeClientError(Exception):
    """Base of every failure BridgeClient reports."""


class BridgeUnavailable(BridgeClientError):
    """The bridge could not be reached or did not answer in time (a daemon retries)."""


class AuthRefused(BridgeClientError):
    """The bridge refused the token: expired, revoked, rotated or wrong (exit 77)."""


class ToolCallError(BridgeClientError):
    """The bridge answered a tool call with a structured error."""

    def __init__(self, code: str, message: str, field: str | None = None, fix: str | None = None) -> None:
        self.code = code
        self.field = field
        self.message = message
        self.fix = fix
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f" ({self.field})" if self.field else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.code}{where}: {self.message}{fix}"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.fix is not None:
            body["fix"] = self.fix
        return {"error": body}


def parse_tool_error(text: str) -> ToolCallError:
    """Read `{"error": {...}}` out of an is_error result's text, tolerating a prefix such as
    "Error executing tool X: " that the SDK puts in front of a raised error."""
    start = text.find("{")
    if start != -1:
        try:
            body = json.loads(text[start:])
        except json.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return ToolCallError(
                code=error["code"],
                message=str(error.get("message", "")),
                field=error.get("field") if isinstance(error.get("field"), str) else None,
                fix=error.get("fix") if isinstance(error.get("fix"), str) else None,
            )
    return ToolCallError(code="tool_error", message=text.strip() or "the tool failed without a message")


def _result_text(result: mcp_types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, mcp_types.TextContent))


def tool_result_to_dict(result: mcp_types.CallToolResult) -> dict[str, Any]:
    """The JSON object a successful call returned, or ToolCallError for an is_error result."""
    if result.is_error:
        raise parse_tool_error(_result_text(result))
    if isinstance(result.structured_content, dict):
        return result.structured_content
    # Older servers only send text; every bridge tool returns a JSON object there too.
    text = _result_text(result)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ToolCallError("bad_response", f"the bridge returned non-JSON text: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ToolCallError("bad_response", "the bridge returned JSON that is not an object")
    return value


def _leaves(exc: BaseException) -> list[BaseException]:
    """The concrete errors inside (possibly nested) exception groups, plus their causes."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(_leaves(inner))
        return found
    return [exc]


def heartbeat_url(bridge_url: str) -> str:
    """The lean heartbeat route lives at /v1/heartbeat on the bridge's origin."""
    parts = urlsplit(bridge_url)
    return urlunsplit((parts.scheme, parts.netloc, "/v1/heartbeat", "", ""))


def _ssl_context(ca_file: str | None, source: str | None = None) -> ssl.SSLContext | bool:
    """The TLS verification setting; a CA file that cannot be loaded is a ConfigError naming
    the file that points at it (`source`, a credentials or admin config file) when known."""
    if ca_file is None:
        return True  # http:// (tests) never uses it; https without a CA trusts the system store
    # Trust only the fleet CA: a certificate from any public CA is not the bridge.
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(
            source or ca_file,
            "ca_file" if source else None,
            f"{ca_file} cannot be loaded as a PEM CA certificate ({reason})",
            "install the fleet CA there or fix the path",
        ) from None


def _error_message(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return f"HTTP {response.status_code}: {error['message']}"
    return f"HTTP {response.status_code}"


class _StatusRecorder:
    """Remembers the HTTP statuses one MCP session saw: the SDK turns a 401 into a generic
    JSON-RPC error, and this is how we still tell a refused token from a broken server."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def __call__(self, response: httpx2.Response) -> None:
        self.statuses.append(response.status_code)

    def auth_refused(self) -> bool:
        return any(status in AUTH_STATUSES for status in self.statuses)

    def server_failed(self) -> bool:
        return any(status >= 500 or status == 429 for status in self.statuses)


class BridgeClient:
    """Async context manager: `async with BridgeClient(url, token, ca_file=...) as bridge:`."""

    def __init__(
        self,
        bridge_url: str,
        token: str,
        *,
        ca_file: str | None = None,
        source: str | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        refusal = plain_http_refusal(bridge_url)
        if refusal:
            raise ConfigError(source or bridge_url, "bridge_url", refusal, PLAIN_HTTP_FIX)
        self.bridge_url = bridge_url
        self._token = token
        # Loaded now, so a broken CA file fails the command at start (exit 78), not mid-run.
        # A plain http:// URL never uses it.
        self._verify = _ssl_context(ca_file if bridge_url.startswith("https://") else None, source)
        self.call_timeout_s = call_timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._transport: httpx2.AsyncHTTPTransport | None = None
        self._http: httpx2.AsyncClient | None = None
        self._prior_discover: mcp_types.DiscoverResult | None = None

    def __repr__(self) -> str:  # never show the token
        return f"BridgeClient({self.bridge_url!r})"

    @classmethod
    def for_credentials(cls, credentials: Credentials, **kwargs: Any) -> BridgeClient:
        return cls(
            credentials.bridge_url, credentials.token, ca_file=credentials.ca_file, source=credentials.path, **kwargs
        )

    @classmethod
    def for_admin(cls, config: AdminConfig, **kwargs: Any) -> BridgeClient:
        token = read_token_file(config.admin_token_file, "admin")
        return cls(config.bridge_url, token, ca_file=config.ca_file, source=config.path, **kwargs)

    async def __aenter__(self) -> BridgeClient:
        self._transport = httpx2.AsyncHTTPTransport(
            verify=self._verify,
            trust_env=False,  # an HTTPS_PROXY in the agent's environment must not reroute the bridge
            # Below the bridge's 75 s keep-alive (serve.py), above the 15 s heartbeat interval: a
            # daemon reuses one TLS connection instead of a handshake per beat, and never reuses a
            # socket the server is closing.
            limits=httpx2.Limits(max_connections=20, max_keepalive_connections=5, keepalive_expiry=60.0),
        )
        self._http = self._http_client()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()  # closes the shared transport too
        self._http = None
        self._transport = None

    def _http_client(self, recorder: _StatusRecorder | None = None) -> httpx2.AsyncClient:
        if self._transport is None:
            raise RuntimeError("use BridgeClient inside `async with`")
        return httpx2.AsyncClient(
            transport=self._transport,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=httpx2.Timeout(connect=10.0, read=MAX_LONG_POLL_S + LONG_POLL_MARGIN_S, write=10.0, pool=10.0),
            event_hooks={"response": [recorder]} if recorder else None,
        )

    async def heartbeat(self, status: str | None = None) -> dict[str, Any]:
        """POST /v1/heartbeat: `{"ok": true, "unread": N, "server_time": ...}`."""
        if self._http is None:
            raise RuntimeError("use BridgeClient inside `async with`")
        body = {} if status is None else {"status": status}
        try:
            response = await self._http.post(
                heartbeat_url(self.bridge_url), json=body, timeout=self.heartbeat_timeout_s
            )
        except httpx2.TransportError as exc:
            raise BridgeUnavailable(_describe_transport_error(exc)) from None
        if response.status_code in AUTH_STATUSES:
            raise AuthRefused(_error_message(response))
        if response.status_code != 200:
            raise BridgeUnavailable(_error_message(response))
        try:
            result = response.json()
        except ValueError:
            raise BridgeUnavailable("heartbeat answer is not JSON") from None
        if not isinstance(result, dict):
            raise BridgeUnavailable("heartbeat answer is not a JSON object")
        return result

    async def call(self, tool: str, /, **arguments: Any) -> dict[str, Any]:
        """Call one bridge tool and return its JSON object result."""
        timeout = self.call_timeout_s
        if tool == "wait_for_messages":
            # The bridge holds a long poll open for timeout_s (at most 60 s; it rejects more).
            wait = arguments.get("timeout_s", 25)
            wait_s = float(wait) if isinstance(wait, int | float) else MAX_LONG_POLL_S
            timeout = max(timeout, min(wait_s, MAX_LONG_POLL_S) + LONG_POLL_MARGIN_S)
        async with self._session(timeout) as client:
            result = await client.call_tool(tool, arguments)
        return tool_result_to_dict(result)

    async def list_tools(self) -> list[mcp_types.Tool]:
        tools: list[mcp_types.Tool] = []
        async with self._session(self.call_timeout_s) as client:
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    return tools

    @asynccontextmanager
    async def _session(self, timeout_s: float) -> AsyncIterator[Client]:
        """One MCP client session, bounded by timeout_s, with failures translated."""
        recorder = _StatusRecorder()
        transport = streamable_http_client(
            self.bridge_url, http_client=self._http_client(recorder), terminate_on_close=False
        )
        mode = self._prior_discover.supported_versions[-1] if self._prior_discover else "auto"
        client = Client(transport, mode=mode, prior_discover=self._prior_discover, cache=None)
        try:
            with anyio.fail_after(timeout_s):
                async with client:
                    self._remember_protocol(client)
                    yield client
        except BaseException as exc:
            self._prior_discover = None  # renegotiate next time: the server may have changed
            translated = _translate(exc, recorder, timeout_s)
            if translated is None:
                raise
            raise translated from None

    def _remember_protocol(self, client: Client) -> None:
        discover = client.session.discover_result
        if discover is not None and client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            self._prior_discover = discover.model_copy(update={"supported_versions": [client.protocol_version]})


def _describe_transport_error(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    detail = str(exc) or type(exc).__name__
    if isinstance(cause, ssl.SSLError) or "CERTIFICATE" in detail.upper():
        return f"TLS failure: {detail} (is ca_file the fleet CA?)"
    if isinstance(exc, httpx2.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return detail


def _translate(exc: BaseException, recorder: _StatusRecorder, timeout_s: float) -> BridgeClientError | None:
    """Map whatever an MCP session raised to our three outcomes; None means "not ours, re-raise"."""
    leaves = _leaves(exc)
    cancelled = anyio.get_cancelled_exc_class()
    if any(isinstance(leaf, cancelled | KeyboardInterrupt | SystemExit) for leaf in leaves):
        return None  # a shutdown in progress is not a bridge failure
    if any(isinstance(leaf, ToolCallError) for leaf in leaves):
        return next(leaf for leaf in leaves if isinstance(leaf, ToolCallError))
    if recorder.auth_refused():
        return AuthRefused("the bridge refused the token (HTTP 401/403)")
    for leaf in leaves:
        if isinstance(leaf, httpx2.TransportError):
            return BridgeUnavailable(_describe_transport_error(leaf))
        if isinstance(leaf, TimeoutError):
            return BridgeUnavailable(f"no answer within {timeout_s:g} s")
    if recorder.server_failed():
        status = max(recorder.statuses)
        return BridgeUnavailable(f"the bridge answered HTTP {status}")
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            if leaf.code == mcp_types.CONNECTION_CLOSED:
                return BridgeUnavailable(f"connection closed: {leaf.message}")
            return ToolCallError("protocol_error", f"MCP error {leaf.code}: {leaf.message}")
    # Anything else came out of the SDK talking to a misbehaving peer (a malformed answer, a
    # proxy's HTML page): daemons must treat it as an outage and retry, not crash on it.
    first = next((leaf for leaf in leaves if isinstance(leaf, Exception)), None)
    if first is not None:
        return BridgeUnavailable(f"unexpected answer ({type(first).__name__}: {first})")
    return None
