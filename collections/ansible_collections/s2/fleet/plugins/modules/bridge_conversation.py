#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bridge_conversation
short_description: Create, keep, rotate and revoke one worker's conversation on the s2 bridge
version_added: 0.1.0
description:
  - Makes sure a worker has exactly one live conversation on the s2 MCP bridge and that the orchestrator
    holds its credentials file, C(<credentials_dir>/s2-worker-<worker_id>-credentials.json).
  - Runs on the orchestrator host (delegate to it when provisioning a single worker). It reaches the bridge as
    O(admin_config) there says (URL, CA, admin token file) and calls the bridge's admin tools
    (C(list_conversations), C(create_conversation), C(rotate_conversation), C(revoke_conversation)) over MCP.
  - With O(state=present) the module is idempotent. It keeps the conversation in the file while the bridge
    lists it as live and it has at least O(min_lifetime_s) seconds left. With less life left it rotates it
    (same conversation id, new tokens; the bridge refuses the old ones). Without a file it creates one.
    When the bridge already has a live conversation for the worker whose tokens are lost, it rotates that
    one rather than leaving an orphan that would show up as a silent worker.
  - Any other live conversation for the same O(worker_id) is revoked, so the fleet status shows one
    conversation per worker. A conversation whose roles differ from O(my_role) and O(partner_role) is
    replaced (a new one is created and the old one revoked).
  - The credentials file is written atomically (temporary file and rename), mode 0600, in a 0700 directory.
    It holds both tokens, the fields of the s2 credentials contract as the runtime defines them
    (C(conversation_id), C(worker_id), C(worker_role), C(coordinator_token), C(worker_token), C(created_at),
    C(expires_at), C(bridge_url), C(ca_file)).
  - The file is the orchestrator's copy and is valid on the orchestrator, where it lives. Its C(bridge_url) and
    C(ca_file) are those of O(admin_config), the bridge as the orchestrator reaches it, so the runtime's own
    commands (C(s2-bridge check-messages --credentials FILE), C(mcp-proxy)) accept it there. The worker's own file
    (public URL, the CA path on the worker) is written by the C(s2.fleet.credentials) role.
  - No token ever appears in the module's result, diff, warnings or error messages, nor on a command line.
author:
  - S2 fleet maintainers (@s2-fleet)
extends_documentation_fragment:
  - s2.fleet.bridge
  - s2.fleet.bridge.credentials
options:
  my_role:
    description:
      - Role of the coordinator side of the conversation (the orchestrator agent), 3 to 100 characters.
    type: str
    default: s2-orchestrator
  partner_role:
    description:
      - Role of the worker side, for example V(tests) or V(frontend), 3 to 100 characters.
      - Required when O(state=present) or O(state=rotated).
    type: str
  worker_id:
    description:
      - Identifier of the worker, for example V(3). 1 to 64 letters, digits, C(.), C(_) and C(-), starting with
        a letter or digit (the runtime's worker-id rule); it names the credentials file.
    type: str
    required: true
  state:
    description:
      - V(present) keeps a live conversation and its credentials file, creating or rotating only when needed.
      - V(rotated) always rotates (creates when there is none). It always reports a change.
      - V(absent) revokes the worker's conversations and removes the credentials file.
    type: str
    choices: [present, absent, rotated]
    default: present
  credentials_dir:
    description:
      - Directory for the orchestrator's copy of the credentials files. Created with mode 0700 when missing.
      - An existing directory is brought to mode 0700 and to O(owner) and O(group) too.
    type: path
    default: /var/lib/s2-fleet/credentials
attributes:
  check_mode:
    support: full
    description: In check mode the module only reads (C(list_conversations) and the credentials file) and
      reports what it would do.
  diff_mode:
    support: full
    description: The diff shows the conversation metadata before and after (id, worker, roles, expiry), never
      a token.
  platform:
    platforms: posix
    support: full
    description: Runs on the orchestrator host, where the admin token file is.
notes:
  - The credentials role pushes each worker its own copy of the file, without the coordinator token, with the
    bridge URL and CA path the worker uses.
seealso:
  - module: s2.fleet.fleet_status_info
"""

EXAMPLES = r"""
- name: Worker 3 has a conversation with at least a week of life left
  s2.fleet.bridge_conversation:
    worker_id: "3"
    partner_role: tests
    owner: agent
  become: true
  register: conv

- name: Provision one worker alone; the call runs on the orchestrator
  s2.fleet.bridge_conversation:
    worker_id: "{{ s2_worker_id }}"
    partner_role: "{{ s2_worker_role }}"
  delegate_to: "{{ groups['orchestrator'][0] }}"
  become: true

- name: Rotate the tokens now (the old ones stop working)
  s2.fleet.bridge_conversation:
    worker_id: "3"
    partner_role: tests
    state: rotated
  become: true

- name: Retire worker 3, with the admin client configuration of a bridge configured elsewhere
  s2.fleet.bridge_conversation:
    admin_config: /srv/s2-bridge/etc/admin.toml
    worker_id: "3"
    state: absent
  become: true
"""

RETURN = r"""
action:
  description:
    - What the module did (or would do in check mode).
    - V(created) a new conversation, V(rotated) new tokens for the same conversation, V(updated) the
      credentials file only (bridge URL or CA path of O(admin_config), or permissions), V(unchanged), V(revoked)
      the conversation and removed the file, V(absent) nothing to remove.
  returned: always
  type: str
  sample: created
conversation_id:
  description: The worker's conversation (for O(state=absent), the one revoked). Null when unknown (check mode
    before a creation, or nothing found).
  returned: always
  type: str
  sample: conv_0123456789abcdef
