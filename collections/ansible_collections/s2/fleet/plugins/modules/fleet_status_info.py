#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, S2 fleet maintainers
# MIT License (see LICENSE in the collection root)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: fleet_status_info
short_description: Read the health of every worker from the s2 bridge
version_added: 0.1.0
description:
  - Calls the bridge's C(fleet_status) tool as the admin and returns one entry per worker conversation
    (role, status, last heartbeat, health, open tasks), a printable table and whether every worker is healthy.
  - Runs on the orchestrator host, where O(admin_config) and the admin token file it names are. It only reads.
author:
  - S2 fleet maintainers (@s2-fleet)
extends_documentation_fragment:
  - s2.fleet.bridge
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    description: The module changes nothing, so it has no diff.
  platform:
    platforms: posix
    support: full
    description: Runs on the orchestrator host, where the admin token file is.
seealso:
  - module: s2.fleet.bridge_conversation
"""

EXAMPLES = r"""
- name: Read the fleet's health (the bridge as /etc/s2-bridge/admin.toml names it)
  s2.fleet.fleet_status_info:
  become: true
  register: fleet

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ fleet.table }}"

- name: Fail when a worker is silent or was never seen
  ansible.builtin.assert:
    that: fleet.all_healthy
    fail_msg: "{{ fleet.table | join('\n') }}"
"""

RETURN = r"""
workers:
  description: One entry per live worker conversation, as the bridge's C(fleet_status) tool returns it.
  returned: always
  type: list
  elements: dict
  contains:
    worker_id:
      description: The worker's identifier.
      type: str
      sample: "3"
    worker_role:
      description: The worker side's role.
      type: str
      sample: tests
    conversation_id:
      description: The worker's conversation.
      type: str
      sample: conv_0123456789abcdef
    status:
      description: The worker's last reported status (working, waiting, blocked, complete, idle), or null.
      type: str
      sample: working
    last_heartbeat_at:
      description: Time of the last heartbeat (ISO 8601), null when never seen.
      type: str
      sample: "2026-11-24T01:00:00+00:00"
    heartbeat_age_s:
      description: Seconds since the last heartbeat, null when never seen.
      type: float
      sample: 4.2
    health:
      description: V(healthy), V(silent) (no heartbeat for longer than RV(silent_after_s)) or V(never_seen).
      type: str
      sample: healthy
    open_tasks:
      description: Tasks assigned to the worker that are not done.
      type: int
      sample: 1
  sample: []
table:
  description:
    - The same data as printable lines, a header line first (worker, role, status, health, heartbeat age, open
      tasks), one line per worker in worker id order. It is the table C(s2-bridge status) prints.
    - The heartbeat age reads like V(12s), V(4m05s) or V(3h02m), and V(never) for a worker never seen; a worker that
      has not reported a status shows V(-).
  returned: always
  type: list
  elements: str
  sample:
    - "WORKER  ROLE   STATUS   HEALTH      HEARTBEAT  OPEN TASKS"
    - "3       tests  working  healthy     4s         1"
    - "4       docs   -        never_seen  never      0"
all_healthy:
  description: True when the bridge lists at least one worker and every one is healthy.
  returned: always
  type: bool
  sample: true
silent_after_s:
  description: Heartbeat age in seconds after which the bridge calls a worker silent.
  returned: always
  type: float
  sample: 45.0
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.s2.fleet.plugins.module_utils.runtime import (
    BRIDGE_ARGUMENT_SPEC,
    Failure,
    bad_result,
    connect,
    ensure_runtime,
    fail,
)

# The runtime's one fleet table (the one `s2-bridge status` prints) and its worker order.
try:
    from s2_bridge.contract.models import worker_sort_key
    from s2_bridge.agent.table import fleet_table
except ImportError:  # main() re-runs the module under the runtime venv's python (ensure_runtime) before any use
    fleet_table = worker_sort_key = None


def fleet_status(call):
    """The module result (without 'changed') from the bridge's fleet_status tool; call is AdminBridge.call."""
    answer = call("fleet_status", {})
    workers = answer.get("workers")
    if not isinstance(workers, list) or not all(isinstance(w, dict) and "worker_id" in w for w in workers):
        raise bad_result("fleet_status", "fleet_status returned no list of workers, each with a worker_id")
    workers = sorted(workers, key=lambda w: worker_sort_key("%s" % w["worker_id"]))
    return {
        "workers": workers,
        "table": fleet_table({"workers": workers}).splitlines(),
        "all_healthy": bool(workers) and all(w.get("health") == "healthy" for w in workers),
        "silent_after_s": answer.get("silent_after_s"),
    }


def main():
    module = AnsibleModule(argument_spec=dict(BRIDGE_ARGUMENT_SPEC), supports_check_mode=True)
    ensure_runtime(module)
    try:
        result = fleet_status(connect(module).call)
    except Failure as err:
        fail(module, err)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
