# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)
"""The s2.fleet modules' adapter over the s2-bridge runtime (the Python package ``s2_bridge``).

The runtime owns the contract: ``s2_bridge.client.BridgeClient`` talks MCP to the bridge (TLS
against the fleet CA, result parsing, its failure classes), ``s2_bridge.credentials`` owns the
credentials fields, the token file reader and the one atomic 0600 writer, ``s2_bridge.tokens``
the token shape.  This file only adapts them to a module: the re-run into the runtime venv, the
options every module shares, a synchronous admin call, and one failure type for fail_json.

``s2_bridge`` lives in the runtime venv, not in the Python Ansible chose, so it is imported in a
try block.  A module calls ensure_runtime() before anything here touches s2_bridge: it re-runs the
module under runtime_python, or fails it with missing_required_lib(..., S2_BRIDGE_IMPORT_ERROR).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import asyncio
import os
import random
import time
import traceback

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.common.respawn import has_respawned, respawn_module

S2_BRIDGE_IMPORT_ERROR = None
try:
    from s2_bridge import tokens
    from s2_bridge.backoff import full_jitter_delay
    from s2_bridge.client import AuthRefused, BridgeClient, BridgeUnavailable, ToolCallError
    from s2_bridge.credentials import read_token_file
    from s2_bridge.errors import ConfigError
except ImportError:
    HAS_S2_BRIDGE = False
    S2_BRIDGE_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_S2_BRIDGE = True

# Options every module that talks to the bridge shares (doc fragment s2.fleet.bridge).
BRIDGE_ARGUMENT_SPEC = {
    "bridge_url": {"type": "str", "required": True},
    "ca_file": {"type": "path", "aliases": ["ca_path"]},
    "admin_token_file": {"type": "path", "default": "/var/lib/s2-bridge/admin.token"},
    "runtime_python": {"type": "path", "default": "/opt/s2-bridge/venv/bin/python"},
    "timeout_s": {"type": "float", "default": 30.0},
}

MISSING_LIB_NAME = "s2_bridge (the s2-bridge runtime venv)"
ARGUMENTS = "module arguments"  # how a ConfigError about bridge_url or ca_file names its source
RATE_LIMITED = "HTTP 429"  # BridgeUnavailable for a call the bridge refused before processing it
RATE_LIMIT_RETRIES = 3


class Failure(Exception):
    """Why a module run failed, as fail_json reports it (msg and error); it never holds a token.

    code: the bridge's own error code when it refused a call, else admin_token_file,
    unauthenticated, unreachable, bridge_url, ca_file, bad_result or credentials_file.
    changed: the bridge or a file had already been modified when it happened.
    """

    def __init__(self, code, message, field=None, fix=None, tool=None, changed=False):
        self.code = code
        self.field = field
        self.message = redact(message)
        self.fix = redact(fix) if fix else fix
        self.tool = tool
        self.changed = changed
        super(Failure, self).__init__(self.describe())

    def describe(self):
        if self.code == "credentials_file":
            text = self.message
        else:
            where = " (tool %s)" % self.tool if self.tool else ""
            text = "bridge error %s%s: %s" % (self.code, where, self.message)
        if self.field:
            text += " [field: %s]" % self.field
        if self.fix:
            text += " Fix: %s" % self.fix
        return text

    def to_dict(self):
        return {"code": self.code, "field": self.field, "message": self.message, "fix": self.fix, "tool": self.tool}


def redact(text):
    """text with every token-shaped string (the runtime's token shape) replaced."""
    text = "%s" % (text,)
    return tokens.TOKEN_RE.sub("********", text) if HAS_S2_BRIDGE else text


def bad_result(tool, message, fix="the bridge and this collection disagree on the tool contract: upgrade both"):
    """A tool result that is not the contract's."""
    return Failure("bad_result", message, tool=tool, fix=fix)


def read_admin_token(path):
    """The admin token in path, read by the runtime's reader (0600, the admin token shape)."""
    try:
        return read_token_file(path, "admin")
    except ConfigError as exc:
        raise Failure(
            "admin_token_file",
            "%s: %s" % (exc.path, exc.problem),
            field="admin_token_file",
            fix="%s (the bridge writes it when s2-bridge.service first starts; it is 0600, so tasks need become: true)"
            % exc.fix,
        ) from None


def _failure(exc, tool, bridge_url):
    """The Failure for what BridgeClient raised."""
    if isinstance(exc, ToolCallError):
        return Failure(exc.code, exc.message, field=exc.field, fix=exc.fix, tool=tool)
    if isinstance(exc, AuthRefused):
        return Failure(
            "unauthenticated",
            "%s" % exc,
            field="admin_token_file",
            tool=tool,
            fix="use the admin_token_file of the bridge bridge_url points at (the bridge replaces a stale file when "
            "it starts)",
        )
    return Failure(
        "unreachable",
        "bridge %s: %s" % (bridge_url, exc),
        field="bridge_url",
        tool=tool,
        fix="check that s2-bridge.service runs and that bridge_url (scheme, host, port, /mcp) and ca_file are right",
    )


class AdminBridge(object):
    """Synchronous admin calls for module code over the runtime's BridgeClient (one short connection a call)."""

    def __init__(self, bridge_url, token, ca_file=None, timeout_s=30.0):
        try:
            self._client = BridgeClient(
                bridge_url, token, ca_file=ca_file, source=ARGUMENTS, call_timeout_s=float(timeout_s)
            )
        except ConfigError as exc:
            raise Failure(exc.field or "config", exc.problem, field=exc.field, fix=exc.fix) from None
        self.bridge_url = bridge_url
        self.secrets = [token]  # what a module registers with no_log_values
        self._rng = random.Random()

    @classmethod
    def from_token_file(cls, bridge_url, admin_token_file, ca_file=None, timeout_s=30.0):
        return cls(bridge_url, read_admin_token(admin_token_file), ca_file=ca_file, timeout_s=timeout_s)

    async def _call(self, tool, arguments):
        async with self._client as bridge:
            return await bridge.call(tool, **arguments)

    def call(self, tool, arguments=None):
        """The tool's JSON object result, or Failure.  Several module runs share the admin token, so a call
        the bridge rate-limits (refused before it is processed) is retried after a short jittered wait."""
        arguments = dict(arguments or {})
        attempt = 0
        while True:
            try:
                return asyncio.run(self._call(tool, arguments))
            except BridgeUnavailable as exc:
                if RATE_LIMITED not in "%s" % exc or attempt >= RATE_LIMIT_RETRIES:
                    raise _failure(exc, tool, self.bridge_url) from None
            except (AuthRefused, ToolCallError) as exc:
                raise _failure(exc, tool, self.bridge_url) from None
            time.sleep(0.2 + full_jitter_delay(attempt, 1.0, 4.0, self._rng))
            attempt += 1


def ensure_runtime(module):
    """Make s2_bridge importable for module, or fail it.

    When it is missing from the interpreter Ansible chose, re-run the module once under
    runtime_python (the s2-bridge runtime venv).  The module arguments travel to the new process on
    its stdin, never on a command line.
    """
    if HAS_S2_BRIDGE:
        return
    interpreter = module.params.get("runtime_python")
    if interpreter and not has_respawned() and os.path.isfile(interpreter) and os.access(interpreter, os.X_OK):
        respawn_module(interpreter)
    reason = (
        "to talk to the bridge; runtime_python %s %s. Install the runtime with the s2.fleet.mcp_bridge "
        "role or set runtime_python to a Python that has the s2-bridge package"
        % (interpreter, "was tried and also lacks it" if has_respawned() else "does not exist")
    )
    module.fail_json(msg=missing_required_lib(MISSING_LIB_NAME, reason=reason), exception=S2_BRIDGE_IMPORT_ERROR)


def connect(module):
    """The AdminBridge for the module's shared options, the admin token registered as a no_log value."""
    params = module.params
    token = read_admin_token(params["admin_token_file"])
    module.no_log_values.add(token)
    return AdminBridge(params["bridge_url"], token, ca_file=params["ca_file"], timeout_s=params["timeout_s"])


def fail(module, err):
    """fail_json with a Failure's structured error (never a token)."""
    module.fail_json(msg=err.describe(), error=err.to_dict(), changed=err.changed)
