# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)
"""The one MCP client helper the s2.fleet modules share.

It reads the admin token from a file on the managed host (the token is never a module
argument), opens a Streamable HTTP MCP connection to the bridge with that token as a bearer
token, calls one tool and returns the tool's structured result.  Failures raise BridgeError,
which carries the bridge's structured error (code, field, message, fix) and never a token.

The MCP SDK (package ``mcp`` with ``httpx2``) lives in the s2-bridge runtime venv, not in the
system Python, so it is imported inside a try block: modules check HAS_MCP and either respawn
into the runtime venv's interpreter or fail with missing_required_lib(..., MCP_IMPORT_ERROR).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import asyncio
import json
import os
import re
import ssl
import time
import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.respawn import has_respawned, respawn_module

MCP_IMPORT_ERROR = None
try:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
except ImportError:
    HAS_MCP = False
    MCP_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_MCP = True

DEFAULT_ADMIN_TOKEN_FILE = "/var/lib/s2-bridge/admin.token"
DEFAULT_RUNTIME_PYTHON = "/opt/s2-bridge/venv/bin/python"

# Every token the bridge issues: s2a_ (admin), s2l_ (lead), s2c_ (coordinator), s2w_ (worker) + base64url.
TOKEN_PATTERN = re.compile(r"s2[acwl]_[A-Za-z0-9_-]{20,}")

# Options every module that talks to the bridge shares (merged into each argument_spec).
BRIDGE_ARGUMENT_SPEC = {
    "bridge_url": {"type": "str", "required": True},
    "ca_path": {"type": "path"},
    "admin_token_file": {"type": "path", "default": DEFAULT_ADMIN_TOKEN_FILE},
    "runtime_python": {"type": "path", "default": DEFAULT_RUNTIME_PYTHON},
    "timeout_s": {"type": "float", "default": 30.0},
}

MISSING_LIB_NAME = "mcp (the s2-bridge runtime venv)"
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_MAX_WAIT_S = 5.0


def redact(text, secrets=()):
    """Return text with every known secret and every token-shaped string replaced."""
    text = "%s" % (text,)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return TOKEN_PATTERN.sub("********", text)


class BridgeError(Exception):
    """A failed bridge call.  Its fields come from the bridge's structured error when there is one.

    code: the bridge's error code, or one of admin_token_file, ca_path, unreachable, protocol,
    bad_result for failures found on this side.  No field ever holds a token.
    """

    def __init__(self, message, code="error", field=None, fix=None, tool=None):
        self.code = code
        self.field = field
        self.message = redact(message)
        self.fix = redact(fix) if fix else fix
        self.tool = tool
        super(BridgeError, self).__init__(self.describe())

    def describe(self):
        where = " (tool %s)" % self.tool if self.tool else ""
        text = "bridge error %s%s: %s" % (self.code, where, self.message)
        if self.field:
            text += " [field: %s]" % self.field
        if self.fix:
            text += " Fix: %s" % self.fix
        return text

    def to_dict(self):
        return {"code": self.code, "field": self.field, "message": self.message, "fix": self.fix, "tool": self.tool}


def read_admin_token(path):
    """Read the admin token from path.  Errors name the file and the fix, never the content."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except (IOError, OSError) as exc:
        if getattr(exc, "errno", None) == 2:
            raise BridgeError(
                "admin token file %s does not exist" % path,
                code="admin_token_file",
                field="admin_token_file",
                fix="the bridge writes it on its first start: start s2-bridge.service on this host "
                "(role s2.fleet.mcp_bridge) or set admin_token_file to the right path",
            ) from None
        raise BridgeError(
            "cannot read admin token file %s (%s)" % (path, getattr(exc, "strerror", None) or exc),
            code="admin_token_file",
            field="admin_token_file",
            fix="run the task with become: true (the file is 0600, owned by s2-bridge)",
        ) from None
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or len(token.split()) != 1:
        raise BridgeError(
            "admin token file %s is empty or malformed" % path,
            code="admin_token_file",
            field="admin_token_file",
            fix="remove it and restart s2-bridge.service so the bridge writes a new one",
        )
    return token


def make_ssl_context(ca_path):
    """The TLS context for the bridge: trust only ca_path when given, else the system store."""
    if not ca_path:
        return ssl.create_default_context()
    if not os.path.isfile(ca_path):
        raise BridgeError(
            "CA file %s does not exist" % ca_path,
            code="ca_path",
            field="ca_path",
            fix="point ca_path at the fleet CA (e.g. /etc/s2-bridge/tls/ca.crt)",
        )
    try:
        return ssl.create_default_context(cafile=ca_path)
    except (ssl.SSLError, OSError) as exc:
        raise BridgeError(
            "cannot load CA file %s (%s)" % (ca_path, exc),
            code="ca_path",
            field="ca_path",
            fix="point ca_path at a PEM CA certificate",
        ) from None


