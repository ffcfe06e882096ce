"""`s2-bridge restore --config BRIDGE_TOML --from FILE`: put a backup in place of the bridge's
database. The bridge must be stopped: restore takes the database's lock file without waiting and
refuses while a bridge holds it.

The backup is first copied beside the database (0600, the old database's owner) and checked
there: `PRAGMA integrity_check` ok and a schema version this runtime knows, so what is checked is
what gets installed. The current database is kept as `bridge.db.before-restore-<UTC time>` (its
-wal and -journal, if any, beside it under the same name: that pair opens with every commit it
had), never deleted; the live -wal, -shm and -journal are removed, so nothing of the old database
is replayed into the new one. The database's name always holds a complete file: the old one until
an atomic rename puts the new one there. One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s2_bridge.contract import exitcodes, paths
from s2_bridge.contract.config import load_bridge_config
from s2_bridge.contract.errors import ConfigError
from s2_bridge.server import dblock
from s2_bridge.server.backup import connect_existing, describe, fsync_path, integrity_problems
from s2_bridge.server.store.sqlite import SCHEMA_VERSION

SIDECARS = ("-wal", "-journal")  # kept with the old database; -shm is only an index, rebuilt on open
STOP_FIX = "stop the bridge first (systemctl stop s2-bridge.service), run restore again, then start it"
OTHER_BACKUP_FIX = f"restore another backup, the newest good one (ls -t {paths.BACKUP_DIR})"


def owner_of(database: Path) -> tuple[int, int] | None:
    """Who the restored file belongs to: the current database's owner, else its directory's."""
    for path in (database, database.parent):
        with contextlib.suppress(FileNotFoundError):
            found = path.stat()
            return found.st_uid, found.st_gid
    return None


def check_backup(copy: Path, source: Path) -> dict[str, Any]:
    """integrity_check ok, an s2-bridge database, a schema this runtime knows; its facts."""
    try:
        db = connect_existing(copy)
        try:
            problems = integrity_problems(db)
            facts = describe(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            str(source),
            None,
            f"is not a readable SQLite database ({exc})",
            f"it is damaged or not a backup: {OTHER_BACKUP_FIX}",
        ) from None
    if problems:
        raise ConfigError(
            str(source),
            None,
            f"failed PRAGMA integrity_check ({'; '.join(problems[:3])})",
            f"it is damaged: {OTHER_BACKUP_FIX}",
        )
    version = facts["schema_version"]
    if version > SCHEMA_VERSION:
        raise ConfigError(
            str(source),
            "schema_version",
            f"is {version}, newer than this runtime's {SCHEMA_VERSION}",
            "install the s2-bridge release that wrote it (site.yml with that release) and restore with it, "
            "or restore a backup made by this release",
        )
    if version < 1 or "messages" not in facts["tables"]:
        raise ConfigError(
            str(source),
            "schema_version",
            f"is {version} and the file has no messages table: not an s2-bridge database",
            f"pass a file made by s2-bridge backup: {OTHER_BACKUP_FIX}",
        )
    return facts


def copy_beside(source: Path, database: Path, owner: tuple[int, int] | None) -> Path:
    """The backup copied next to the database, 0600, owned like the database."""
    temp = database.with_name(f".{database.name}.restore.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out, source.open("rb") as backup_file:
            shutil.copyfileobj(backup_file, out, 1024 * 1024)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        os.fsync(fd)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return temp


def keep_name(database: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = database.with_name(f"{database.name}.before-restore-{stamp}")
    n = 1
    while any(Path(f"{kept}{suffix}").exists() for suffix in ("", *SIDECARS)):
        n += 1
        kept = database.with_name(f"{database.name}.before-restore-{stamp}-{n}")
    return kept


def keep(path: Path, kept: Path) -> None:
    """`kept` becomes a second name of `path` (a copy where hard links are not possible)."""
    try:
        os.link(path, kept)
    except FileExistsError:
        raise
    except OSError:
        shutil.copy2(path, kept)
        found = path.stat()
        if os.geteuid() == 0:
            os.chown(kept, found.st_uid, found.st_gid)


def install(temp: Path, database: Path) -> list[str]:
    """Keep the current database and its journals under the before-restore name, then put the
    checked copy in its place; the kept paths."""
    kept = keep_name(database)
    kept_paths: list[str] = []
    if database.exists():
        keep(database, kept)
        kept_paths.append(str(kept))
    for suffix in SIDECARS:
        live = Path(f"{database}{suffix}")
        if live.exists():
            keep(live, Path(f"{kept}{suffix}"))
            kept_paths.append(f"{kept}{suffix}")
            live.unlink()  # never replayed into the restored database
    Path(f"{database}-shm").unlink(missing_ok=True)
    os.replace(temp, database)
    fsync_path(database.parent, directory=True)
    return kept_paths


def restore(source: Path, database: Path, owner: tuple[int, int] | None) -> dict[str, Any]:
    started = time.monotonic()
    temp = copy_beside(source, database, owner)
    try:
        facts = check_backup(temp, source)
        kept = install(temp, database)
    finally:
        temp.unlink(missing_ok=True)
    return {
        "restored": str(database.absolute()),
        "from": str(source.absolute()),
        "kept": kept,
        "bytes": database.stat().st_size,
        "schema_version": facts["schema_version"],
        "messages": facts["messages"],
        "newest_message_id": facts["newest_message_id"],
        "integrity_check": "ok",
        "seconds": round(time.monotonic() - started, 3),
    }


def check_source(source: Path) -> None:
    if not source.is_file():
        raise ConfigError(str(source), None, "no such file", "pass --from the path of a file made by s2-bridge backup")
    if Path(f"{source}-wal").exists():
        raise ConfigError(
            str(source),
            None,
            "has a -wal file beside it: it is a live database, not a backup (its last commits are in the -wal)",
            "make a backup of it with s2-bridge backup and restore that",
        )


def run(args: argparse.Namespace) -> int:
    config = load_bridge_config(args.config)
    database = Path(config.storage.path)
    source = Path(args.source)
    check_source(source)
    owner = owner_of(database)
    if owner is not None and os.geteuid() not in (0, owner[0]):
        print(
            f"s2-bridge restore: {database}: belongs to uid {owner[0]}, and this user cannot give the restored "
            "file that owner; fix: run restore as root (sudo) or as the database's owner",
            file=sys.stderr,
        )
        return exitcodes.UNEXPECTED
    try:
        lock = dblock.acquire(str(database), owner)
    except dblock.LockHeld as held:
        print(f"s2-bridge restore: {held}; fix: {STOP_FIX}", file=sys.stderr)
        return exitcodes.UNEXPECTED
    try:
        result = restore(source, database, owner)
    except OSError as exc:
        where = exc.filename or database.parent
        print(
            f"s2-bridge restore: {where}: {exc.strerror or exc}; fix: free space or fix permissions there, then "
            f"run restore again ({database} holds the old database or the restored one, whole)",
            file=sys.stderr,
        )
        return exitcodes.UNEXPECTED
    finally:
        os.close(lock)
    print(json.dumps(result))
    return exitcodes.OK
