"""The database's lock file, `<storage.path>.lock` (e.g. /var/lib/s2-bridge/bridge.db.lock).

`serve` holds an exclusive flock on it for its whole life; `restore` takes it without waiting
and refuses while a bridge holds it. The kernel drops the lock when the holder exits, however it
exits (kill -9 too), so a stale lock file is harmless: only a live holder counts.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from s2_bridge.contract.errors import ConfigError

SUFFIX = ".lock"


class LockHeld(Exception):
    """Another process holds the lock: a bridge serves this database (or a restore runs)."""

    def __init__(self, lock: Path, database: str) -> None:
        self.lock = lock
        self.database = database
        super().__init__(f"{database}: a running s2-bridge holds {lock} (it serves this database, or a restore runs)")


def lock_path(database: str) -> Path:
    return Path(f"{database}{SUFFIX}")


def acquire(database: str, owner: tuple[int, int] | None = None) -> int:
    """Lock `database`'s lock file without waiting; the returned descriptor holds the lock until it
    is closed. The file (and the data directory) are made 0600 (0700) when missing; run as root,
    a new lock file is given to `owner` (uid, gid), so the bridge's own user can open it later.

    LockHeld when another process holds it; ConfigError when the file cannot be opened."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(
            str(path),
            None,
            f"cannot open the database's lock file ({exc.strerror})",
            "give it to the bridge's user (chown s2-bridge: FILE) or remove it while no bridge runs",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if owner is not None and os.geteuid() == 0 and os.fstat(fd).st_uid != owner[0]:
            os.fchown(fd, *owner)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockHeld(path, database) from None
        raise
    return fd