def _leaf_exceptions(exc):
    """Flatten (Base)ExceptionGroups raised by anyio task groups into their leaf exceptions."""
    inner = getattr(exc, "exceptions", None)
    if not inner:
        return [exc]
    leaves = []
    for e in inner:
        leaves.extend(_leaf_exceptions(e))
    return leaves


def _describe_transport_error(exc, url):
    """A BridgeError for an exception raised while talking to the bridge."""
    leaves = _leaf_exceptions(exc)
    status = None
    for leaf in leaves:
        response = getattr(leaf, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            return _error_from_http_response(response, url)
    leaf = leaves[0]
    name = type(leaf).__name__
    text = "%s" % (leaf,)
    if isinstance(leaf, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return BridgeError(
            "TLS verification of %s failed: %s" % (url, text),
            code="tls",
            field="ca_path",
            fix="set ca_path to the fleet CA that signed the bridge certificate",
        )
    if HAS_MCP and isinstance(leaf, (httpx2.ConnectError, httpx2.TimeoutException, OSError)):
        return BridgeError(
            "cannot reach the bridge at %s: %s: %s" % (url, name, text),
            code="unreachable",
            field="bridge_url",
            fix="check that s2-bridge.service runs and bridge_url (scheme, host, port, /mcp) is right",
        )
    return BridgeError(
        "call to the bridge at %s failed: %s: %s" % (url, name, text),
        code="protocol",
        field="bridge_url",
        fix="check bridge_url and the bridge log (journalctl -u s2-bridge)",
    )


def _error_from_http_response(response, url):
    status = response.status_code
    code, field, message, fix = "http_%s" % status, None, "HTTP %s from %s" % (status, url), None
    try:
        body = json.loads(response.content.decode("utf-8"))
    except Exception:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") or code
        field = err.get("field")
        message = "%s (HTTP %s)" % (err.get("message") or message, status)
        fix = err.get("fix")
    if status == 401:
        field = "admin_token_file"
        fix = (
            "the bridge refused the admin token: use the admin_token_file of the bridge bridge_url points at "
            "(the bridge replaces a stale file when it starts)"
        )
    return BridgeError(message, code=code, field=field, fix=fix)


def parse_tool_error(text, tool=None):
    """BridgeError from the text of an is_error tool result (the bridge's error JSON)."""
    try:
        body = json.loads(text)
    except (TypeError, ValueError):
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return BridgeError(
            err.get("message") or "tool call failed",
            code=err.get("code") or "error",
            field=err.get("field"),
            fix=err.get("fix"),
            tool=tool,
        )
    return BridgeError(text or "tool call failed", code="error", tool=tool)


def result_to_dict(result, tool=None):
    """The structured content of a CallToolResult, or BridgeError for is_error results."""
    text = None
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if text is not None:
            break
    if getattr(result, "is_error", False):
        raise parse_tool_error(text, tool=tool)
    data = getattr(result, "structured_content", None)
    if data is None and text is not None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if not isinstance(data, dict):
        raise BridgeError(
            "tool %s returned no JSON object" % tool,
            code="bad_result",
            tool=tool,
            fix="the bridge and this collection disagree on the tool contract: upgrade both",
        )
    # 2025 protocol servers may wrap a non-object result as {"result": ...}; every s2 tool returns an object.
    return data


class BridgeClient(object):
    """Calls tools on the bridge as the admin.

    Each call opens its own short connection (the bridge is stateless), so a client object holds
    no open sockets between calls and can be used from plain synchronous module code.
    """

    def __init__(self, bridge_url, token, ca_path=None, timeout_s=30.0):
        if not HAS_MCP:
            raise BridgeError(
                "the MCP client library is not importable",
                code="missing_library",
                fix="run the module with the s2-bridge runtime venv python",
            )
        self.bridge_url = bridge_url
        self.ca_path = ca_path
        self.timeout_s = float(timeout_s)
        self._token = token
        self._ssl = make_ssl_context(ca_path) if bridge_url.lower().startswith("https://") else None

    @classmethod
    def from_token_file(cls, bridge_url, admin_token_file, ca_path=None, timeout_s=30.0):
        return cls(bridge_url, read_admin_token(admin_token_file), ca_path=ca_path, timeout_s=timeout_s)

    @property
    def secrets(self):
        """Values a module must register with no_log_values (the admin token)."""
        return [self._token]

    async def _call(self, tool, arguments, failures):
        async def remember_failure(response):
            # The SDK turns a non-2xx answer into a generic error; keep the bridge's own words.
            if response.status_code >= 400:
                await response.aread()
                failures.append(response)

        headers = {"Authorization": "Bearer %s" % self._token}
        kwargs = {
            "headers": headers,
            "timeout": httpx2.Timeout(self.timeout_s),
            "event_hooks": {"response": [remember_failure]},
        }
        if self._ssl is not None:
            kwargs["verify"] = self._ssl
        async with httpx2.AsyncClient(**kwargs) as http:
            transport = streamable_http_client(self.bridge_url, http_client=http)
            async with Client(transport, mode="auto", read_timeout_seconds=self.timeout_s) as client:
                return await client.call_tool(tool, arguments)

    def call(self, tool, arguments=None):
        """Call tool with arguments; return its structured result (a dict) or raise BridgeError.

        A call the bridge rate-limits (HTTP 429, refused before it is processed) is retried a few
        times after the delay the bridge asks for; several module runs share the admin token.
        """
        arguments = dict(arguments or {})
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            failures = []
            try:
                result = asyncio.run(asyncio.wait_for(self._call(tool, arguments, failures), self.timeout_s + 5))
            except BridgeError:
                raise
            except (asyncio.TimeoutError, TimeoutError):
                raise BridgeError(
                    "no answer from the bridge at %s within %ss" % (self.bridge_url, self.timeout_s),
                    code="unreachable",
                    field="bridge_url",
                    tool=tool,
                    fix="check that s2-bridge.service runs and answers GET /healthz",
                ) from None
            except Exception as exc:  # anything the transport raises: turn it into one clear error
                delay = _retry_after(failures[-1]) if failures and failures[-1].status_code == 429 else None
                if delay is not None and attempt < RATE_LIMIT_RETRIES:
                    time.sleep(delay)
                    continue
                if failures:
                    err = _error_from_http_response(failures[-1], self.bridge_url)
                else:
                    err = _describe_transport_error(exc, self.bridge_url)
                err.message = redact(err.message, self.secrets)
                raise BridgeError(err.message, code=err.code, field=err.field, fix=err.fix, tool=tool) from None
            return result_to_dict(result, tool=tool)
        raise AssertionError("unreachable")  # the loop always returns or raises


def _retry_after(response):
    """Seconds to wait before retrying a 429 answer (its Retry-After header), or None when not worth it.

    The bridge asks for a short wait when the caller is over its call rate; a long one (after many
    failed authentications from this address) is not waited for.
    """
    try:
        delay = float(response.headers.get("retry-after", "1"))
    except (TypeError, ValueError):
        delay = 1.0
    return max(delay, 0.2) if delay <= RATE_LIMIT_MAX_WAIT_S else None


def ensure_mcp(module):
    """Make the MCP SDK importable for module, or fail it.

    When the SDK is missing from the interpreter Ansible chose, re-run the module once under
    runtime_python (the s2-bridge runtime venv, which always has it).  The module arguments
    travel to the new process on its stdin, never on a command line.
    """
    if HAS_MCP:
        return
    interpreter = module.params.get("runtime_python")
    if interpreter and not has_respawned() and os.path.isfile(interpreter) and os.access(interpreter, os.X_OK):
        respawn_module(interpreter)
    reason = (
        "to talk to the bridge; runtime_python %s %s. Install the runtime with the s2.fleet.mcp_bridge "
        "role or set runtime_python to a Python that has the s2-bridge package"
        % (interpreter, "was tried and also lacks it" if has_respawned() else "does not exist")
    )
    module.fail_json(msg=missing_required_lib(MISSING_LIB_NAME, reason=reason), exception=MCP_IMPORT_ERROR)


def client_for_module(module):
    """A BridgeClient built from the module's common options, the admin token registered as no_log."""
    params = module.params
    token = read_admin_token(params["admin_token_file"])
    module.no_log_values.add(token)
    return BridgeClient(params["bridge_url"], token, ca_path=params.get("ca_path"), timeout_s=params["timeout_s"])


def fail_with_bridge_error(module, err, **result):
    """fail_json with the structured error of a BridgeError (never a token)."""
    module.fail_json(msg=err.describe(), error=err.to_dict(), **result)
