"""`s2-bridge hook`: brings new bridge messages and open tasks into the agent's context.

Claude Code (and Codex, whose hooks take the same input and output shapes) runs it as a
hook and passes the event as JSON on stdin:
- SessionStart, UserPromptSubmit: each new message (a task assignment is one) is shown once,
  as `{"hookSpecificOutput": {"hookEventName": ..., "additionalContext": ...}}` on stdout.
  A cursor in a 0600 state file beside the credentials remembers what was shown; the first
  run starts at the bridge's read cursor, so unread messages are shown once.
- Stop: while messages are unread or tasks are open, `{"decision": "block", "reason": ...}`
  asks the agent to go on, once per set of work and never when `stop_hook_active` is set.

It must never hold up or break the agent: one GET /v1/updates with the standard library only
(no httpx2, pydantic or MCP SDK), every step inside one deadline (--timeout-s, default 1.5 s),
and any failure (bridge down, slow, token refused, a garbled answer) prints nothing on stdout,
one line on stderr and exits 0. A bad credentials file exits 78 (Claude Code shows the line
and goes on). No token ever reaches stdout, stderr or the state file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from s2_bridge.agent.lean_http import HttpFailure, get_json, tls_context
from s2_bridge.contract import exitcodes, permissions, tokens
from s2_bridge.contract.argtypes import seconds_between
from s2_bridge.contract.credentials import Credentials, load_credentials, write_private_json
from s2_bridge.contract.logsafe import escape_controls

EVENTS = ("SessionStart", "UserPromptSubmit", "Stop")
CONTEXT_EVENTS = ("SessionStart", "UserPromptSubmit")
TIMEOUT_DEFAULT_S = 1.5
TIMEOUT_MIN_S = 0.2
TIMEOUT_MAX_S = 10.0
FETCH_LIMIT = 20
BODY_MAX_CHARS = 2_000
OUTPUT_MAX_CHARS = 8_000
TASKS_LISTED = 10
STDIN_MAX_BYTES = 8 * 1024 * 1024  # UserPromptSubmit carries the prompt, pastes included
STATE_VERSION = 1


class HookProblem(Exception):
    """Something that ends this run quietly: one line on stderr, nothing on stdout, exit 0."""


# argparse type for --timeout-s
timeout_arg = seconds_between(TIMEOUT_MIN_S, TIMEOUT_MAX_S)


def warn(problem: str) -> None:
    """The one stderr line of a run; scrubbed of anything token-shaped, whatever its source."""
    line = " ".join(tokens.TOKEN_RE.sub("[token]", problem).split())
    with contextlib.suppress(OSError, ValueError):
        print(f"s2-bridge hook: {line}", file=sys.stderr, flush=True)


def read_event(stream: Any) -> dict[str, Any]:
    data = stream.read(STDIN_MAX_BYTES + 1)
    if len(data) > STDIN_MAX_BYTES:
        raise HookProblem(f"hook input over {STDIN_MAX_BYTES} bytes; ignored")
    try:
        event = json.loads(data or b"{}")
    except (ValueError, RecursionError):
        raise HookProblem("hook input on stdin is not JSON; fix: run this command as a Claude Code hook") from None
    if not isinstance(event, dict):
        raise HookProblem("hook input on stdin is not a JSON object; fix: run this command as a Claude Code hook")
    return event


# --- text ------------------------------------------------------------------------------------


def clean(value: Any, limit: int, *, one_line: bool = False) -> str:
    """Text safe to put in the agent's context: controls escaped, at most `limit` characters."""
    text = str(value if value is not None else "")
    if one_line:
        text = " ".join(text.split())
    extra = len(text) - limit
    if extra > 0:
        text = text[:limit]
    text = escape_controls(text, keep="\t\n")
    if extra > 0:
        text += f" [... {extra} more characters: read it with check_messages]"
    return text


def message_header(message: dict[str, Any], side: str) -> str:
    parts = [f"#{message.get('id')} from {clean(message.get('from_role'), 100, one_line=True)}"]
    if message.get("from_worker") is not None:
        parts.append(f"(worker {clean(message['from_worker'], 64, one_line=True)})")
    if side == "lead" and message.get("to_worker") is not None:
        parts.append(f"to worker {clean(message['to_worker'], 64, one_line=True)}")
    parts.append(f"[{clean(message.get('action_type'), 40, one_line=True)}]")
    if isinstance(message.get("reply_to"), int):
        parts.append(f"(reply to #{message['reply_to']})")
    return " ".join(parts)


def message_entry(message: dict[str, Any], side: str) -> str:
    lines = [message_header(message, side)]
    body = clean(message.get("message"), BODY_MAX_CHARS)
    lines.extend(f"  {line}" if line.strip() else "" for line in body.split("\n"))  # a body cannot fake a header
    files = message.get("files_involved")
    if isinstance(files, list) and files:
        lines.append(f"  files: {clean(', '.join(str(f) for f in files), 400, one_line=True)}")
    return "\n".join(lines)


def who(credentials: Credentials) -> str:
    if credentials.side == "lead":
        return f"the lead ({credentials.worker_role})"
    if credentials.side == "worker":
        return f"worker {credentials.worker_id} ({credentials.worker_role})"
    return f"the coordinator of worker {credentials.worker_id}"


