"""`s2-bridge hook` as Claude Code runs it: a real subprocess, the event JSON on stdin, a real
bridge on loopback with real TLS, and servers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PKI, Bridge, call, connect, create_conversation, free_port, worker_file
from fixtures_client import admin_call, as_coordinator, cli_env, write_worker_credentials
from s2_bridge.agent import hook
from s2_bridge.contract.credentials import credentials_document, write_private_json
from s2_bridge.contract.tokens import TOKEN_RE

CLI = [sys.executable, "-m", "s2_bridge.cli"]
pytestmark = pytest.mark.anyio

HEAVY = ("mcp", "mcp_types", "pydantic", "httpx2", "anyio", "http.client", "asyncio")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def document(self) -> dict[str, Any]:
        """stdout parsed: exactly one JSON object and nothing else."""
        assert self.stdout.endswith("\n") and self.stdout.count("\n") == 1, self.stdout
        return json.loads(self.stdout)

    def context(self, event: str) -> str:
        document = self.document()
        assert set(document) == {"hookSpecificOutput"}, document
        assert set(document["hookSpecificOutput"]) == {"hookEventName", "additionalContext"}
        assert document["hookSpecificOutput"]["hookEventName"] == event
        return document["hookSpecificOutput"]["additionalContext"]


def run_hook(credentials: Path, event: dict[str, Any] | str, *extra: str, timeout: float = 60.0) -> Run:
    text = event if isinstance(event, str) else json.dumps(event)
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "hook", "--credentials", str(credentials), *extra],
        input=text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        check=False,
    )
    run = Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    assert not TOKEN_RE.search(run.stdout + run.stderr), "a token in the hook's output"
    assert len(run.stderr.splitlines()) <= 1, run.stderr
    return run


def prompt(credentials: Path, *extra: str) -> Run:
    return run_hook(credentials, {"hook_event_name": "UserPromptSubmit", "prompt": "go on"}, *extra)


def stop(credentials: Path, active: bool = False) -> Run:
    return run_hook(credentials, {"hook_event_name": "Stop", "stop_hook_active": active})


def quiet_failure(run: Run, *words: str) -> None:
    """Nothing for the agent, one line for the human, exit 0."""
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    assert run.stderr.startswith("s2-bridge hook: ") and run.stderr.count("\n") == 1, run.stderr
    for word in words:
        assert word in run.stderr, run.stderr


async def new_worker(bridge: Bridge, folder: Path, worker_id: str) -> tuple[dict[str, Any], Path]:
    created = await create_conversation(bridge, worker_id)
    folder.mkdir(mode=0o700, exist_ok=True)
    path = write_worker_credentials(bridge, created, folder / f"s2-worker-{worker_id}-credentials.json")
    return created, path


async def new_lead(bridge: Bridge, folder: Path) -> tuple[str, Path]:
    rotated = await admin_call(bridge, "rotate_lead")
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "s2-lead-credentials.json"
    write_private_json(str(path), credentials_document(rotated, bridge.url, bridge.ca_file))
    return rotated["lead_token"], path


async def as_token(bridge: Bridge, token: str, tool: str, **arguments: Any) -> dict[str, Any]:
    async with connect(bridge, token) as client:
        result = await call(client, tool, **arguments)
    assert "error" not in result, result
    return result


# --- what the agent sees -----------------------------------------------------------------------


async def test_new_messages_and_tasks_are_shown_once(bridge: Bridge, tmp_path: Path) -> None:
    created, creds = await new_worker(bridge, tmp_path / "w3", "3")
    lead_token, _ = await new_lead(bridge, tmp_path / "lead")
    await as_token(bridge, lead_token, "assign_task", title="fix the lint", detail="ruff check", worker_id="3")
    question = await as_token(bridge, lead_token, "send_to_partner", message="how far?", to="3", action_type="question")

    first = prompt(creds)
    assert first.code == 0 and first.stderr == ""
    text = first.context("UserPromptSubmit")
    assert "2 new messages for worker 3 (worker-3-tests)" in text
    assert "[task_assignment]" in text and "fix the lint" in text
    assert f"#{question['message_id']} from s2-orchestrator [question]\n  how far?" in text
    assert "check_messages(ack_through=" in text and "update_task(" in text and "reply_to=" in text
    state = creds.parent / "hook-state-worker-3.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert not TOKEN_RE.search(state.read_text())

    assert prompt(creds).stdout == ""  # once only
    reply = await as_token(
        bridge, lead_token, "send_to_partner", message="and now?", to="3", reply_to=question["message_id"]
    )
    again = prompt(creds, "--client", "codex")  # Codex reads the same shapes
    text = again.context("UserPromptSubmit")
    assert "1 new message for worker 3" in text
    assert f"#{reply['message_id']} from s2-orchestrator [info] (reply to #{question['message_id']})" in text
    assert "how far?" not in text and "fix the lint" not in text
    assert prompt(creds).stdout == ""
    # The bridge still holds them unread: the hook only shows, the agent acknowledges.
    async with connect(bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages")
    assert len(inbox["messages"]) == 3 and inbox["acked_through"] == 0


async def test_session_start_has_the_same_shape_and_the_first_run_starts_at_the_read_cursor(
    bridge: Bridge, tmp_path: Path
) -> None:
    created, creds = await new_worker(bridge, tmp_path, "4")
    await as_coordinator(created, bridge, "send_to_partner", message="old news")
    async with connect(bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages")
        await call(worker, "check_messages", ack_through=inbox["messages"][-1]["id"])
    await as_coordinator(created, bridge, "send_to_partner", message="fresh news")
    text = run_hook(creds, {"hook_event_name": "SessionStart", "source": "startup"}).context("SessionStart")
    assert "fresh news" in text and "old news" not in text
    # Read through check_messages before the hook saw it: not shown again either.
    await as_coordinator(created, bridge, "send_to_partner", message="read already")
    async with connect(bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages")
        await call(worker, "check_messages", ack_through=inbox["messages"][-1]["id"])
    assert prompt(creds).stdout == ""


async def test_messages_the_agent_read_past_the_cursor_are_skipped_in_one_run(bridge: Bridge, tmp_path: Path) -> None:
    created, creds = await new_worker(bridge, tmp_path, "12")
    assert prompt(creds).stdout == ""  # the cursor starts here
    async with connect(bridge, created["coordinator_token"]) as coordinator:
        for n in range(hook.FETCH_LIMIT + 5):
            await call(coordinator, "send_to_partner", message=f"already read {n}")
    async with connect(bridge, created["worker_token"]) as worker:
        inbox = await call(worker, "check_messages", limit=200)
        await call(worker, "check_messages", ack_through=inbox["messages"][-1]["id"])
    await as_coordinator(created, bridge, "send_to_partner", message="the new one")
    text = prompt(creds).context("UserPromptSubmit")
    assert "1 new message for worker 12" in text and "the new one" in text and "already read" not in text


async def test_bodies_are_escaped_and_bounded(bridge: Bridge, tmp_path: Path) -> None:
    created, creds = await new_worker(bridge, tmp_path, "5")
    await as_coordinator(created, bridge, "send_to_partner", message="bell\x07 esc\x1b[31m rtl\u202e cr\r done")
    for n in range(6):
        await as_coordinator(created, bridge, "send_to_partner", message=f"long {n} " + "x" * 3000)
    text = prompt(creds).context("UserPromptSubmit")
    assert "bell\\x07 esc\\x1b[31m rtl\\u202e cr\\x0d done" in text
    assert not any(ch in text for ch in "\x07\x1b\u202e\r")
    assert len(text) <= hook.OUTPUT_MAX_CHARS
    assert "more characters: read it with check_messages" in text  # 3,000 > the 2,000 body bound
    assert "more new messages: call check_messages" in text
    shown = text.count("from s2-orchestrator")
    later = prompt(creds).context("UserPromptSubmit")  # the rest, on the next prompt
    assert shown + later.count("from s2-orchestrator") == 7
    assert "long 5" in later and "long 0" not in later


async def test_the_lead_sees_every_workers_messages_labelled(bridge: Bridge, tmp_path: Path) -> None:
    six, _ = await new_worker(bridge, tmp_path / "w6", "6")
    seven, _ = await new_worker(bridge, tmp_path / "w7", "7")
    _, lead = await new_lead(bridge, tmp_path / "lead")
    await as_token(bridge, six["worker_token"], "send_to_partner", message="six done", action_type="complete")
    await as_token(bridge, seven["worker_token"], "send_to_partner", message="seven stuck", action_type="blocked")
    await as_token(bridge, seven["worker_token"], "send_to_partner", message="six, a hint", to="6")
    text = prompt(lead).context("UserPromptSubmit")
    assert "3 new messages for the lead (s2-orchestrator)" in text
    assert "from worker-6-tests (worker 6) [complete]\n  six done" in text
    assert "from worker-7-tests (worker 7) [blocked]\n  seven stuck" in text
    assert "from worker-7-tests (worker 7) to worker 6 [info]\n  six, a hint" in text
    assert "to=<worker id or role>" in text and "update_task" not in text
    assert (tmp_path / "lead" / "hook-state-lead.json").exists()
    assert stop(lead).document()["decision"] == "block"  # three unread, no tasks (the lead has none)
    assert stop(lead).stdout == ""


async def test_check_messages_reads_the_lead_file(bridge: Bridge, tmp_path: Path) -> None:
    """The lead's credentials file works in check-messages too; senders carry their worker id."""
    eleven, _ = await new_worker(bridge, tmp_path / "w11", "11")
    _, lead = await new_lead(bridge, tmp_path / "lead")
    sent = await as_token(bridge, eleven["worker_token"], "send_to_partner", message="eleven\nhere")
    done = subprocess.run(
        [*CLI, "check-messages", "--credentials", str(lead)],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"#{sent['message_id']} from worker-11-tests (worker 11) [info] eleven here\n"
    assert not TOKEN_RE.search(done.stdout + done.stderr)


# --- Stop --------------------------------------------------------------------------------------


async def test_stop_nudges_once_per_set_of_work_and_never_when_already_active(bridge: Bridge, tmp_path: Path) -> None:
    created, creds = await new_worker(bridge, tmp_path, "8")
    assert stop(creds).stdout == ""  # nothing to do: the agent may stop
    task = await as_coordinator(created, bridge, "assign_task", title="write the docs")
    assert stop(creds, active=True).stdout == ""  # already continuing because of a Stop hook
    nudge = stop(creds).document()
    assert set(nudge) == {"decision", "reason"} and nudge["decision"] == "block"
    assert f'#{task["task_id"]} "write the docs" (assigned)' in nudge["reason"]
    assert "1 unread message" in nudge["reason"]  # the task assignment message
    assert stop(creds).stdout == ""  # the same work: no second forced continue
    await as_coordinator(created, bridge, "send_to_partner", message="also: changelog")
    assert "2 unread messages" in stop(creds).document()["reason"]
    assert stop(creds).stdout == ""
    # A blocked task waits on someone else, and read messages are no reason to go on.
    async with connect(bridge, created["worker_token"]) as worker:
        await call(worker, "update_task", task_id=task["task_id"], state="blocked", note="needs a decision")
        inbox = await call(worker, "check_messages")
        await call(worker, "check_messages", ack_through=inbox["messages"][-1]["id"])
    assert stop(creds).stdout == ""


# --- never in the way ---------------------------------------------------------------------------


def test_closed_port_prints_nothing_and_exits_0(tmp_path: Path) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    quiet_failure(prompt(creds), "no bridge updates this time", "fix:")
    quiet_failure(stop(creds), "no bridge updates this time")
    assert not (tmp_path / "hook-state-worker-3.json").exists()


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that completes TCP handshakes (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@contextlib.contextmanager
def scripted_server(answer: bytes, drip_s: float = 0.0) -> Iterator[int]:
    """Answers every connection with `answer`, one byte every drip_s seconds when drip_s > 0."""
    stop_event = threading.Event()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)

    def serve() -> None:
        while not stop_event.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                if not drip_s:
                    conn.sendall(answer)
                    continue
                for byte in answer:
                    if stop_event.wait(drip_s):
                        break
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop_event.set()
        thread.join(timeout=5)
        sock.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_black_hole_is_cut_off_at_the_deadline(tmp_path: Path, pki: PKI, scheme: str) -> None:
    with black_hole() as port:
        creds = worker_file(tmp_path / "c.json", f"{scheme}://127.0.0.1:{port}/mcp", pki.ca_file)
        run = prompt(creds, "--timeout-s", "0.5")
    quiet_failure(run, "no bridge updates this time")
    assert run.seconds < 0.5 + 4.0  # the deadline plus interpreter start on a busy box


def test_a_server_that_drips_bytes_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    with scripted_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b" " * 100, drip_s=0.05) as port:
        creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{port}/mcp")
        run = prompt(creds, "--timeout-s", "0.6")
    quiet_failure(run, "no answer")
    assert run.seconds < 0.6 + 4.0


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "not JSON"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", "not a JSON object"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"messages":1', "not JSON"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"messages": []}', "lacks"),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "HTTP 503"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not HTTP"),
        (b"", "closed before an HTTP answer"),
    ],
    ids=["text", "array", "truncated-json", "missing-fields", "503", "not-http", "closed"],
)
def test_garbage_answers_print_nothing_and_exit_0(tmp_path: Path, answer: bytes, words: str) -> None:
    with scripted_server(answer) as port:
        creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{port}/mcp")
        quiet_failure(prompt(creds), words)


