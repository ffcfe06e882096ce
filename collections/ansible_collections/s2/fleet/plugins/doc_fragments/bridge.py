# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The options every s2.fleet module that calls the bridge shares (module_utils/runtime.py).
    DOCUMENTATION = r"""
options:
  admin_config:
    description:
      - The s2-bridge admin client configuration on the managed host (the orchestrator), the file
        C(s2-bridge status --config) and C(s2-bridge watchdog --config) read. The P(s2.fleet.mcp_bridge#role) role
        writes it (C(admin.toml) in C(mcp_bridge_config_dir)) from the bridge's own listen address and port, so it
        names the bridge as the orchestrator reaches it.
      - The module reads the bridge's URL (C(bridge_url)), the CA that signed its certificate (C(ca_file)) and the
        admin token file (C(admin_token_file)) from it, with the runtime's own reader, so its checks and error
        messages are those of the runtime's commands (a missing key, a plain C(http://) URL off loopback, a
        C(ca_file) that does not exist).
      - The admin token is read on the managed host and sent only in the C(Authorization) header; it is never a
        module argument and never appears in the module's output. The configuration is 0640 C(root:s2-bridge) and the
        token file 0600 C(s2-bridge), so tasks usually need privilege escalation (C(become)).
    type: path
    default: /etc/s2-bridge/admin.toml
  runtime_python:
    description:
      - Python interpreter of the s2-bridge runtime venv, which has the runtime package C(s2_bridge) and its
        MCP client.
      - When the interpreter Ansible uses cannot import C(s2_bridge), the module re-runs itself once under this
        interpreter (the arguments travel on stdin). When it does not exist either, the module fails and
        names it.
    type: path
    default: /opt/s2-bridge/venv/bin/python
  timeout_s:
    description:
      - Seconds to wait for the bridge to answer one tool call.
    type: float
    default: 30.0
requirements:
  - The s2-bridge runtime (Python >= 3.11 with the C(s2_bridge) package) on the managed host, installed by the
    C(s2.fleet.mcp_bridge) role; the module finds it through O(runtime_python).
"""

    # What bridge_conversation and bridge_lead share beside the bridge options (module_utils/_credentials_flow.py).
    CREDENTIALS = r"""
options:
  ttl_s:
    description:
      - Lifetime in seconds of the tokens this module issues (a conversation it creates or rotates, a lead token
        it rotates).
    type: int
    default: 2592000
  min_lifetime_s:
    description:
      - With O(state=present), rotate when the tokens have less than this many seconds left.
      - Must be smaller than O(ttl_s), or every run would rotate.
    type: int
    default: 604800
  owner:
    description:
      - User that owns the credentials file and a directory the module creates for it (the orchestrator's agent
        user).
      - When omitted, the user the module runs as.
    type: str
  group:
    description:
      - Group of the credentials file and of a directory the module creates for it. When omitted, the primary group
        of the user the module runs as (or unchanged for an existing file).
    type: str
"""
