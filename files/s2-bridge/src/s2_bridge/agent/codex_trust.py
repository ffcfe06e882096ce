"""`s2-bridge codex-trust-hooks`: marks our Codex hooks as trusted, so Codex runs them.

Codex (0.171.0) silently skips a non-managed command hook until its definition is trusted:
`[hooks.state."<key>"] trusted_hash = "<hash>"` in the user's config.toml. The hash is
Codex's own and changes between versions, so it is never computed here: this command asks
Codex itself, through `codex app-server` (JSON-RPC, one JSON object per line on stdio, no
"jsonrpc" member):

1. `initialize` {clientInfo} -> {userAgent, codexHome, ...}, then the `initialized` notification;
2. `hooks/list` {} -> {data: [{hooks: [{key, eventName, command, source, isManaged,
   currentHash, trustStatus}, ...], errors, warnings}]};
3. `config/batchWrite` {edits: [{keyPath: "hooks.state", value: {key: {trusted_hash}},
   mergeStrategy: "upsert"}]}, only for our hooks that are not trusted for their current hash
   (the upsert is a deep merge: every other hook's state, and our own `enabled`, stay as they are);
4. `hooks/list` again: each hook written must now be "trusted".

Only user-level hooks (`source == "user"`: $CODEX_HOME/config.toml or hooks.json) whose command
contains --match are trusted; hooks from a project's .codex/, plugins or managed config never
are. Prints one line per hook trusted, then "trusted N hook(s), M already trusted". Exit 0 on
success, 69 when Codex is not installed, 1 on any other failure (one line on stderr naming the
fix). One deadline (--timeout-s) bounds the whole run, and the app-server's process group is
always shut down (stdin closed, then SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from s2_bridge import __version__
from s2_bridge.contract import exitcodes
from s2_bridge.contract.argtypes import seconds_between

PROG = "s2-bridge codex-trust-hooks"
MATCH_DEFAULT = "s2-bridge hook"
TIMEOUT_DEFAULT_S = 30.0
TIMEOUT_MIN_S = 1.0
TIMEOUT_MAX_S = 600.0
CODEX_PACKAGE = "@openai/codex@0.171.0"
INSTALL_FIX = f"install it with `npm install -g {CODEX_PACKAGE}` or pass --codex PATH"
CLIENT_INFO = {"name": "s2_bridge", "title": "s2-bridge codex-trust-hooks", "version": __version__}
SHUTDOWN_GRACE_S = (3.0, 2.0, 2.0)  # after stdin EOF, after SIGTERM, after SIGKILL
STDERR_LINES_KEPT = 20
LINE_MAX_CHARS = 300


class TrustError(Exception):
    """A failure reported as one line on stderr, exit 1. The text names the fix."""


class CodexMissing(TrustError):
    """The codex executable cannot be found or started: exit 69."""


@dataclass(frozen=True)
class Hook:
    key: str
    event: str  # as in config.toml: SessionStart, UserPromptSubmit, Stop, ...
    command: str
    source: str
    managed: bool
    current_hash: str
    trust_status: str  # managed | untrusted | trusted | modified

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Hook:
        event = str(raw.get("eventName") or "?")
        return cls(
            key=str(raw.get("key") or ""),
            event=event[:1].upper() + event[1:],
            command=str(raw.get("command") or ""),  # only command hooks have one
            source=str(raw.get("source") or ""),
            managed=bool(raw.get("isManaged")),
            current_hash=str(raw.get("currentHash") or ""),
            trust_status=str(raw.get("trustStatus") or ""),
        )

    def is_ours(self, match: str) -> bool:
        return self.source == "user" and not self.managed and bool(self.key) and match in self.command


@dataclass(frozen=True)
class Listing:
    hooks: list[Hook]
    problems: list[str]  # errors Codex reported while loading hook sources
    codex_home: str


@dataclass(frozen=True)
class Outcome:
    trusted: list[Hook]
    already: list[Hook]
    codex_home: str


# --- arguments -------------------------------------------------------------------------------


def _match_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: it would select every hook")
    return text


_timeout_arg = seconds_between(TIMEOUT_MIN_S, TIMEOUT_MAX_S)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `s2-bridge codex-trust-hooks`."""
    parser.add_argument("--codex", metavar="PATH", help="the codex executable (default: `codex` on PATH)")
    parser.add_argument(
        "--match",
        metavar="TEXT",
        type=_match_arg,
        default=MATCH_DEFAULT,
        help=f"trust the user-level hooks whose command contains TEXT (default {MATCH_DEFAULT!r})",
    )
    parser.add_argument(
        "--timeout-s",
        metavar="SECONDS",
        type=_timeout_arg,
        default=TIMEOUT_DEFAULT_S,
        help=f"one deadline for the whole run, {TIMEOUT_MIN_S:g}-{TIMEOUT_MAX_S:g} s (default {TIMEOUT_DEFAULT_S:g})",
    )