async def test_a_refused_token_and_a_foreign_certificate_print_nothing(
    bridge: Bridge, tmp_path: Path, pki: PKI
) -> None:
    created, creds = await new_worker(bridge, tmp_path, "9")
    await admin_call(bridge, "revoke_conversation", conversation_id=created["conversation_id"])
    quiet_failure(prompt(creds), "token refused", "install current credentials")
    other = json.loads(creds.read_text()) | {"ca_file": pki.other_ca_file}
    write_private_json(str(creds), other)
    quiet_failure(prompt(creds), "TLS failure", "ca_file")


@pytest.mark.parametrize(
    "stdin",
    ["not json", "[1, 2]", '{"hook_event_name": "PreToolUse"}', "{}"],
    ids=["not-json", "array", "other-event", "no-event"],
)
def test_bad_hook_input_prints_nothing_and_exits_0(tmp_path: Path, stdin: str) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    quiet_failure(run_hook(creds, stdin))


def test_bad_credentials_file_exits_78_with_one_line_and_no_stdout(tmp_path: Path) -> None:
    creds = worker_file(tmp_path / "c.json", f"http://127.0.0.1:{free_port()}/mcp")
    creds.chmod(0o644)
    run = prompt(creds)
    assert run.code == 78 and run.stdout == ""
    assert str(creds) in run.stderr and f"chmod 600 {creds}" in run.stderr
    missing = prompt(tmp_path / "missing.json")
    assert missing.code == 78 and missing.stdout == "" and "missing.json" in missing.stderr
    assert "fix:" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [[], ["--credentials", "x", "--timeout-s", "50"], ["--credentials", "x", "--bogus"], ["--credentials"]],
    ids=["no-credentials", "timeout-out-of-range", "unknown-option", "no-value"],
)
def test_a_usage_error_never_exits_2(args: list[str]) -> None:
    """Claude Code reads exit 2 as "block": a mistyped hook command must not block the agent."""
    done = subprocess.run(
        [*CLI, "hook", *args], input="{}", capture_output=True, text=True, env=cli_env(), check=False, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""


async def test_the_hook_path_loads_no_sdk(bridge: Bridge, tmp_path: Path) -> None:
    created, creds = await new_worker(bridge, tmp_path, "10")
    await as_coordinator(created, bridge, "send_to_partner", message="hello")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *CLI[1:], "hook", "--credentials", str(creds)],
        input='{"hook_event_name": "UserPromptSubmit"}',
        capture_output=True,
        text=True,
        env=cli_env(),
        check=True,
        timeout=60,
    )
    assert "hello" in json.loads(done.stdout)["hookSpecificOutput"]["additionalContext"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {name for name in imported if name.split(".")[0] in HEAVY or name in HEAVY}


def test_state_file_is_private_and_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "hook-state-worker-3.json"
    hook.save_state(path, {"cursor": 4})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    hook.save_state(path, {"cursor": 5})
    assert json.loads(path.read_text()) == {"cursor": 5}
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
