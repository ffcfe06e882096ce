#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bridge_lead
short_description: Keep or rotate the s2 bridge's lead token and the lead credentials file
version_added: 0.1.0
description:
  - Makes sure the fleet's lead (the orchestrator's coding agent, which sees every worker's messages and sends,
    broadcasts and assigns work) holds a live lead token in its credentials file O(path), usually
    C(~AGENT/.s2/s2-lead-credentials.json).
  - Runs on the orchestrator host. It reaches the bridge as O(admin_config) there says (URL, CA, admin token file)
    and calls the bridge's admin tools C(list_conversations) (its C(lead) entry) and C(rotate_lead) over MCP.
  - With O(state=present) the module is idempotent. It keeps the lead token in the file while the file parses,
    its C(expires_at) and C(lead_role) match the live lead the bridge lists, and that lead has at least
    O(min_lifetime_s) seconds left. Otherwise it calls C(rotate_lead), which issues a new lead token; the bridge
    refuses every earlier lead token from then on (there is at most one live lead token).
  - With O(state=rotated) it always rotates.
  - The file is written atomically (temporary file and rename), mode 0600, owned by O(owner) and O(group). It holds
    exactly the fields of the lead credentials contract (C(lead_role), C(lead_token), C(created_at),
    C(expires_at), C(bridge_url), C(ca_file)). A missing parent directory is created with mode 0700; an existing
    one is left as it is.
  - No token ever appears in the module's result, diff, warnings or error messages, nor on a command line.
author:
  - S2 fleet maintainers (@s2-fleet)
extends_documentation_fragment:
  - s2.fleet.bridge
  - s2.fleet.bridge.credentials
