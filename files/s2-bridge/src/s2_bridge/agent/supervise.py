"""`s2-bridge supervise ACTION`: keep `s2-bridge keepalive` running where systemd does not (WSL).

It follows s2-keepalive.service's policy: restart after a failure (non-zero exit or a signal),
with a doubling delay (`backoff.Backoff` without jitter: --backoff-min-s, doubling up to
--backoff-max-s, back to the minimum after a minute of good running) instead of RestartSec; stop
when the keepalive exits 0, or 77/78 (`exitcodes.NO_RESTART`, the unit's
RestartPreventExitStatus), exiting with the keepalive's code.

Actions: `start` (detached unless running; prints started|running), `restart` (SIGHUP: restart
the keepalive now, or start; prints restarted|started), `replace` (stop, then start a fresh
supervisor; prints started), `stop` (SIGTERM: stops the keepalive too; prints stopped|not
running), `status` (exit 0 running, 3 not), `run` (the supervisor in the foreground).

Files (docs/CONTRACTS.md), under the --user's home unless given: `~/.s2/run/` holds
`s2-keepalive-supervisor.lock` (an exclusive flock held by the supervisor and the keepalive it
runs: one instance at a time, and a stale pid file cannot fool `start`) and
`s2-keepalive-supervisor.pid` (for restart/stop); `~/.s2/log/s2-keepalive.log` takes the
supervisor's lines and the keepalive's output, moved to `.log.1` at a (re)start once past
--log-max-bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import pwd
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from s2_bridge.contract import exitcodes
from s2_bridge.contract.backoff import Backoff
from s2_bridge.contract.errors import ConfigError

NAME = "s2-keepalive-supervisor"
NOT_RUNNING = 3  # `status`, as LSB init scripts
GOOD_RUN_S = 60  # a keepalive that ran this long failed afresh: the delay starts again at the minimum
START_WAIT_S = 10.0  # `start` waits this long for the new supervisor to hold the lock
STOP_WAIT_S = 10.0  # `replace` waits this long for the old one to let go


@dataclass(frozen=True)
class Files:
    lock: Path
    pid: Path
    log: Path

    @classmethod
    def of(cls, args: argparse.Namespace) -> Files:
        try:
            home = Path(pwd.getpwnam(args.user).pw_dir) if args.user else Path.home()
        except KeyError:
            raise ConfigError("--user", None, f"no user {args.user!r} on this host", "pass the agent user") from None
        run_dir = Path(args.run_dir) if args.run_dir else home / ".s2" / "run"
        log_dir = Path(args.log_dir) if args.log_dir else home / ".s2" / "log"
        return cls(lock=run_dir / f"{NAME}.lock", pid=run_dir / f"{NAME}.pid", log=log_dir / "s2-keepalive.log")


def runtime_command() -> list[str]:
    """How to run this s2-bridge again: its console script (so `ps` shows `s2-bridge keepalive`)."""
    if Path(sys.argv[0]).name == "s2-bridge":
        return [sys.argv[0]]
    script = Path(sys.executable).with_name("s2-bridge")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "s2_bridge.cli"]  # pragma: no cover - a runtime without its script


def say(message: str) -> None:
    """One supervisor line in its log (stderr is the log file while it runs)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} {NAME}[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def running(files: Files) -> bool:
    """Someone holds the lock: a supervisor (or the keepalive it started) is alive."""
    try:
        fd = os.open(files.lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock when we got it
    return False


def supervisor_pid(files: Files) -> int | None:
    try:
        text = files.pid.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def signal_supervisor(files: Files, sig: int) -> bool:
    """Send `sig` to the running supervisor; False when none runs or its pid file is empty."""
    pid = supervisor_pid(files) if running(files) else None
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        # the keepalive of a supervisor killed with -9 still holds the lock (as with the shell script)
        print(f"{NAME}: the lock is held but process {pid} ({files.pid}) is gone", file=sys.stderr)
        raise SystemExit(exitcodes.UNEXPECTED) from None
    return True


def open_log(files: Files, max_bytes: int) -> None:
    """Point stdout and stderr (ours and the keepalive's) at the log, moving a full one to .1."""
    with contextlib.suppress(FileNotFoundError):
        if files.log.stat().st_size > max_bytes:
            os.replace(files.log, files.log.with_name(files.log.name + ".1"))
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class Supervisor:
    """The restart loop of `run`; signals only set flags, forward SIGTERM and wake a sleep."""

    def __init__(self, argv: list[str], files: Files, log_max_bytes: int, backoff: Backoff, lock_fd: int) -> None:
        self.argv = argv
        self.files = files
        self.log_max_bytes = log_max_bytes
        self.backoff = backoff
        self.lock_fd = lock_fd
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restart_now = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.restart_now = True
        else:
            self.stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        self._stop_child()

    def _stop_child(self) -> None:
        child = self.child
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    def _sleep(self, delay: float) -> None:
        """Sleep, woken early by a signal."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 64):
                pass
        if not (self.stopping or self.restart_now):
            select.select([self._wake_r], [], [], delay)

    def _start_child(self) -> subprocess.Popen[bytes]:
        open_log(self.files, self.log_max_bytes)
        # the keepalive inherits the lock: while it lives, no second keepalive can start
        child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, pass_fds=(self.lock_fd,))
        self.child = child
        if self.stopping or self.restart_now:  # a signal came before self.child was set
            self._stop_child()
        say(f"keepalive started (pid {child.pid})")
        return child

    def loop(self) -> int:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        say("started")
        while True:
            if self.stopping:
                return self._stopped()
            started = time.monotonic()
            code = self._start_child().wait()
            self.child = None
            code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as a shell says
            if self.stopping:
                return self._stopped()
            if self.restart_now:
                self.restart_now = False
                self.backoff.reset()
                say("restarting the keepalive on request")
                continue
            if code == exitcodes.OK:
                say("keepalive stopped (exit 0); supervisor stops too")
                return exitcodes.OK
            if code in exitcodes.NO_RESTART:
                say(
                    f"keepalive exited {code} (77: token refused, 78: bad credentials file): not restarting; "
                    f"fix the credentials (ansible-playbook playbooks/credentials.yml, which starts it again), "
                    f"or run: {NAME} start"
                )
                return code
            ran = int(time.monotonic() - started)
            if ran >= GOOD_RUN_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            say(f"keepalive exited {code} after {ran}s; restarting in {delay:g}s")
            self._sleep(delay)
            if self.restart_now:
                self.restart_now = False
                self.backoff.reset()

    def _stopped(self) -> int:
        say("stopped on request")
        return exitcodes.OK


def runtime_argv(args: argparse.Namespace, command: str) -> list[str]:
    """`s2-bridge COMMAND` for the same credentials file and interval (the keepalive, or this);
    no global option in between: `pgrep -f 's2-bridge keepalive'` finds the keepalive."""
    credentials = str(Path(args.credentials).absolute())
    return [
        *runtime_command(),
        command,
        "--credentials",
        credentials,
        "--interval",
        f"{args.interval:g}",
    ]


def supervise_argv(args: argparse.Namespace, files: Files, action: str) -> list[str]:
    """This command again with every path spelled out (a root `start` runs it as --user)."""
    return [
        *runtime_argv(args, "supervise"),
        *(["--user", args.user] if args.user else []),
        "--run-dir",
        str(files.pid.parent),
        "--log-dir",
        str(files.log.parent),
        "--backoff-min-s",
        str(args.backoff_min_s),
        "--backoff-max-s",
        str(args.backoff_max_s),
        "--log-max-bytes",
        str(args.log_max_bytes),
        action,
    ]


def do_run(args: argparse.Namespace, files: Files) -> int:
    os.umask(0o077)
    files.pid.parent.mkdir(parents=True, exist_ok=True)
    files.log.parent.mkdir(parents=True, exist_ok=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    open_log(files, args.log_max_bytes)
    lock_fd = os.open(files.lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("already running; exiting")
        return exitcodes.OK
    files.pid.write_text(f"{os.getpid()}\n")
    backoff = Backoff(base=args.backoff_min_s, cap=args.backoff_max_s, jitter=False)
    try:
        return Supervisor(runtime_argv(args, "keepalive"), files, args.log_max_bytes, backoff, lock_fd).loop()
    finally:
        files.pid.unlink(missing_ok=True)


def do_start(args: argparse.Namespace, files: Files) -> int:
    if running(files):
        print("running")
        return exitcodes.OK
    argv = supervise_argv(args, files, "run")
    if os.geteuid() == 0 and args.user and args.user != "root":
        argv = ["runuser", "-u", args.user, "--", *argv]
    subprocess.Popen(  # detached on purpose: it outlives this command
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if running(files):
            print("started")
            return exitcodes.OK
        time.sleep(0.1)
    print(f"{NAME}: did not start; see {files.log}", file=sys.stderr)
    return exitcodes.UNEXPECTED


def do_replace(args: argparse.Namespace, files: Files) -> int:
    if signal_supervisor(files, signal.SIGTERM):
        deadline = time.monotonic() + STOP_WAIT_S
        while running(files) and time.monotonic() < deadline:
            time.sleep(0.1)
    return do_start(args, files)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.backoff_min_s <= args.backoff_max_s or args.log_max_bytes < 1:
        print(
            "s2-bridge supervise: need 1 <= --backoff-min-s <= --backoff-max-s and --log-max-bytes >= 1",
            file=sys.stderr,
        )
        return exitcodes.USAGE
    files = Files.of(args)
    if args.action == "run":
        return do_run(args, files)
    if args.action == "start":
        return do_start(args, files)
    if args.action == "replace":
        return do_replace(args, files)
    if args.action == "restart":
        if signal_supervisor(files, signal.SIGHUP):
            print("restarted")
            return exitcodes.OK
        return do_start(args, files)
    if args.action == "stop":
        print("stopped" if signal_supervisor(files, signal.SIGTERM) else "not running")
        return exitcodes.OK
    # status
    if running(files):
        print("running")
        return exitcodes.OK
    print("not running")
    return NOT_RUNNING