def how_to_act(side: str) -> str:
    """One line naming the tools this identity acts with (from the permission table)."""
    allowed = permissions.tools_for(side)
    steps = ["check_messages(ack_through=<last id you handled>) marks messages read"]
    if "update_task" in allowed:
        steps.append("update_task(task_id, state, note) reports a task's progress")
    to = ", to=<worker id or role>" if side == "lead" else ""
    steps.append(f"send_to_partner(message{to}, reply_to=<id>) answers")
    return "The s2 bridge tools act on them: " + "; ".join(steps) + "."


def context_text(credentials: Credentials, shown: list[dict[str, Any]], more: str) -> str:
    count = len(shown)
    head = f"S2 fleet bridge: {count} new message{'s' if count != 1 else ''} for {who(credentials)}:"
    body = "\n\n".join(message_entry(message, credentials.side) for message in shown)
    tail = f"\n\n{more}" if more else ""
    return f"{head}\n\n{body}{tail}\n\n{how_to_act(credentials.side)}"


def fit(messages: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    """The leading messages whose entries fit OUTPUT_MAX_CHARS (always at least one)."""
    budget = OUTPUT_MAX_CHARS - 800  # header, the "more" line and the reminder
    shown: list[dict[str, Any]] = []
    for message in messages:
        size = len(message_entry(message, side)) + 2
        if shown and size > budget:
            break
        shown.append(message)
        budget -= size
    return shown


def more_line(hidden: int, maybe_more: bool) -> str:
    if hidden and maybe_more:
        return f"{hidden} or more further new messages wait on the bridge: call check_messages to read them."
    if hidden:
        return f"{hidden} more new message{'s' if hidden != 1 else ''}: call check_messages to read them."
    if maybe_more:
        return "More new messages wait on the bridge: call check_messages to read them."
    return ""


def task_line(task: dict[str, Any]) -> str:
    title = clean(task.get("title"), 120, one_line=True)
    return f'#{task.get("task_id")} "{title}" ({clean(task.get("state"), 20, one_line=True)})'


def stop_reason(credentials: Credentials, unread: int, last_id: int, tasks: list[dict[str, Any]]) -> str:
    work = []
    if unread:
        work.append(f"{unread} unread message{'s' if unread != 1 else ''} (newest #{last_id})")
    if tasks:
        listed = ", ".join(task_line(task) for task in tasks[:TASKS_LISTED])
        extra = f" and {len(tasks) - TASKS_LISTED} more" if len(tasks) > TASKS_LISTED else ""
        work.append(f"open task{'s' if len(tasks) != 1 else ''} {listed}{extra}")
    steps = "Read the messages with check_messages and act on them" if unread else "Go on with the tasks"
    if "update_task" in permissions.tools_for(credentials.side):
        steps += "; report each task with update_task (in_progress, done or blocked, with a note)"
    return (
        f"S2 fleet bridge, for {who(credentials)}: before you stop, there is work waiting: "
        f"{'; '.join(work)}. {steps}. If all of it is already handled, say so briefly and stop."
    )


# --- state -----------------------------------------------------------------------------------


def state_path(credentials: Credentials) -> Path:
    """`hook-state-<label>.json` beside the credentials file (one per identity)."""
    label = credentials.label if credentials.side != "coordinator" else f"coordinator-{credentials.worker_id}"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", label)
    return Path(credentials.path).parent / f"hook-state-{safe}.json"


def identity(credentials: Credentials) -> str:
    """What the cursor belongs to: a new conversation or another bridge starts it afresh."""
    return f"{credentials.side}:{credentials.conversation_id}:{credentials.bridge_url}"


def load_state(path: Path, owner: str) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warn(f"{path}: unreadable state ({type(exc).__name__}); starting afresh")
        return {}
    if not isinstance(state, dict) or state.get("identity") != owner or state.get("version") != STATE_VERSION:
        return {}
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic and 0600: a reader sees the old file or the new one. Not fsynced: a cursor lost
    to a power cut only shows some messages again."""
    write_private_json(str(path), state, durable=False)


@contextlib.contextmanager
def state_lock(path: Path, deadline: float) -> Iterator[None]:
    """One hook at a time per identity (two sessions must not both show a message)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HookProblem("another s2-bridge hook holds the state lock; skipped") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- the bridge --------------------------------------------------------------------------------


def within(deadline: float, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """work() on a thread, waited for until the deadline at most: a server that accepts and
    then drips bytes cannot stretch the run past it."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name="fetch", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise HttpFailure("unreachable", "no answer before the deadline", "check the bridge, or raise --timeout-s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def fetch_updates(credentials: Credentials, after: int | None, limit: int, deadline: float) -> dict[str, Any]:
    https = credentials.bridge_url.startswith("https://")
    context = tls_context(credentials.ca_file, credentials.path) if https else None
    query = {"limit": limit} if after is None else {"after": after, "limit": limit}
    updates = within(
        deadline,
        lambda: get_json(
            credentials.bridge_url, credentials.token, "/v1/updates", query=query, context=context, deadline=deadline
        ),
    )
    return check_updates(updates)


def check_updates(updates: dict[str, Any]) -> dict[str, Any]:
    """The fields this command reads, with their types; a garbled answer is a HttpFailure."""
    for key in ("last_id", "unread", "acked_through"):
        if not isinstance(updates.get(key), int):
            raise HttpFailure("bad_answer", f"/v1/updates answer lacks {key}", "upgrade the bridge")
    for key in ("messages", "open_tasks"):
        value = updates.get(key)
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise HttpFailure("bad_answer", f"/v1/updates answer lacks {key}", "upgrade the bridge")
    if not all(isinstance(message.get("id"), int) for message in updates["messages"]):
        raise HttpFailure("bad_answer", "/v1/updates answer has a message without an id", "upgrade the bridge")
    return updates


# --- the two kinds of event ------------------------------------------------------------------


def new_messages(credentials: Credentials, state: dict[str, Any], deadline: float) -> tuple[str, dict[str, Any]]:
    """(the context text, or "" when nothing is new; the state to save)."""
    cursor = state.get("cursor") if isinstance(state.get("cursor"), int) else None
    updates = fetch_updates(credentials, cursor, FETCH_LIMIT, deadline)
    if cursor is not None and updates["last_id"] < cursor:  # a new bridge database: start afresh
        cursor = None
        updates = fetch_updates(credentials, None, FETCH_LIMIT, deadline)
    seen = max(cursor or 0, updates["acked_through"])  # what the agent acknowledged was read
    if cursor is not None and seen > cursor and len(updates["messages"]) == FETCH_LIMIT:
        updates = fetch_updates(credentials, seen, FETCH_LIMIT, deadline)  # it read past this page
    fresh = [m for m in updates["messages"] if m["id"] > seen]
    shown = fit(fresh, credentials.side)
    newest = shown[-1]["id"] if shown else seen
    returned_all = len(updates["messages"]) < FETCH_LIMIT
    maybe_more = not returned_all and updates["messages"][-1]["id"] < updates["last_id"]
    more = more_line(len(fresh) - len(shown), maybe_more)
    text = context_text(credentials, shown, more) if shown else ""
    return text, {**state, "cursor": newest}


def stop_check(credentials: Credentials, state: dict[str, Any], deadline: float) -> tuple[str, dict[str, Any]]:
    """(the reason to go on, or "" to let the agent stop; the state to save)."""
    updates = fetch_updates(credentials, None, 1, deadline)
    unread = updates["unread"]
    # A blocked task waits on someone else: no reason to keep the agent going.
    tasks = [task for task in updates["open_tasks"] if task.get("state") in ("assigned", "in_progress")]
    if not unread and not tasks:
        return "", state
    key = f"m{updates['last_id'] if unread else 0}:t{','.join(str(t.get('task_id')) for t in tasks)}"
    if state.get("stop_nudged") == key:
        return "", state  # this very set of work already made the agent go on once
    return stop_reason(credentials, unread, updates["last_id"], tasks), {**state, "stop_nudged": key}


def hook_output(event_name: str, text: str) -> dict[str, Any]:
    """Claude Code's hook output; Codex (0.171) reads the same shapes for these three events."""
    if event_name == "Stop":
        return {"decision": "block", "reason": text}
    return {"hookSpecificOutput": {"hookEventName": event_name, "additionalContext": text}}


OUTPUTS = {"claude-code": hook_output, "codex": hook_output}


def emit(document: dict[str, Any]) -> None:
    """The only write to stdout: one JSON object (ASCII, so no encoding can garble it)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()


def handle(args: argparse.Namespace, event: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """The output document for this event, or None."""
    name = event.get("hook_event_name")
    if name not in EVENTS:
        raise HookProblem(f"event {str(name)[:40]!r} is not one of {', '.join(EVENTS)}; nothing to do")
    if name == "Stop" and event.get("stop_hook_active") is True:
        return None  # the agent is already going on because of a Stop hook: never loop
    credentials = load_credentials(args.credentials)  # ConfigError: cli prints one line, exit 78
    path = state_path(credentials)
    with state_lock(path, deadline):
        state = load_state(path, identity(credentials))
        check = new_messages if name in CONTEXT_EVENTS else stop_check
        text, new_state = check(credentials, state, deadline)
        if new_state != state:
            try:
                save_state(path, {**new_state, "version": STATE_VERSION, "identity": identity(credentials)})
            except OSError as exc:
                warn(f"cannot save {path} ({exc.strerror}); messages may be shown again")
    return OUTPUTS[args.client](name, text) if text else None


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout_s
    try:
        document = handle(args, read_event(sys.stdin.buffer), deadline)
    except HookProblem as exc:
        warn(str(exc))
        return exitcodes.OK
    except HttpFailure as exc:
        warn(f"no bridge updates this time: {exc}")
        return exitcodes.OK
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a bug or a full disk: never a traceback
        warn(f"skipped after an unexpected {type(exc).__name__}: {exc}; fix: report this")
        return exitcodes.OK
    if document is not None:
        emit(document)
    return exitcodes.OK
