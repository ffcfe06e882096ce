"""Standard-library HTTP for the fast agent-side commands (`hook`, and `mcp-proxy`'s start-up
check): no httpx2, no pydantic, no MCP SDK, not even http.client (its email-parser imports
cost 10-30 ms), so a command that runs on every prompt starts and ends in tens of
milliseconds. It speaks just enough HTTP/1.1 for one GET to the bridge.

One request per connection, TLS verified against the fleet CA only (a certificate from a
public CA is not the bridge), no proxy taken from the environment, the bearer token only in
the Authorization header: no error text built here contains it.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from s2_bridge import __version__
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.loopback import PLAIN_HTTP_FIX, plain_http_refusal

MAX_BODY_BYTES = 8 * 1024 * 1024  # 20 messages of 50,000 characters, JSON-escaped, fit
USER_AGENT = f"s2-bridge/{__version__}"
CHECK_URL = "check that bridge_url points at the bridge"


class HttpFailure(Exception):
    """One request failed; `kind` says how: unreachable, refused (401/403), limited (429),
    rejected (another 4xx) or bad_answer. The text carries a fix and never a token."""

    def __init__(self, kind: str, problem: str, fix: str) -> None:
        self.kind = kind
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; fix: {fix}")


def tls_context(ca_file: str | None, source: str) -> ssl.SSLContext:
    """A context that trusts only `ca_file` (the fleet CA); a CA that cannot be loaded is a
    ConfigError naming `source`, the file that points at it (exit 78 upstream)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(
            source,
            "ca_file",
            f"{ca_file} cannot be loaded as a PEM CA certificate ({reason})",
            "install the fleet CA there or fix the path",
        ) from None


def route_url(bridge_url: str, path: str, query: dict[str, Any] | None = None) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of `path` on the bridge's origin."""
    parts = urlsplit(bridge_url)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    target = path + (f"?{urlencode(query)}" if query else "")
    return scheme, parts.hostname or "", port, target


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _connect(scheme: str, host: str, port: int, context: ssl.SSLContext | None, deadline: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=_remaining(deadline))
    if scheme != "https":
        return sock
    try:
        sock.settimeout(_remaining(deadline))
        return (context or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpFailure("bad_answer", "the answer is not HTTP", CHECK_URL)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


def _dechunk(data: bytes) -> bytes:
    """A chunked transfer-coded body, decoded."""
    body = bytearray()
    position = 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            raise HttpFailure("bad_answer", "a truncated chunked answer", "check the bridge")
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += data[end + 2 : end + 2 + size]
        position = end + 2 + size + 2


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 answer: reads up to Content-Length or the end of the
    connection, every read bounded by the deadline, at most MAX_BODY_BYTES."""
    buffer = bytearray()
    head_end = -1
    status, headers = 0, {}
    while True:
        if head_end < 0 and (head_end := buffer.find(b"\r\n\r\n")) >= 0:
            status, headers = _parse_head(bytes(buffer[:head_end]))
        length = _content_length(headers)
        if head_end >= 0 and length is not None and len(buffer) - head_end - 4 >= length:
            break
        sock.settimeout(_remaining(deadline))
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""  # the server closed without a TLS goodbye: the end of the answer
        if not chunk:
            break
        buffer += chunk
        if not (buffer.startswith(b"HTTP/1.") or b"HTTP/1.".startswith(bytes(buffer[:7]))):
            raise HttpFailure("bad_answer", "the answer is not HTTP", CHECK_URL)
        if len(buffer) > MAX_BODY_BYTES:
            raise HttpFailure("bad_answer", f"answer over {MAX_BODY_BYTES} bytes", "check bridge_url")
    if head_end < 0:
        raise HttpFailure("bad_answer", "the connection closed before an HTTP answer", "check the bridge")
    body = bytes(buffer[head_end + 4 :])
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, _dechunk(body)
    if length is not None and len(body) < length:
        raise HttpFailure("bad_answer", "the answer was cut short", "check the bridge")
    return status, body[:length] if length is not None else body


def _transport_failure(exc: BaseException, timeout_s: float) -> HttpFailure:
    fix = "check that the bridge runs and that bridge_url is right"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HttpFailure("unreachable", f"TLS failure: {exc.verify_message}", "is ca_file the fleet CA?")
    if isinstance(exc, ssl.SSLError):
        return HttpFailure("unreachable", f"TLS failure: {exc.reason or exc}", "is bridge_url an https bridge?")
    if isinstance(exc, TimeoutError):
        return HttpFailure("unreachable", f"no answer within {timeout_s:.2g} s", fix)
    if isinstance(exc, OSError):
        return HttpFailure("unreachable", exc.strerror or type(exc).__name__, fix)
    return HttpFailure("unreachable", f"broken answer ({type(exc).__name__})", fix)


def _error_text(status: int, body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        message = str(error.get("message", ""))[:200]
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def _check_status(status: int, body: bytes) -> None:
    if status == 200:
        return
    text = _error_text(status, body)
    if status in (401, 403):
        raise HttpFailure("refused", f"token refused ({text})", "install current credentials (expired or rotated)")
    if status == 429:
        raise HttpFailure("limited", f"rate limited ({text})", "wait a little")
    if status == 404:
        raise HttpFailure("rejected", f"no such route ({text})", "upgrade the bridge to this runtime's version")
    if 400 <= status < 500:
        raise HttpFailure("rejected", f"request refused ({text})", "report this: the runtime sent a bad request")
    raise HttpFailure("unreachable", f"the bridge failed ({text})", "check the bridge's journal")


def get_json(
    bridge_url: str,
    token: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    context: ssl.SSLContext | None = None,
    deadline: float,
) -> dict[str, Any]:
    """GET `path` on the bridge's origin and return its JSON object.

    One HTTP/1.1 request on a new connection (`Connection: close`); connect, TLS handshake,
    send and every read wait at most until `deadline` (time.monotonic()). Name resolution is
    not bounded by it: a caller that needs a hard bound on a host name runs this on a thread.
    """
    refusal = plain_http_refusal(bridge_url)
    if refusal:
        raise HttpFailure("rejected", refusal, PLAIN_HTTP_FIX)
    scheme, host, port, target = route_url(bridge_url, path, query)
    timeout_s = max(0.0, deadline - time.monotonic())
    authority = urlsplit(bridge_url).netloc.rpartition("@")[2]
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: application/json\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    try:
        with _connect(scheme, host, port, context, deadline) as sock:
            sock.settimeout(_remaining(deadline))
            sock.sendall(request)
            status, body = _read_response(sock, deadline)
    except (OSError, ValueError) as exc:
        raise _transport_failure(exc, timeout_s) from None
    _check_status(status, body)
    try:
        value = json.loads(body)
    except ValueError:
        raise HttpFailure("bad_answer", "the answer is not JSON", CHECK_URL) from None
    if not isinstance(value, dict):
        raise HttpFailure("bad_answer", "the answer is not a JSON object", CHECK_URL)
    return value