worker_id:
  description: The worker's identifier.
  returned: always
  type: str
  sample: "3"
worker_role:
  description: The worker side's role.
  returned: always
  type: str
  sample: tests
expires_at:
  description: When the conversation's tokens expire (ISO 8601, UTC). In check mode, an estimate for a
    creation or rotation.
  returned: always
  type: str
  sample: "2026-12-24T01:00:00+00:00"
credentials_path:
  description: The orchestrator's credentials file for this worker.
  returned: always
  type: str
  sample: /var/lib/s2-fleet/credentials/s2-worker-3-credentials.json
revoked_conversation_ids:
  description: Conversations revoked by this run (duplicates, replaced ones, or all for O(state=absent)).
  returned: always
  type: list
  elements: str
  sample: []
"""

import datetime
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.s2.fleet.plugins.module_utils import _credentials_flow as flow
from ansible_collections.s2.fleet.plugins.module_utils.runtime import Failure, bad_result

TOKEN_FIELDS = ("coordinator_token", "worker_token")


def credentials_path(credentials_dir, worker_id):
    return os.path.join(credentials_dir, "s2-worker-%s-credentials.json" % worker_id)


def read_credentials(path):
    """The parsed credentials file when it is a usable orchestrator copy (both tokens), else None."""
    data = flow.read_json_object(path)
    if data is None or not isinstance(data.get("conversation_id"), str):
        return None
    if len(flow.tokens_of(data, TOKEN_FIELDS)) != len(TOKEN_FIELDS):
        return None
    return data


def describe(conv=None, data=None, path=None):
    """Diff metadata of a conversation and/or its credentials file: never a token."""
    out = {}
    if data:
        for name in ("conversation_id", "worker_id", "worker_role", "expires_at"):
            out[name] = data.get(name)
    if conv:
        out.update(
            conversation_id=conv.get("conversation_id"),
            worker_id="%s" % conv.get("worker_id"),
            coordinator_role=conv.get("coordinator_role"),
            worker_role=conv.get("worker_role"),
            expires_at=conv.get("expires_at"),
        )
    if out and path:
        out["credentials_path"] = path
    return out


def _new_credentials(issued, params, tool):
    """The credentials file content from a create/rotate result (the runtime's document); Failure when a field
    is missing."""
    # the orchestrator's copy: the bridge and CA as the orchestrator reaches them (admin_config)
    document = flow.credentials_document(issued, params["bridge_url"], params["ca_file"])
    document["worker_id"] = "%s" % (document["worker_id"] or params["worker_id"])
    document["worker_role"] = document["worker_role"] or params["partner_role"]
    missing = [
        name
        for name in ("conversation_id", "expires_at") + TOKEN_FIELDS
        if not isinstance(document[name], str) or not document[name]
    ]
    if missing:
        raise bad_result(tool, "%s result lacks %s" % (tool, ", ".join(missing)))
    return document


def plan(params, conversations, data, file_ok, now):
    """Decide what to do: (action, target, revoke) from the bridge's live conversations and the file.

    action: created, rotated, updated, unchanged (present/rotated) or revoked, absent (absent).
    target: the live conversation kept or rotated (None for created/absent).
    revoke: the live conversations to revoke.
    """
    state = params["state"]
    worker_id = params["worker_id"]
    live = [
        c
        for c in conversations
        if isinstance(c, dict) and not c.get("revoked") and "%s" % c.get("worker_id") == worker_id
    ]
    live.sort(key=lambda c: flow.parse_time(c.get("created_at")) or flow.EPOCH, reverse=True)  # newest first
    file_conv = None
    if data:
        file_conv = next((c for c in live if c.get("conversation_id") == data["conversation_id"]), None)

    if state == "absent":
        file_exists = os.path.lexists(credentials_path(params["credentials_dir"], worker_id))
        return ("revoked" if live or file_exists else "absent"), None, live

    def roles_ok(conv):
        return conv.get("coordinator_role") == params["my_role"] and conv.get("worker_role") == params["partner_role"]

    target = file_conv
    if target is None and live:
        target = next((c for c in live if roles_ok(c)), live[0])
    revoke = [c for c in live if c is not target]
    if target is not None and not roles_ok(target):
        revoke.append(target)
        target = None

    if target is None:
        return "created", None, revoke
    if state == "rotated" or target is not file_conv:
        return "rotated", target, revoke
    bridge_expiry = flow.parse_time(target.get("expires_at"))
    if bridge_expiry is None:
        raise Failure(
            "bad_result",
            "list_conversations gave no expires_at for %s" % target.get("conversation_id"),
            tool="list_conversations",
        )
    if flow.parse_time(data.get("expires_at")) != bridge_expiry:
        # The file holds tokens of an older generation (a rotation whose file write was lost).
        return "rotated", target, revoke
    if (bridge_expiry - now).total_seconds() < params["min_lifetime_s"]:
        return "rotated", target, revoke
    if not file_ok or desired_from_file(data, params) != data:
        return "updated", target, revoke
    return "unchanged", target, revoke


def desired_from_file(data, params):
    """The file's content with the settings this run asks for (same tokens)."""
    values = dict(data)
    values.update(worker_id=params["worker_id"], bridge_url=params["bridge_url"], ca_file=params["ca_file"] or "")
    return {name: values.get(name) for name in flow.FIELDS}


def converge(params, call, check_mode=False, on_secret=None, now=None):
    """Bring one worker's conversation and credentials file to params['state'].

    params: the module's parameters, with bridge_url and ca_file of its admin_config (flow.run).
    call(tool, arguments) -> dict calls an admin tool on the bridge (AdminBridge.call).  on_secret(value) is
    told every token this run reads or receives (the module registers them as no_log values).  Returns the
    module result plus a 'diff' key; holds no token.
    """
    now = now or flow.utcnow()
    on_secret = on_secret or (lambda value: None)
    worker_id = params["worker_id"]
    path = credentials_path(params["credentials_dir"], worker_id)
    uid, gid = flow.resolve_ids(params.get("owner"), params.get("group"))

    listing = call("list_conversations", {"include_revoked": False})
    conversations = listing.get("conversations")
    if not isinstance(conversations, list):
        raise bad_result("list_conversations", "list_conversations returned no conversations list")
    data = read_credentials(path)
    for token in flow.tokens_of(data, TOKEN_FIELDS):
        on_secret(token)
    file_ok = (
        data is not None
        and not flow.file_needs_fix(path, uid, gid)
        and not flow.directory_needs_fix(params["credentials_dir"], uid, gid)
    )

    action, target, revoke = plan(params, conversations, data, file_ok, now)
    before_conv = target if target is not None else (revoke[0] if revoke else None)
    before = describe(before_conv, data, path if data else None)
    revoked_ids = [c.get("conversation_id") for c in revoke]

    result = {
        "action": action,
        "worker_id": worker_id,
        "credentials_path": path,
        "revoked_conversation_ids": revoked_ids,
    }
    changed = action not in ("unchanged", "absent") or bool(revoke)
    mutated = []

    def fail_after(err):
        if not mutated:
            raise err
        raise Failure(
            "credentials_file", "%s (after %s had already been done)" % (err, ", ".join(mutated)), changed=True
        )

    def revoke_all():
        for conv in revoke:
            if not check_mode:
                call("revoke_conversation", {"conversation_id": conv.get("conversation_id")})
                mutated.append("revoke_conversation %s" % conv.get("conversation_id"))

    after = {}
    issued = None
    try:
        if action == "created":
            # The bridge allows one live conversation per worker: a replaced one goes first.
            revoke_all()
        if action in ("created", "rotated"):
            if check_mode:
                expires = flow.iso(now + datetime.timedelta(seconds=params["ttl_s"]))
                conv = dict(
                    target or {},
                    worker_id=worker_id,
                    coordinator_role=params["my_role"],
                    worker_role=params["partner_role"],
                    expires_at=expires,
                )
                if target is None:
                    conv["conversation_id"] = None
                after = describe(conv, None, path)
            else:
                if action == "created":
                    tool = "create_conversation"
                    issued = call(
                        tool,
                        {
                            "my_role": params["my_role"],
                            "partner_role": params["partner_role"],
                            "worker_id": worker_id,
                            "ttl_s": params["ttl_s"],
                        },
                    )
                else:
                    tool = "rotate_conversation"
                    issued = call(tool, {"conversation_id": target["conversation_id"], "ttl_s": params["ttl_s"]})
                for token in flow.tokens_of(issued, TOKEN_FIELDS):
                    on_secret(token)
                mutated.append("%s %s" % (tool, issued.get("conversation_id")))
                content = _new_credentials(issued, params, tool)
                flow.ensure_directory(params["credentials_dir"], uid, gid)
                flow.write_file(path, content, uid, gid)
                mutated.append("writing %s" % path)
                coordinator_role = (target or {}).get("coordinator_role") or params["my_role"]
                after = describe(
                    dict(issued, coordinator_role=issued.get("coordinator_role", coordinator_role)), None, path
                )
        elif action in ("updated", "unchanged"):
            if action == "updated" and not check_mode:
                flow.ensure_directory(params["credentials_dir"], uid, gid)
                flow.write_file(path, desired_from_file(data, params), uid, gid)
                mutated.append("writing %s" % path)
            after = describe(target, desired_from_file(data, params), path)

        if action != "created":
            revoke_all()

        if action == "revoked" and os.path.lexists(path) and not check_mode:
            os.remove(path)
            mutated.append("removing %s" % path)
    except (Failure, IOError, OSError) as err:
        fail_after(err)

    if action in ("revoked", "absent"):
        gone = (data or {}).get("conversation_id") or (revoked_ids[0] if revoked_ids else None)
        result.update(
            conversation_id=gone,
            worker_role=(data or {}).get("worker_role") or (revoke[0].get("worker_role") if revoke else None),
            expires_at=None,
        )
    else:
        result.update(
            conversation_id=after.get("conversation_id"),
            worker_role=after.get("worker_role"),
            expires_at=after.get("expires_at"),
        )
    result["changed"] = changed
    result["diff"] = {"before": before, "after": after}
    return result


def check_worker_id(params):
    """The runtime's worker-id rule (the id names the credentials file)."""
    if not flow.is_worker_id(params["worker_id"]):
        return "worker_id %r: %s (it names the credentials file)" % (params["worker_id"], flow.WORKER_ID_FIX)
    return None


def main():
    module = AnsibleModule(
        argument_spec=flow.argument_spec(
            my_role={"type": "str", "default": "s2-orchestrator"},
            partner_role={"type": "str"},
            worker_id={"type": "str", "required": True},
            state={"type": "str", "default": "present", "choices": ["present", "absent", "rotated"]},
            credentials_dir={"type": "path", "default": "/var/lib/s2-fleet/credentials"},
        ),
        required_if=[("state", "present", ["partner_role"]), ("state", "rotated", ["partner_role"])],
        supports_check_mode=True,
    )
    flow.run(module, converge, prepare=check_worker_id)


if __name__ == "__main__":
    main()
