"""`s2-bridge backup --config BRIDGE_TOML --output FILE`: a consistent copy of the bridge's SQLite
database while the bridge serves.

SQLite's online backup API copies every page in one step, inside one read transaction: the copy
is one snapshot of the database (every transaction committed before it began, none after), and
in WAL mode the bridge's writers go on meanwhile. The copy is written 0600 under a temporary
name beside FILE, switched to a single-file journal (no -wal needed to read it), and gets its
name only after `PRAGMA integrity_check` answered ok. One JSON line on stdout; the database
holds token hashes only, and nothing here prints a token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s2_bridge.contract import exitcodes
from s2_bridge.contract.config import load_bridge_config
from s2_bridge.contract.errors import ConfigError

INTEGRITY_ROWS = 20  # integrity_check stops after this many problems


class Refused(Exception):
    """The command will not do what was asked; the line names the file, the problem and the fix."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        super().__init__(f"{os.fspath(path)}: {problem}; fix: {fix}")


def connect_existing(path: Path) -> sqlite3.Connection:
    """A read-write connection to a database that must exist (sqlite would create a missing one).
    Read-write, so that the last connection to close checkpoints and removes -wal and -shm."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    """[] when `PRAGMA integrity_check` answers ok, else its lines."""
    rows = [str(row[0]) for row in db.execute(f"PRAGMA integrity_check({INTEGRITY_ROWS})")]
    return [] if rows == ["ok"] else rows


def describe(db: sqlite3.Connection) -> dict[str, Any]:
    """Schema version, message count and newest message id of a bridge database."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    messages, newest = 0, 0
    if "messages" in tables:
        messages, newest = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM messages").fetchone()
    return {"schema_version": version, "messages": int(messages), "newest_message_id": int(newest), "tables": tables}


def give_back_sidecars(database: Path) -> None:
    """Run as root on a database another user owns (the bridge's), a -wal or -shm file that this
    connection had to create is handed to that user, so a bridge starting meanwhile can open it."""
    if os.geteuid() != 0:
        return
    owner = database.stat()
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            sidecar = Path(f"{database}{suffix}")
            if sidecar.stat().st_uid != owner.st_uid:
                os.chown(sidecar, owner.st_uid, owner.st_gid)


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(output: Path, force: bool) -> None:
    if output.is_dir():
        raise Refused(output, "is a directory", "name a file in it for --output, e.g. DIR/bridge-DATE.db")
    if (output.exists() or output.is_symlink()) and not force:
        raise Refused(output, "already exists", "name a new file for --output, or add --force to replace it")
    if not output.parent.is_dir():
        raise Refused(output.parent, "does not exist (the directory of --output)", "create it: mkdir -m 0700 DIR")


def backup(source: Path, output: Path, *, force: bool = False) -> dict[str, Any]:
    """Copy `source` to `output` (see the module's docstring); what the JSON line reports."""
    started = time.monotonic()
    check_output(output, force)
    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise Refused(
            temp, f"cannot create the temporary file ({exc.strerror})", "check the directory's permissions"
        ) from None
    try:
        src = connect_existing(source)
        try:
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens -wal/-shm
            give_back_sidecars(source)
            dst = sqlite3.connect(temp, isolation_level=None)
            try:
                snapshot_at = datetime.now(UTC)  # every commit before this instant is in the copy
                copy_started = time.monotonic()
                src.backup(dst, pages=-1)  # all pages in one step: one read transaction, one snapshot
                copy_s = time.monotonic() - copy_started
            finally:
                dst.close()
        finally:
            src.close()
        dst = sqlite3.connect(temp, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal to carry
            problems = integrity_problems(dst)
            facts = describe(dst)
        finally:
            dst.close()
        if problems:
            raise Refused(
                source,
                f"the copy failed PRAGMA integrity_check: {'; '.join(problems[:3])}",
                "the database itself is damaged: restore the newest good backup (s2-bridge restore)",
            )
        fsync_path(temp)
        install(temp, output, force)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    fsync_path(output.parent, directory=True)
    return {
        "path": str(output.absolute()),
        "bytes": output.stat().st_size,
        "schema_version": facts["schema_version"],
        "messages": facts["messages"],
        "newest_message_id": facts["newest_message_id"],
        "integrity_check": "ok",
        "snapshot_at": snapshot_at.isoformat(),
        "copy_seconds": round(copy_s, 3),
        "seconds": round(time.monotonic() - started, 3),
        "source": str(source.absolute()),
    }


def install(temp: Path, output: Path, force: bool) -> None:
    """Give the checked copy its name: replace an existing file only with --force."""
    if force:
        os.replace(temp, output)
        return
    try:
        os.link(temp, output)  # fails if the name appeared meanwhile: never overwrites
    except FileExistsError:
        raise Refused(output, "already exists", "name a new file for --output, or add --force to replace it") from None
    except OSError:  # a file system without hard links
        if output.exists():
            raise Refused(output, "already exists", "name a new file for --output, or add --force") from None
        temp.rename(output)


def run(args: argparse.Namespace) -> int:
    config = load_bridge_config(args.config)
    source = Path(config.storage.path)
    if not source.is_file():
        raise ConfigError(
            config.path,
            "storage.path",
            f"{source} does not exist",
            "point storage.path at the bridge's database (the bridge creates it when it first starts)",
        )
    try:
        result = backup(source, Path(args.output), force=args.force)
    except Refused as exc:
        print(f"s2-bridge backup: {exc}", file=sys.stderr)
        return exitcodes.UNEXPECTED
    except sqlite3.Error as exc:
        print(
            f"s2-bridge backup: {source}: cannot copy this database ({exc}); fix: check that storage.path is the "
            "bridge's database and that this user may read and write its directory (run as root or s2-bridge)",
            file=sys.stderr,
        )
        return exitcodes.UNEXPECTED
    except OSError as exc:
        where = exc.filename or args.output
        print(
            f"s2-bridge backup: {where}: {exc.strerror or exc}; fix: free space or fix permissions there",
            file=sys.stderr,
        )
        return exitcodes.UNEXPECTED
    print(json.dumps(result))
    return exitcodes.OK