options:
  path:
    description:
      - The lead credentials file, for example V(/home/agent/.s2/s2-lead-credentials.json).
    type: path
    required: true
  lead_role:
    description:
      - Role name of the lead, 3 to 100 characters. Workers see it as the sender of the lead's messages.
      - A live lead of another role is rotated into this one.
    type: str
    default: s2-orchestrator
  state:
    description:
      - V(present) keeps a live lead token and its file, rotating only when needed.
      - V(rotated) always issues a new lead token. It always reports a change.
    type: str
    choices: [present, rotated]
    default: present
  bridge_url_for_lead:
    description:
      - URL written into the file as C(bridge_url), the URL the lead's commands (C(s2-bridge mcp-proxy), C(hook))
        use.
      - When omitted, the C(bridge_url) of O(admin_config), because the lead runs on the orchestrator and reaches the
        bridge as the module does.
    type: str
  ca_file_for_lead:
    description:
      - CA path written into the file as C(ca_file). It must be readable by O(owner).
      - When omitted, the C(ca_file) of O(admin_config); an empty string when it has none (an C(http://) bridge).
    type: str
attributes:
  check_mode:
    support: full
    description: In check mode the module only reads (C(list_conversations) and the file) and reports what it would
      do, with an estimated expiry for a rotation.
  diff_mode:
    support: full
    description: The diff shows the lead's role, creation and expiry times and the file's path, never a token.
  platform:
    platforms: posix
    support: full
    description: Runs on the orchestrator host, where the admin token file is.
notes:
  - The bridge has no tool to retire the lead; rotating makes every earlier lead token useless.
  - Every runtime command that takes C(--credentials) (C(mcp-proxy), C(hook), C(check-messages)) accepts the lead's
    file.
seealso:
  - module: s2.fleet.bridge_conversation
  - module: s2.fleet.fleet_status_info
"""

EXAMPLES = r"""
- name: The orchestrator's agent holds a lead token with at least a week of life left
  s2.fleet.bridge_lead:
    path: /home/agent/.s2/s2-lead-credentials.json
    owner: agent
    group: agent
  become: true
  register: lead

- name: Rotate the lead token now (the old one stops working)
  s2.fleet.bridge_lead:
    admin_config: /etc/s2-bridge/admin.toml
    path: /home/agent/.s2/s2-lead-credentials.json
    owner: agent
    state: rotated
  become: true
"""

RETURN = r"""
action:
  description:
    - What the module did (or would do in check mode).
    - V(created) a lead token where the bridge had none, V(rotated) a new lead token in place of the live one,
      V(updated) the file only (bridge URL, CA path, fields or permissions; same token), V(unchanged).
  returned: always
  type: str
  sample: rotated
lead_role:
  description: The lead's role.
  returned: always
  type: str
  sample: s2-orchestrator
expires_at:
  description: When the lead token expires (ISO 8601, UTC). In check mode, an estimate for a rotation.
  returned: always
  type: str
  sample: "2026-12-24T01:00:00+00:00"
path:
  description: The lead credentials file.
  returned: always
  type: str
  sample: /home/agent/.s2/s2-lead-credentials.json
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.s2.fleet.plugins.module_utils import _credentials_flow as flow
from ansible_collections.s2.fleet.plugins.module_utils.runtime import Failure, bad_result

ROLE_MIN = 3
ROLE_MAX = 100


def read_lead_file(path):
    """The parsed lead file when it holds a lead token and a role, else None."""
    data = flow.read_json_object(path)
    if data is None:
        return None
    token = data.get("lead_token")
    if not isinstance(token, str) or not flow.PATTERNS["lead"].match(token):
        return None
    if not isinstance(data.get("lead_role"), str):
        return None
    return data


def live_lead(listing):
    """The bridge's lead entry ({lead_role, created_at, expires_at}) or None; Failure for another shape."""
    if "lead" not in listing:
        raise bad_result(
            "list_conversations",
            "list_conversations returned no lead entry",
            fix="the bridge predates the lead identity: upgrade the s2-bridge runtime on the orchestrator "
            "(role s2.fleet.mcp_bridge)",
        )
    lead = listing["lead"]
    if lead is None:
        return None
    if not isinstance(lead, dict) or flow.parse_time(lead.get("expires_at")) is None:
        raise bad_result("list_conversations", "list_conversations gave a lead entry without a valid expires_at")
    return lead


def desired_content(data, params):
    """The file's content with the settings this run asks for (the token and times of data)."""
    values = dict(data, bridge_url=params["bridge_url_for_lead"], ca_file=params["ca_file_for_lead"])
    return {name: values.get(name) for name in flow.LEAD_FIELDS}


def describe(lead=None, path=None):
    """Diff metadata of a lead: never a token."""
    if not lead:
        return {}
    out = {name: lead.get(name) for name in ("lead_role", "created_at", "expires_at")}
    if path:
        out["path"] = path
    return out


def plan(params, lead, data, file_ok, now):
    """created, rotated, updated or unchanged, from the bridge's live lead and the file."""
    if lead is None:
        return "created"
    if params["state"] == "rotated" or data is None:
        return "rotated"
    if lead.get("lead_role") != params["lead_role"] or data.get("lead_role") != params["lead_role"]:
        return "rotated"
    bridge_expiry = flow.parse_time(lead.get("expires_at"))
    if flow.parse_time(data.get("expires_at")) != bridge_expiry:
        # the file holds an older token (a rotation whose file write was lost, or another bridge's)
        return "rotated"
    if (bridge_expiry - now).total_seconds() < params["min_lifetime_s"]:
        return "rotated"
    if not file_ok or desired_content(data, params) != data:
        return "updated"
    return "unchanged"


def new_content(issued, params):
    """The file's content from a rotate_lead result (the runtime's document); Failure when it is not the
    contract's."""
    document = flow.credentials_document(issued, params["bridge_url_for_lead"], params["ca_file_for_lead"])
    missing = [
        name
        for name in ("lead_role", "lead_token", "created_at", "expires_at")
        if not isinstance(document[name], str) or not document[name]
    ]
    if missing:
        raise bad_result("rotate_lead", "rotate_lead result lacks %s" % ", ".join(missing))
    if not flow.PATTERNS["lead"].match(document["lead_token"]):
        raise bad_result("rotate_lead", "rotate_lead returned a lead_token that is not s2l_ + 43 characters")
    return document


def converge(params, call, check_mode=False, on_secret=None, now=None):
    """Bring the lead token and its file to params['state'].

    params: the module's parameters (bridge_url_for_lead and ca_file_for_lead resolved, by default from
    admin_config).  call(tool, arguments) -> dict calls an admin tool on the bridge (AdminBridge.call).
    on_secret(value) is told every token this run reads or receives (the module registers them as no_log
    values).  Returns the module result plus a 'diff' key; holds no token.
    """
    now = now or flow.utcnow()
    on_secret = on_secret or (lambda value: None)
    path = params["path"]
    uid, gid = flow.resolve_ids(params.get("owner"), params.get("group"))

    lead = live_lead(call("list_conversations", {"include_revoked": False}))
    data = read_lead_file(path)
    if data:
        on_secret(data["lead_token"])
    file_ok = data is not None and not flow.file_needs_fix(path, uid, gid)

    action = plan(params, lead, data, file_ok, now)
    before = describe(lead, path if data else None)
    result = {"action": action, "path": path, "changed": action != "unchanged"}

    if action in ("created", "rotated"):
        if check_mode:
            after = {
                "lead_role": params["lead_role"],
                "created_at": flow.iso(now),
                "expires_at": flow.iso(now + datetime.timedelta(seconds=params["ttl_s"])),
                "path": path,
            }
        else:
            issued = call("rotate_lead", {"lead_role": params["lead_role"], "ttl_s": params["ttl_s"]})
            if isinstance(issued.get("lead_token"), str) and issued["lead_token"]:
                on_secret(issued["lead_token"])
            try:
                content = new_content(issued, params)
            except Failure as err:
                raise Failure(
                    err.code,
                    "%s (after rotate_lead: the bridge may already refuse the previous lead token; run again)"
                    % err.message,
                    field=err.field,
                    fix=err.fix,
                    tool=err.tool,
                    changed=True,
                ) from None
            try:
                # A missing directory is created 0700 (owned like the file); an existing one is left as it is.
                flow.ensure_directory(os.path.dirname(path) or ".", uid, gid, enforce=False)
                flow.write_file(path, content, uid, gid)
            except (IOError, OSError) as err:
                raise Failure(
                    "credentials_file",
                    "rotate_lead issued a new lead token (the bridge now refuses the previous one), but writing %s "
                    "failed: %s. Fix the cause and run again: the next run issues another token and writes it."
                    % (path, err),
                    changed=True,
                ) from None
            after = describe(content, path)
    elif action == "updated":
        content = desired_content(data, params)
        if not check_mode:
            flow.write_file(path, content, uid, gid)
        after = describe(dict(content, lead_role=lead.get("lead_role")), path)
    else:
        after = dict(before)

    result.update(lead_role=after.get("lead_role"), expires_at=after.get("expires_at"))
    result["diff"] = {"before": before, "after": after}
    return result


def prepare(params):
    """The lead's own checks, and the file's bridge_url and ca_file defaulted to admin_config's (flow.run put them
    in params)."""
    if not ROLE_MIN <= len(params["lead_role"]) <= ROLE_MAX:
        return "lead_role %r: use %d-%d characters" % (params["lead_role"], ROLE_MIN, ROLE_MAX)
    if os.path.isdir(params["path"]):
        return "path %s is a directory: name the lead credentials file itself" % params["path"]
    if params["bridge_url_for_lead"] is None:
        params["bridge_url_for_lead"] = params["bridge_url"]
    if params["ca_file_for_lead"] is None:
        params["ca_file_for_lead"] = params["ca_file"] or ""
    if params["bridge_url_for_lead"].lower().startswith("https://"):
        ca_file = params["ca_file_for_lead"]
        if not ca_file or not os.path.isfile(ca_file):
            return (
                "ca_file_for_lead %r: the lead's commands need the CA of an https bridge_url_for_lead, and no "
                "such file exists on this host (the runtime would refuse the lead file, exit 78). Set ca_file_for_lead "
                "(or ca_file in admin_config) to the fleet CA, e.g. /etc/s2-bridge/tls/ca.crt" % ca_file
            )
    return None


def main():
    module = AnsibleModule(
        argument_spec=flow.argument_spec(
            path={"type": "path", "required": True},
            lead_role={"type": "str", "default": "s2-orchestrator"},
            state={"type": "str", "default": "present", "choices": ["present", "rotated"]},
            bridge_url_for_lead={"type": "str"},
            ca_file_for_lead={"type": "str"},
        ),
        supports_check_mode=True,
    )
    flow.run(module, converge, prepare=prepare, file_label="lead credentials file")


if __name__ == "__main__":
    main()
