"""Credentials files: load and validate them, watch them for rotation, write them atomically.

A credentials file holds bearer tokens, so it must be mode 0600, and no error message, repr
or log line built here ever contains a token value.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from s2_bridge.contract import ids, tokens
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.loopback import check_bridge_url

# A worker's file (the runbook's seven fields plus two); the orchestrator's copy holds both tokens.
FIELDS = (
    "conversation_id",
    "worker_id",
    "worker_role",
    "coordinator_token",
    "worker_token",
    "created_at",
    "expires_at",
    "bridge_url",
    "ca_file",
)
# The lead's file (the orchestrator's agent): one fleet-scoped token, no conversation.
LEAD_FIELDS = ("lead_role", "lead_token", "created_at", "expires_at", "bridge_url", "ca_file")
CONVERSATION_ID = re.compile(r"^conv_[0-9a-f]{16}$")


@dataclass(frozen=True)
class Credentials:
    """A worker's file, the orchestrator's copy of one, or the lead's file (then
    conversation_id and worker_id are empty and worker_role holds the lead's role)."""

    path: str
    conversation_id: str
    worker_id: str
    worker_role: str
    coordinator_token: str = field(repr=False)
    worker_token: str = field(repr=False)
    created_at: datetime
    expires_at: datetime
    bridge_url: str
    ca_file: str | None
    lead_token: str = field(default="", repr=False)

    @property
    def token(self) -> str:
        """The token the commands use: the lead's, else the worker's, else the coordinator's."""
        return self.lead_token or self.worker_token or self.coordinator_token

    @property
    def side(self) -> str:
        """Which identity the token is: lead, worker or coordinator."""
        if self.lead_token:
            return "lead"
        return "worker" if self.worker_token else "coordinator"

    @property
    def label(self) -> str:
        """How logs and file names tell identities apart (never a token)."""
        return "lead" if self.lead_token else f"worker-{self.worker_id}"

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten in place or replaced (rename gives a new inode)."""

    inode: int
    mtime_ns: int
    size: int


def file_identity(path: str) -> FileIdentity | None:
    try:
        info = Path(path).stat()
    except OSError:
        return None
    return FileIdentity(info.st_ino, info.st_mtime_ns, info.st_size)


def check_private_mode(path: str) -> None:
    """Refuse a secret file that group or others can read or write."""
    try:
        info = Path(path).stat()
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found", "create it or pass the right path") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read ({exc.strerror})", "check its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(path, None, "is a directory, not a file", "pass the path of the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(path, None, "is not a regular file", "pass the path of the file itself")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(path, None, f"mode {mode:04o} lets group or others read a secret", f"chmod 600 {path}")


def _read_private_text(path: str) -> str:
    check_private_mode(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read ({exc.strerror})", "check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "is not UTF-8 text", "rewrite it as UTF-8 JSON") from None


def read_token_file(path: str, kind: tokens.TokenKind = "admin") -> str:
    """Read a bare token file (the admin token); mode 0600 and the right prefix are required."""
    token = _read_private_text(path).strip()
    if not tokens.PATTERNS[kind].match(token):
        raise ConfigError(
            path,
            None,
            f"does not hold an {kind} token ({tokens.describe(kind)})",
            "point to the token file the bridge wrote on first start",
        )
    return token


def _require_str(path: str, data: dict[str, Any], key: str) -> str:
    if key not in data:
        raise ConfigError(path, key, "is missing", f'add "{key}"')
    value = data[key]
    if not isinstance(value, str):
        raise ConfigError(path, key, f"must be a string, got {type(value).__name__}", f'write "{key}" as a string')
    return value


def _parse_time(path: str, key: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            path, key, f"{value!r} is not an ISO 8601 time", "use a form like 2026-12-24T01:00:00+00:00"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigError(path, key, f"{value!r} has no time zone", "add +00:00")
    return parsed


def _check_token(path: str, key: str, value: str, kind: tokens.TokenKind) -> None:
    # Never echo the value: it is a secret even when malformed.
    if value and not tokens.PATTERNS[kind].match(value):
        raise ConfigError(
            path,
            key,
            f"is not a {kind} token ({tokens.describe(kind)})",
            "rewrite the file from the bridge's create or rotate result",
        )


def _check_fields(path: str, data: dict[str, Any], fields: tuple[str, ...]) -> dict[str, str]:
    for key in data:
        if key not in fields:
            raise ConfigError(path, key, "unknown field", f"remove it or use one of: {', '.join(fields)}")
    values = {key: _require_str(path, data, key) for key in fields if key != "ca_file"}
    ca_file = data.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise ConfigError(path, "ca_file", f"must be a string, got {type(ca_file).__name__}", "set it to a PEM file")
    values["ca_file"] = ca_file or ""
    return values


def _check_times(path: str, values: dict[str, str]) -> tuple[datetime, datetime]:
    created_at = _parse_time(path, "created_at", values["created_at"])
    expires_at = _parse_time(path, "expires_at", values["expires_at"])
    if expires_at <= created_at:
        raise ConfigError(path, "expires_at", "is not after created_at", "rewrite the file from the bridge's result")
    return created_at, expires_at


def _check_role(path: str, key: str, value: str) -> None:
    if not 3 <= len(value) <= 100:
        raise ConfigError(path, key, "must be 3-100 characters", "use the role the bridge issued the token for")


def parse_lead_credentials(path: str, data: dict[str, Any]) -> Credentials:
    """Validate the lead's file (LEAD_FIELDS)."""
    values = _check_fields(path, data, LEAD_FIELDS)
    _check_role(path, "lead_role", values["lead_role"])
    if not values["lead_token"]:
        raise ConfigError(path, "lead_token", "is empty", "write the lead token into the file (rotate_lead)")
    _check_token(path, "lead_token", values["lead_token"], "lead")
    created_at, expires_at = _check_times(path, values)
    check_bridge_url(path, values["bridge_url"], values["ca_file"])
    return Credentials(
        path=path,
        conversation_id="",
        worker_id="",
        worker_role=values["lead_role"],
        coordinator_token="",
        worker_token="",
        lead_token=values["lead_token"],
        created_at=created_at,
        expires_at=expires_at,
        bridge_url=values["bridge_url"],
        ca_file=values["ca_file"] or None,
    )