# --- the app-server connection ---------------------------------------------------------------


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= LINE_MAX_CHARS else line[: LINE_MAX_CHARS - 3] + "..."


class AppServer:
    """`codex app-server` on stdio: newline-delimited JSON-RPC 2.0 without the "jsonrpc" member."""

    def __init__(self, codex: str, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._next_id = 0
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        try:
            # Own process group: the npm `codex` is a node wrapper that spawns the native binary,
            # and shutdown must reach both.
            self._proc = subprocess.Popen(
                [codex, "app-server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise CodexMissing(f"cannot run {codex}: {exc.strerror or exc}") from None
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # readers

    def _read_stdout(self, stream: IO[bytes]) -> None:
        try:
            for raw in stream:
                try:
                    message = json.loads(raw)
                except ValueError:
                    self._stderr.append("stdout (not JSON): " + raw.decode("utf-8", "replace"))
                    continue
                if isinstance(message, dict):
                    self._inbox.put(message)
        except (OSError, ValueError):
            pass
        finally:
            self._inbox.put(None)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self._stderr.append(line)

    def last_stderr(self) -> str:
        return _one_line(self._stderr[-1]) if self._stderr else "nothing on stderr"

    # requests

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self._proc.poll()
            raise TrustError(
                f"codex app-server exited (status {self._proc.returncode}) before {message.get('method')}: "
                f"{self.last_stderr()}; check that `codex app-server` runs (npm install -g {CODEX_PACKAGE})"
            ) from None

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        self._send(message)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        self._send({"id": request_id, "method": method, "params": params})
        while True:
            remaining = self._deadline - time.monotonic()
            try:
                message = self._inbox.get(timeout=remaining) if remaining > 0 else self._inbox.get_nowait()
            except queue.Empty:
                raise TrustError(
                    f"codex app-server did not answer {method} within {self._timeout_s:g} s (--timeout-s);"
                    f" last stderr: {self.last_stderr()}; run `codex app-server` by hand to see why it hangs"
                ) from None
            if message is None:
                self._inbox.put(None)  # stay at EOF for any later request
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=1)
                raise TrustError(
                    f"codex app-server exited (status {self._proc.returncode}) before answering {method}: "
                    f"{self.last_stderr()}; check `codex app-server` (npm install -g {CODEX_PACKAGE})"
                )
            if "method" in message and "id" in message:
                # A request from the server (approvals and the like): none is expected here.
                self._send({"id": message["id"], "error": {"code": -32601, "message": f"not supported by {PROG}"}})
            elif "method" in message:
                continue  # notifications (configWarning, remoteControl/status/changed, ...): not needed
            elif message.get("id") == request_id:
                if "error" in message:
                    error = message.get("error") or {}
                    text = error.get("message") if isinstance(error, dict) else error
                    raise TrustError(
                        f"codex app-server refused {method}: {_one_line(str(text))}; "
                        f"this command needs Codex {CODEX_PACKAGE.rsplit('@', 1)[1]} (npm install -g {CODEX_PACKAGE})"
                    )
                result = message.get("result")
                if not isinstance(result, dict):
                    raise TrustError(f"codex app-server answered {method} with {type(result).__name__}, not an object")
                return result

    # shutdown

    def close(self) -> None:
        """Closed stdin ends the app-server; a stuck one gets SIGTERM, then SIGKILL (whole group)."""
        proc = self._proc
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        for sig, grace_s in zip((None, signal.SIGTERM, signal.SIGKILL), SHUTDOWN_GRACE_S, strict=True):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Close our ends once the readers saw EOF; a descendant that left the group may still hold
        # the pipes, and closing under a blocked reader would block too (daemon threads, so no leak).
        for reader, stream in zip(self._readers, (proc.stdout, proc.stderr), strict=True):
            reader.join(timeout=1.0)
            if not reader.is_alive() and stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


@contextlib.contextmanager
def connect(codex: str, timeout_s: float) -> Iterator[tuple[AppServer, str]]:
    """An initialized app-server session; yields (server, codexHome)."""
    server = AppServer(codex, timeout_s)
    try:
        answer = server.request("initialize", {"clientInfo": dict(CLIENT_INFO)})
        server.notify("initialized")
        yield server, str(answer.get("codexHome") or "$CODEX_HOME")
    finally:
        server.close()


def list_hooks(server: AppServer, codex_home: str) -> Listing:
    result = server.request("hooks/list", {})
    entries = result.get("data")
    if not isinstance(entries, list):
        raise TrustError("codex app-server answered hooks/list without a data list")
    hooks: dict[str, Hook] = {}
    problems: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for raw in entry.get("hooks") or []:
            if isinstance(raw, dict):
                hook = Hook.from_wire(raw)
                hooks.setdefault(hook.key, hook)
        for error in entry.get("errors") or []:
            if isinstance(error, dict):
                problems.append(_one_line(str(error.get("message") or error)))
    return Listing(list(hooks.values()), problems, codex_home)


def trust(server: AppServer, hooks: list[Hook]) -> None:
    value = {hook.key: {"trusted_hash": hook.current_hash} for hook in hooks}
    edit = {"keyPath": "hooks.state", "value": value, "mergeStrategy": "upsert"}
    server.request("config/batchWrite", {"edits": [edit]})


def trust_hooks(codex: str, match: str, timeout_s: float) -> Outcome:
    with connect(codex, timeout_s) as (server, codex_home):
        listing = list_hooks(server, codex_home)
        ours = [hook for hook in listing.hooks if hook.is_ours(match)]
        if not ours:
            why = listing.problems[:1]
            raise TrustError(
                f"no user-level hook in {codex_home} has a command containing {match!r}"
                + (f" (Codex reports: {why[0]})" if why else "")
                + "; write the hooks into config.toml first, and run this as the user who owns that"
                " CODEX_HOME (or pass --match)"
            )
        already = [hook for hook in ours if hook.trust_status == "trusted"]
        todo = [hook for hook in ours if hook.trust_status != "trusted"]
        for hook in todo:
            if not hook.current_hash:
                raise TrustError(f"Codex listed {hook.key} without a currentHash; upgrade to {CODEX_PACKAGE}")
        if todo:
            trust(server, todo)
            after = {hook.key: hook for hook in list_hooks(server, codex_home).hooks}
            for hook in todo:
                status = after[hook.key].trust_status if hook.key in after else "gone"
                if status != "trusted":
                    raise TrustError(
                        f"{hook.key} is still {status} after the write (was config.toml edited meanwhile?);"
                        " run the command again"
                    )
        return Outcome(todo, already, codex_home)


# --- entry points ----------------------------------------------------------------------------


def find_codex(path: str | None) -> str | None:
    """The codex executable: --codex (a path, or a name looked up on PATH), else `codex` on PATH."""
    return shutil.which(path or "codex")


def run(args: argparse.Namespace) -> int:
    codex = find_codex(args.codex)
    if codex is None:
        where = f"{args.codex} is not an executable" if args.codex else "codex is not on PATH"
        print(f"{PROG}: {where}; {INSTALL_FIX}", file=sys.stderr)
        return exitcodes.UNREACHABLE
    try:
        outcome = trust_hooks(codex, args.match, args.timeout_s)
    except CodexMissing as exc:
        print(f"{PROG}: {exc}; {INSTALL_FIX}", file=sys.stderr)
        return exitcodes.UNREACHABLE
    except TrustError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exitcodes.UNEXPECTED
    for hook in outcome.trusted:
        print(f"trusted {hook.event} hook {hook.key}")
    print(f"trusted {len(outcome.trusted)} hook(s), {len(outcome.already)} already trusted")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    """`python -m s2_bridge.agent.codex_trust`: the same command without the s2-bridge CLI."""
    parser = argparse.ArgumentParser(prog=PROG, description="trust s2-bridge's Codex hooks through codex app-server")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
