# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)
"""The s2.fleet modules' adapter over the s2-bridge runtime (the Python package ``s2_bridge``).

The runtime owns the contract: ``s2_bridge.agent.client.BridgeClient`` talks MCP to the bridge (TLS
against the fleet CA, result parsing, its failure classes), ``s2_bridge.contract.credentials`` owns the
credentials fields, the token file reader and the one atomic 0600 writer, ``s2_bridge.contract.tokens``
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
    from s2_bridge.contract import tokens
    from s2_bridge.contract.backoff import full_jitter_delay
    from s2_bridge.contract.config import load_admin_config
    from s2_bridge.agent.client import AuthRefused, BridgeClient, BridgeUnavailable, ToolCallError
    from s2_bridge.contract.credentials import read_token_file
    from s2_bridge.contract.errors import ConfigError
except ImportError:
    HAS_S2_BRIDGE = False
    S2_BRIDGE_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_S2_BRIDGE = True

# The admin client configuration the mcp_bridge role writes on the orchestrator from the bridge's own listen
# settings (docs/CONTRACTS.md): the one home of the admin endpoint (bridge_url, ca_file, admin_token_file).
# The doc fragment s2.fleet.bridge states the same default (ansible-doc needs it literally).
ADMIN_CONFIG_DEFAULT = "/etc/s2-bridge/admin.toml"

# Options every module that talks to the bridge shares (doc fragment s2.fleet.bridge).
BRIDGE_ARGUMENT_SPEC = {
    "admin_config": {"type": "path", "default": ADMIN_CONFIG_DEFAULT},
    "runtime_python": {"type": "path", "default": "/opt/s2-bridge/venv/bin/python"},
    "timeout_s": {"type": "float", "default": 30.0},
}

MISSING_LIB_NAME = "s2_bridge (the s2-bridge runtime venv)"
RATE_LIMITED = "HTTP 429"  # BridgeUnavailable for a call the bridge refused before processing it
RATE_LIMIT_RETRIES = 3


class Failure(Exception):
    """Why a module run failed, as fail_json reports it (msg and error); it never holds a token.

    code: the bridge's own error code when it refused a call, else admin_config, admin_token_file,
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


def read_admin_config(path):
    """The runtime's AdminConfig from path (load_admin_config: the same checks and messages as
    `s2-bridge status --config`), or Failure naming the file, the key and the fix."""
    try:
        return load_admin_config(path)
    except ConfigError as exc:
        where = "%s: %s" % (exc.path, exc.field) if exc.field else exc.path
        raise Failure(
            "admin_config",
            "%s: %s" % (where, exc.problem),
            field="admin_config",
            fix="%s (the s2.fleet.mcp_bridge role writes it on the orchestrator from its listen settings; it is "
            "0640 root:s2-bridge, so tasks need become: true)" % exc.fix,
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
            fix="admin_config's admin_token_file must be the token file of the bridge its bridge_url points at (the "
            "bridge replaces a stale file when it starts)",
        )
    return Failure(
        "unreachable",
        "bridge %s: %s" % (bridge_url, exc),
        field="bridge_url",
        tool=tool,
        fix="check that s2-bridge.service runs and that bridge_url (scheme, host, port, /mcp) and ca_file of "
        "admin_config are right (the s2.fleet.mcp_bridge role writes them from mcp_bridge_listen_host and "
        "mcp_bridge_port)",
    )


class AdminBridge(object):
    """Synchronous admin calls for module code over the runtime's BridgeClient (one short connection a call)."""

    def __init__(self, bridge_url, token, ca_file=None, timeout_s=30.0, source="admin_config"):
        try:
            self._client = BridgeClient(
                bridge_url, token, ca_file=ca_file, source=source, call_timeout_s=float(timeout_s)
            )
        except ConfigError as exc:
            raise Failure(exc.field or "config", exc.problem, field=exc.field, fix=exc.fix) from None
        self.bridge_url = bridge_url
        self.ca_file = ca_file
        self.secrets = [token]  # what a module registers with no_log_values
        self._rng = random.Random()

    @classmethod
    def from_admin_config(cls, config, timeout_s=30.0):
        """The admin's bridge for an AdminConfig (read_admin_config): its URL, CA and admin token file."""
        token = read_admin_token(config.admin_token_file)
        return cls(config.bridge_url, token, ca_file=config.ca_file, timeout_s=timeout_s, source=config.path)

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


def connect(module, config=None):
    """The AdminBridge for the module's admin_config (or an AdminConfig already read from it), the admin token
    registered as a no_log value."""
    params = module.params
    config = config or read_admin_config(params["admin_config"])
    token = read_admin_token(config.admin_token_file)
    module.no_log_values.add(token)
    return AdminBridge(
        config.bridge_url, token, ca_file=config.ca_file, timeout_s=params["timeout_s"], source=config.path
    )


def fail(module, err):
    """fail_json with a Failure's structured error (never a token)."""
    module.fail_json(msg=err.describe(), error=err.to_dict(), changed=err.changed)