def parse_credentials(path: str, data: Any) -> Credentials:
    """Validate every field of a decoded credentials file: a worker's (FIELDS) or the lead's."""
    if not isinstance(data, dict):
        raise ConfigError(path, None, "must be a JSON object", "rewrite it as {...} with the credentials fields")
    if "lead_token" in data:
        return parse_lead_credentials(path, data)
    values = _check_fields(path, data, FIELDS)
    if not CONVERSATION_ID.match(values["conversation_id"]):
        raise ConfigError(
            path,
            "conversation_id",
            f"{values['conversation_id']!r} is not conv_ + 16 hex digits",
            "copy the id again",
        )
    if not ids.is_worker_id(values["worker_id"]):
        raise ConfigError(path, "worker_id", f"{values['worker_id']!r} is not a valid worker id", ids.WORKER_ID_FIX)
    _check_role(path, "worker_role", values["worker_role"])
    _check_token(path, "coordinator_token", values["coordinator_token"], "coordinator")
    _check_token(path, "worker_token", values["worker_token"], "worker")
    if not values["worker_token"] and not values["coordinator_token"]:
        raise ConfigError(path, "worker_token", "is empty and so is coordinator_token", "write a token into the file")
    created_at, expires_at = _check_times(path, values)
    check_bridge_url(path, values["bridge_url"], values["ca_file"])
    return Credentials(
        path=path,
        conversation_id=values["conversation_id"],
        worker_id=values["worker_id"],
        worker_role=values["worker_role"],
        coordinator_token=values["coordinator_token"],
        worker_token=values["worker_token"],
        created_at=created_at,
        expires_at=expires_at,
        bridge_url=values["bridge_url"],
        ca_file=values["ca_file"] or None,
    )


def load_credentials(path: str) -> Credentials:
    """Load a credentials file, refusing one that group or others can read (exit 78 upstream)."""
    text = _read_private_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            path, None, f"not valid JSON (line {exc.lineno}, column {exc.colno})", "fix the syntax there"
        ) from None
    except RecursionError:
        raise ConfigError(path, None, "not valid JSON (nested too deeply)", "rewrite it as one flat object") from None
    return parse_credentials(path, data)


class CredentialsWatcher:
    """Holds the current credentials and rereads the file when it is replaced or rewritten.

    The first load raises (the daemon exits 78); later bad versions are reported to the
    caller and the previous, still-valid credentials stay in use.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity = file_identity(path)
        self.current = load_credentials(path)

    def changed(self) -> bool:
        return file_identity(self.path) != self._identity

    def reload(self) -> Credentials:
        """Reread the file; raise ConfigError (and keep the old credentials) if it is bad.

        The identity is taken before reading so a write racing with us triggers one more reload.
        """
        self._identity = file_identity(self.path)
        self.current = load_credentials(self.path)
        return self.current

    def refresh(self, log: logging.Logger) -> bool:
        """Reload if the file changed; True when new credentials are now in effect.

        A bad new file is logged once (its identity is remembered) and the old credentials stay.
        """
        if not self.changed():
            return False
        try:
            creds = self.reload()
        except ConfigError as exc:
            problem: ConfigError | None = exc
        else:
            problem = None
        if problem is not None:
            log.error("credentials file changed but is unusable, keeping the previous credentials: %s", problem)
            return False
        log.info(
            "credentials file changed: now conversation %s, worker %s, expires %s",
            creds.conversation_id,
            creds.worker_id,
            creds.expires_at.isoformat(),
        )
        return True


def credentials_document(result: dict[str, Any], bridge_url: str, ca_file: str | None) -> dict[str, Any]:
    """Build the file contents from a create/rotate_conversation result, or from a rotate_lead
    result (which carries lead_token) for the lead's file."""
    fields = LEAD_FIELDS if "lead_token" in result else FIELDS
    document = {key: result[key] for key in fields if key in result}
    document["bridge_url"] = bridge_url
    document["ca_file"] = ca_file or ""
    return {key: document.get(key, "") for key in fields}


def write_private_text(path: str, text: str, *, durable: bool = True) -> None:
    """Write a secret file (a token, credentials, a cursor) as mode 0600, atomically: a reader
    sees the old file or the new one, never half of it, and never a readable one. The one writer
    of private files in the runtime; `durable` also fsyncs the file and the rename."""
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise ConfigError(path, None, f"directory {directory} does not exist", f"mkdir -m 700 {directory}")
    # mkstemp creates the file 0600 from the start, so the secret is never briefly readable.
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if not durable:
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_private_json(path: str, document: dict[str, Any], *, durable: bool = True) -> None:
    """`document` as indented JSON through write_private_text (0600, atomic)."""
    write_private_text(path, json.dumps(document, indent=2) + "\n", durable=durable)
