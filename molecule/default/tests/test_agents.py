"""Agents in the loop, driven the way the agents drive the fleet: inside each container, as the
agent user, through the MCP server entry Ansible wrote into the agent's own client config (the
real stdio proxy with that machine's credentials) and the hook command Ansible wrote into its
Claude Code settings (or the Codex equivalent), with the MCP Python client.

The lead (the orchestrator's agent) assigns eight tasks, some to "any", and broadcasts once;
worker-6 messages worker-1 directly and worker-1 replies; every worker's hook shows its task and
the broadcast exactly once and then nothing new; the lead sees all of it.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any

import pytest
from agents import VENV_PYTHON, agent_calls, as_agent
from s2_bridge.contract.tokens import TOKEN_RE

AGENT_HOME = "/home/agent"
BROADCAST = "freeze main: no merges until the release is tagged"

# The hook commands Ansible merged into the agent's client config, by event: Claude Code's
# ~/.claude/settings.json, or Codex's [[hooks.EVENT]] tables in ~/.codex/config.toml.
HOOKS_SCRIPT = r"""
import json, os, sys, tomllib
if sys.argv[1] == "codex":
    with open(os.path.expanduser("~/.codex/config.toml"), "rb") as handle:
        hooks = tomllib.load(handle).get("hooks", {})
else:
    with open(os.path.expanduser("~/.claude/settings.json")) as handle:
        hooks = json.load(handle).get("hooks", {})
ours = {}
for event, groups in hooks.items():
    if not isinstance(groups, list):
        continue  # Codex's own hooks.state table
    commands = [h.get("command", "") for group in groups for h in group.get("hooks", [])]
    ours[event] = [c for c in commands if "s2-bridge" in c]
print(json.dumps(ours))
"""


def agent_kind(inventory, name: str) -> str:
    if name in inventory["groups"]["orchestrator"]:
        return str(inventory["hostvars"][name].get("s2_lead_agent_kind", "claude_code"))
    return str(inventory["hostvars"][name]["s2_agent_kind"])


def hook_command(host, kind: str) -> str:
    """The command the agent's client runs on each prompt."""
    result = as_agent(host, VENV_PYTHON, "-c", HOOKS_SCRIPT, kind)
    assert result.rc == 0, result.stderr
    hooks = json.loads(result.stdout)
    assert {"SessionStart", "UserPromptSubmit", "Stop"} <= set(hooks), hooks
    commands = hooks["UserPromptSubmit"]
    assert len(commands) == 1, commands
    return commands[0]


def run_hook(host, command: str, event: str, **extra: Any) -> tuple[str, dict[str, Any] | None]:
    payload = json.dumps({"hook_event_name": event, "session_id": "verify", "cwd": AGENT_HOME, **extra})
    result = host.run(f"printf %s {shlex.quote(payload)} | runuser -u agent -- sh -c {shlex.quote(command)}")
    assert result.rc == 0, (command, result.stderr)
    assert not TOKEN_RE.search(result.stdout + result.stderr)
    text = result.stdout.strip()
    return text, (json.loads(text) if text else None)


def context_of(output: dict[str, Any] | None, event: str) -> str:
    assert output is not None, f"{event}: the hook printed nothing"
    specific = output["hookSpecificOutput"]
    assert specific["hookEventName"] == event
    return specific["additionalContext"]


@pytest.fixture(scope="module")
def names(inventory) -> dict[str, str]:
    """worker id -> inventory name"""
    return {str(inventory["hostvars"][n]["s2_worker_id"]): n for n in inventory["groups"]["workers"]}


@pytest.fixture(scope="module")
def drive(get_lab_host, inventory, names) -> dict[str, Any]:
    """The whole exchange, once; the tests below read what it left."""
    orch = get_lab_host(inventory["groups"]["orchestrator"][0])
    lead_kind = agent_kind(inventory, inventory["groups"]["orchestrator"][0])
    ids = sorted(names, key=int)
    named = ids[:5]

    def healthy() -> bool:
        status = agent_calls(orch, lead_kind, [("fleet_status", {})])[0]
        return len(status["workers"]) == len(ids) and all(w["health"] == "healthy" for w in status["workers"])

    deadline = time.monotonic() + 90
    while not healthy():
        assert time.monotonic() < deadline, "the fleet did not become healthy"
        time.sleep(3)
    roles = {wid: inventory["hostvars"][names[wid]].get("s2_worker_role") for wid in ids}
    plan: list[tuple[str, dict[str, Any]]] = []
    for index, wid in enumerate(named):
        # half by id, half by role name
        target = wid if index % 2 == 0 else f"worker-{wid}-{roles[wid]}"
        plan.append(("assign_task", {"title": f"verify task for worker {wid}", "worker_id": target}))
    plan += [("assign_task", {"title": f"verify task for anyone {n}", "worker_id": "any"}) for n in range(3)]
    plan.append(("send_to_partner", {"to": "all", "message": BROADCAST}))
    lead_results = agent_calls(orch, lead_kind, plan)

    six, one = get_lab_host(names["6"]), get_lab_host(names["1"])
    direct = agent_calls(
        six,
        agent_kind(inventory, names["6"]),
        [("send_to_partner", {"to": f"worker-1-{roles['1']}", "message": "your change breaks GET /users"})],
    )[0]
    inbox = agent_calls(one, agent_kind(inventory, names["1"]), [("check_messages", {})])[0]["messages"]
    from_six = [m for m in inbox if m["from_worker"] == "6"]
    reply = agent_calls(
        one,
        agent_kind(inventory, names["1"]),
        [("send_to_partner", {"reply_to": from_six[0]["id"], "message": "fixed, please re-run"})],
    )[0]
    return {"lead": lead_results, "direct": direct, "from_six": from_six, "reply": reply, "ids": ids}


