"""Random and hostile arguments for every tool, sent raw over the wire (so no client-side
validation filters them): the server answers each with a structured error or a valid result,
never crashes, and its database stays consistent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import Bridge, raw_tool_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s2_bridge.contract import tokens
from s2_bridge.server.store.sqlite import SQLiteStore

TOOLS = {
    "create_conversation": ["my_role", "partner_role", "worker_id", "ttl_s"],
    "list_conversations": ["include_revoked"],
    "rotate_conversation": ["conversation_id", "ttl_s"],
    "revoke_conversation": ["conversation_id"],
    "send_to_partner": ["message", "action_type", "files_involved"],
    "check_messages": ["ack_through", "limit"],
    "wait_for_messages": ["after_id", "timeout_s"],
    "update_my_status": ["status"],
    "check_partner_status": [],
    "heartbeat": ["status"],
    "fleet_status": [],
    "assign_task": ["title", "detail", "worker_id"],
    "list_tasks": ["state", "worker_id"],
    "update_task": ["task_id", "state", "note"],
    "reassign_task": ["task_id", "to_worker_id", "reason"],
    "record_alert": ["worker_id", "kind", "detail"],
}

# Drawn explicitly, not left to chance: the values that crashed the store (issue 14, item 10).
EDGE_INTEGERS = [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, 2**70]
LONE_SURROGATES = ["\ud800", "\udfff", "a\udc00b", "\ud83d", "ok \ud800\ud800 ok"]

hostile_text = st.one_of(
    st.sampled_from(LONE_SURROGATES),
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cs", "Zl", "Zp", "So"]), max_size=50),
    st.sampled_from(["", " ", "\x00", "'; DROP TABLE messages; --", "../../etc/passwd", "%s%n", "\u202e", "𝕊²"]),
    st.integers(min_value=1, max_value=60_000).map(lambda n: "x" * n),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGE_INTEGERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
    st.sampled_from(["info", "question", "done", "in_progress", "silent", "working", "conv_0000000000000000"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=10,
)


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    name = draw(st.sampled_from(sorted(TOOLS)))
    keys = draw(st.lists(st.sampled_from([*TOOLS[name], "junk", "token", "__proto__"]), unique=True, max_size=5))
    arguments = {key: draw(json_values) for key in keys}
    who = draw(st.sampled_from(["worker", "coordinator", "admin"]))
    return name, arguments, who


@pytest.fixture(scope="module")
def fuzz_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bridge, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    bridge = Bridge(workdir=workdir, tls=None, extra_config="[limits]\ncalls_per_s = 10000\ncalls_burst = 10000\n")
    # Seed one conversation through the store, so the fuzzer holds real tokens of each kind.
    bridge.db_path.parent.mkdir(parents=True)
    store = SQLiteStore(str(bridge.db_path))
    coordinator, worker = tokens.new_token("coordinator"), tokens.new_token("worker")
    store.create_conversation(
        worker_id="3",
        coordinator_role="s2-orchestrator",
        worker_role="worker-3-tests",
        coordinator_hash=tokens.token_hash(coordinator),
        worker_hash=tokens.token_hash(worker),
        now=0.0,
        expires_at=4_000_000_000.0,
    )
    store.close()
    bridge.start()
    try:
        yield bridge, {"coordinator": coordinator, "worker": worker, "admin": bridge.admin_token}
    finally:
        bridge.stop()


def post_tool(client: httpx2.Client, url: str, token: str, name: str, arguments: dict[str, Any]) -> httpx2.Response:
    return client.post(url, **raw_tool_call(token, name, arguments, "fuzz"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@pytest.mark.timeout(900)
@given(call=tool_calls())
def test_every_tool_survives_hostile_arguments(fuzz_bridge: tuple[Bridge, dict[str, str]], call: Any) -> None:
    bridge, tokens_by_kind = fuzz_bridge
    name, arguments, who = call
    if name == "wait_for_messages":
        arguments["timeout_s"] = 0  # never let the fuzzer park for a minute
    with httpx2.Client(timeout=30) as client:
        response = post_tool(client, bridge.url, tokens_by_kind[who], name, arguments)
    assert response.status_code == 200, response.text[:500]
    reply = response.json()
    if "error" in reply:  # a JSON-RPC error: the envelope itself was refused
        assert isinstance(reply["error"]["code"], int)
        return
    result = reply["result"]
    if result["isError"]:
        error = json.loads(result["content"][0]["text"])["error"]
        assert error["code"] in {"invalid_argument", "forbidden", "not_found", "conflict", "tool_error"}, error
        assert error["code"] != "tool_error" or "Error executing tool" not in error["message"], error
    else:
        assert isinstance(result["structuredContent"], dict)
    assert bridge.process is not None
    assert bridge.process.poll() is None, "the server died"
    # An answered error is not a crash: no traceback reaches the log.
    assert "Traceback" not in bridge.log_text(), bridge.log_text()[-3000:]


@pytest.mark.parametrize("value", EDGE_INTEGERS[:1] + EDGE_INTEGERS[3:])
@pytest.mark.parametrize(("name", "field"), [("wait_for_messages", "after_id"), ("check_messages", "ack_through")])
def test_integers_beyond_64_bits_name_the_field(
    fuzz_bridge: tuple[Bridge, dict[str, str]], name: str, field: str, value: int
) -> None:
    bridge, tokens_by_kind = fuzz_bridge
    with httpx2.Client(timeout=30) as client:
        response = post_tool(
            client,
            bridge.url,
            tokens_by_kind["worker"],
            name,
            {field: value, "timeout_s": 0} if name == "wait_for_messages" else {field: value},
        )
    error = json.loads(response.json()["result"]["content"][0]["text"])["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", field), error


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_lone_surrogates_name_the_field(fuzz_bridge: tuple[Bridge, dict[str, str]], text: str) -> None:
    bridge, tokens_by_kind = fuzz_bridge
    with httpx2.Client(timeout=30) as client:
        response = post_tool(client, bridge.url, tokens_by_kind["worker"], "send_to_partner", {"message": text})
    error = json.loads(response.json()["result"]["content"][0]["text"])["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", "message"), error


def test_database_is_consistent_after_the_fuzzing(fuzz_bridge: tuple[Bridge, dict[str, str]]) -> None:
    bridge, tokens_by_kind = fuzz_bridge
    with httpx2.Client(timeout=30) as client:
        sent = post_tool(client, bridge.url, tokens_by_kind["worker"], "send_to_partner", {"message": "count me"})
        message_id = sent.json()["result"]["structuredContent"]["message_id"]
        inbox = post_tool(
            client, bridge.url, tokens_by_kind["coordinator"], "check_messages", {"limit": 200, "ack_through": 0}
        ).json()["result"]["structuredContent"]
    db_file = Path(bridge.db_path)
    with sqlite3.connect(db_file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        stored = db.execute("SELECT COUNT(*) FROM messages WHERE from_side='worker'").fetchone()[0]
        assert db.execute("SELECT MAX(id) FROM messages").fetchone()[0] >= message_id
        for (files_json,) in db.execute("SELECT files_json FROM messages"):
            assert isinstance(json.loads(files_json), list)
    assert stored == inbox["unread"] + len(inbox["messages"])
