# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The options every s2.fleet module that calls the bridge shares (module_utils/runtime.py).
    DOCUMENTATION = r"""
options:
  bridge_url:
    description:
      - URL of the bridge's MCP endpoint, for example V(https://orchestrator.example:8443/mcp).
      - Use an C(http://) URL only for a bridge on loopback started with C(--insecure-http).
    type: str
    required: true
  ca_file:
    description:
      - PEM file of the CA that signed the bridge's TLS certificate (the fleet CA,
        V(/etc/s2-bridge/tls/ca.crt) on the orchestrator), the C(ca_file) of the runtime's configs.
      - When omitted, the system trust store is used. Ignored for C(http://) URLs.
      - The alias O(ca_path) is the name this option had before; it keeps working.
    type: path
    aliases: [ca_path]
  admin_token_file:
    description:
      - File on the managed host that holds the bridge's admin token. The bridge writes it on its first start.
      - The token is read on the managed host and sent only in the C(Authorization) header; it is never
        a module argument and never appears in the module's output.
      - The file is 0600 and owned by C(s2-bridge), so tasks usually need privilege escalation (C(become)).
    type: path
    default: /var/lib/s2-bridge/admin.token
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