def test_lead_assigns_eight_tasks_some_to_any_and_broadcasts(drive, names):
    tasks = drive["lead"][:8]
    assert all("error" not in t for t in tasks), tasks
    # five named, three "any": the least-loaded healthy workers are the three without a task
    assert sorted((t["worker_id"] for t in tasks), key=int) == drive["ids"]
    broadcast = drive["lead"][8]
    assert sorted(broadcast["recipients"], key=int) == drive["ids"]


def test_worker_six_messages_worker_one_and_gets_a_reply(drive, get_lab_host, inventory, names):
    assert drive["direct"]["recipients"] == ["1"]
    assert len(drive["from_six"]) == 1 and drive["from_six"][0]["to_worker"] == "1"
    assert drive["reply"]["recipients"] == ["6"]
    six = get_lab_host(names["6"])
    got = agent_calls(six, agent_kind(inventory, names["6"]), [("check_messages", {})])[0]["messages"]
    answers = [m for m in got if m["from_worker"] == "1"]
    assert [a["reply_to"] for a in answers] == [drive["from_six"][0]["id"]]


def test_every_hook_shows_its_task_and_the_broadcast_once_then_nothing(drive, get_lab_host, inventory, names):
    tasks = {t["worker_id"]: t for t in drive["lead"][:8]}
    for wid, name in names.items():
        host = get_lab_host(name)
        command = hook_command(host, agent_kind(inventory, name))
        assert not TOKEN_RE.search(command)
        _, first = run_hook(host, command, "UserPromptSubmit", prompt="what next?")
        context = context_of(first, "UserPromptSubmit")
        assert context.count(BROADCAST) == 1, (name, context)
        assert context.count(f"#{tasks[wid]['task_id']}") >= 1 and tasks[wid]["title"] in context, (name, context)
        again, _ = run_hook(host, command, "UserPromptSubmit", prompt="and now?")
        assert again == "", (name, again)
        # an open task makes the first stop continue, once
        _, stop = run_hook(host, command, "Stop", stop_hook_active=False)
        assert stop is not None and stop["decision"] == "block", (name, stop)
        assert str(tasks[wid]["task_id"]) in stop["reason"]
        quiet, _ = run_hook(host, command, "Stop", stop_hook_active=False)
        assert quiet == "", (name, quiet)


def test_the_lead_sees_every_worker_message(drive, get_lab_host, inventory):
    orch = get_lab_host(inventory["groups"]["orchestrator"][0])
    lead_kind = agent_kind(inventory, inventory["groups"]["orchestrator"][0])
    inbox = agent_calls(orch, lead_kind, [("check_messages", {"limit": 200})])[0]["messages"]
    pairs = {(m["from_worker"], m["to_worker"], m["message"]) for m in inbox}
    assert ("6", "1", "your change breaks GET /users") in pairs
    assert ("1", "6", "fixed, please re-run") in pairs
    command = hook_command(orch, lead_kind)
    _, shown = run_hook(orch, command, "SessionStart", source="startup")
    context = context_of(shown, "SessionStart")
    assert context.count("your change breaks GET /users") == 1 and "fixed, please re-run" in context
    again, _ = run_hook(orch, command, "UserPromptSubmit", prompt="anything new?")
    assert again == ""
    # with the lead active, a worker sees its partner alive
    partner = agent_calls(get_lab_host(drive_name(inventory)), "claude_code", [("check_partner_status", {})])[0]
    assert partner["alive"] is True, partner


def drive_name(inventory) -> str:
    return next(n for n in inventory["groups"]["workers"] if inventory["hostvars"][n]["s2_agent_kind"] != "codex")


def test_lead_credentials_are_private_and_the_lead_cannot_administer(get_lab_host, inventory):
    orch = get_lab_host(inventory["groups"]["orchestrator"][0])
    creds = orch.file(f"{AGENT_HOME}/.s2/s2-lead-credentials.json")
    assert creds.exists and creds.mode == 0o600 and creds.user == "agent"
    data = json.loads(creds.content_string)
    assert data["lead_token"].startswith("s2l_") and set(data) == {
        "lead_role",
        "lead_token",
        "created_at",
        "expires_at",
        "bridge_url",
        "ca_file",
    }
    refused = agent_calls(
        orch,
        agent_kind(inventory, inventory["groups"]["orchestrator"][0]),
        [("create_conversation", {"my_role": "intruder", "partner_role": "worker-99-x"}), ("rotate_lead", {})],
    )
    assert all(r["error"]["code"] in ("unknown_tool", "forbidden") for r in refused), refused
