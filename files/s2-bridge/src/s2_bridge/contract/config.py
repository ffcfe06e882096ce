"""Config files (TOML): the bridge's own and the admin client's (watchdog, status, admin).

The admin client's file may be split: `admin.toml`, then every `admin.d/*.toml` beside it in
name order, each adding keys or tables (e.g. `[watchdog]`) that no other file sets.

Every error names the file, the key and the fix; unknown keys are errors too, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from s2_bridge.contract import paths
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.loopback import check_bridge_url

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"
    port: int = 8443
    max_connections: int = 4096  # open connections; at the cap the oldest idle/incomplete one is dropped
    header_timeout_s: float = 10.0  # a complete request head must arrive within this
    body_timeout_s: float = 30.0  # a request body must arrive within this of its head
    keepalive_timeout_s: float = 75.0  # idle keep-alive (daemons keep one connection between heartbeats)
    tls_handshake_timeout_s: float = 10.0  # a TLS handshake must finish within this
    # addresses whose X-Forwarded-For / X-Forwarded-Proto are believed; empty = none (the default)
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class TLSSection:
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class StorageSection:
    backend: str = "sqlite"
    path: str = paths.BRIDGE_DB


@dataclass(frozen=True)
class AuthSection:
    admin_token_file: str = paths.ADMIN_TOKEN_FILE


@dataclass(frozen=True)
class ConversationsSection:
    default_ttl_s: int = 30 * 24 * 3600


@dataclass(frozen=True)
class HealthSection:
    silent_after_s: int = 45


MESSAGING_MODES = ("mesh", "star")


@dataclass(frozen=True)
class FleetSection:
    # mesh: workers may message each other directly; star: workers message the lead only
    messaging: str = "mesh"


@dataclass(frozen=True)
class LimitsSection:
    message_max_chars: int = 50_000
    files_involved_max: int = 20
    file_name_max_chars: int = 512
    calls_per_s: float = 20.0
    calls_burst: int = 60
    auth_failures_per_min: int = 30
    parked_waits_per_caller: int = 4  # wait_for_messages parked at once per token
    # bytes (body + files JSON, UTF-8) of the messages one sender still has stored, read or not
    stored_bytes_per_sender: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class RetentionSection:
    read_messages_days: float = 7.0  # a message its recipients have read goes after this
    unread_messages_days: float = 30.0  # any message goes after this, read or not
    audit_days: float = 365.0  # audit rows go after this
    sweep_interval_s: float = 300.0  # time between sweeps
    sweep_batch: int = 500  # rows looked at per transaction of a sweep


@dataclass(frozen=True)
class BridgeConfig:
    path: str
    server: ServerSection = field(default_factory=ServerSection)
    tls: TLSSection | None = None
    storage: StorageSection = field(default_factory=StorageSection)
    auth: AuthSection = field(default_factory=AuthSection)
    conversations: ConversationsSection = field(default_factory=ConversationsSection)
    health: HealthSection = field(default_factory=HealthSection)
    fleet: FleetSection = field(default_factory=FleetSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    retention: RetentionSection = field(default_factory=RetentionSection)


@dataclass(frozen=True)
class WatchdogSection:
    interval_s: float = 15.0
    threshold_s: float = 45.0
    grace_s: float = 120.0
    check_timeout_s: float = 10.0


@dataclass(frozen=True)
class AdminConfig:
    path: str
    bridge_url: str
    admin_token_file: str
    ca_file: str | None = None
    watchdog: WatchdogSection = field(default_factory=WatchdogSection)


def read_toml(path: str) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found", "create it or pass the right path") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a file", "pass the path of the TOML file") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read ({exc.strerror})", "check its permissions") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"not valid TOML ({exc})", "fix the syntax at that line") from None
    except RecursionError:
        raise ConfigError(path, None, "not valid TOML (nested too deeply)", "write plain keys and tables") from None


def _check_type(path: str, key: str, value: Any, expected: Any) -> Any:
    """Accept `value` if it fits the dataclass field type; ints are fine where floats are asked."""
    if expected in (float, "float") and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected in (int, "int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected in (str, "str") and isinstance(value, str):
        return value
    if expected in ("str | None",) and isinstance(value, str):
        return value
    if expected in ("tuple[str, ...]",) and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    name = "list of strings" if expected == "tuple[str, ...]" else getattr(expected, "__name__", str(expected))
    raise ConfigError(path, key, f"must be {name}, got {type(value).__name__} {value!r}", f"set {key} to a {name}")


def build_section(path: str, prefix: str, cls: type[T], data: Any) -> T:
    """Build a dataclass from a TOML table, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(path, prefix, "must be a table", f"write it as [{prefix}]")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(path, full, "unknown key", f"remove it or use one of: {allowed}")
        values[key] = _check_type(path, full, value, known[key].type)
    return cls(**values)


def _positive(path: str, key: str, value: float) -> None:
    # TOML has nan and inf: neither is a usable interval, limit or timeout.
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise ConfigError(path, key, f"must be greater than 0, got {value}", f"set {key} to a positive number")


def load_bridge_config(path: str) -> BridgeConfig:
    data = read_toml(path)
    sections: dict[str, type] = {
        "server": ServerSection,
        "tls": TLSSection,
        "storage": StorageSection,
        "auth": AuthSection,
        "conversations": ConversationsSection,
        "health": HealthSection,
        "fleet": FleetSection,
        "limits": LimitsSection,
        "retention": RetentionSection,
    }
    built: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(path, name, "unknown section", f"use one of: {', '.join(sorted(sections))}")
        built[name] = build_section(path, name, sections[name], value)
    config = BridgeConfig(path=path, **built)
    _validate_bridge(config)
    return config


def _validate_bridge(config: BridgeConfig) -> None:
    path = config.path
    if not 1 <= config.server.port <= 65535:
        raise ConfigError(path, "server.port", f"{config.server.port} is out of range", "use 1-65535")
    if config.tls is not None:
        for key in ("cert_file", "key_file"):
            if not getattr(config.tls, key):
                raise ConfigError(path, f"tls.{key}", "is empty", f"set tls.{key} to a PEM file")
    if config.fleet.messaging not in MESSAGING_MODES:
        raise ConfigError(
            path,
            "fleet.messaging",
            f"{config.fleet.messaging!r} is not a messaging mode",
            'use "mesh" (workers message each other) or "star" (workers message the lead only)',
        )
    if config.storage.backend != "sqlite":
        raise ConfigError(path, "storage.backend", f"{config.storage.backend!r} is not supported", 'use "sqlite"')
    for key in (
        "max_connections",
        "header_timeout_s",
        "body_timeout_s",
        "keepalive_timeout_s",
        "tls_handshake_timeout_s",
    ):
        _positive(path, f"server.{key}", getattr(config.server, key))
    for proxy in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                path, "server.trusted_proxies", f"{proxy!r} is not an IP address or network", 'use e.g. ["10.0.0.5"]'
            ) from None
    _positive(path, "conversations.default_ttl_s", config.conversations.default_ttl_s)
    _positive(path, "health.silent_after_s", config.health.silent_after_s)
    for key in (
        "message_max_chars",
        "files_involved_max",
        "file_name_max_chars",
        "calls_per_s",
        "calls_burst",
        "stored_bytes_per_sender",
    ):
        _positive(path, f"limits.{key}", getattr(config.limits, key))
    _positive(path, "limits.auth_failures_per_min", config.limits.auth_failures_per_min)
    if not 1 <= config.limits.parked_waits_per_caller <= 1000:
        raise ConfigError(
            path,
            "limits.parked_waits_per_caller",
            f"{config.limits.parked_waits_per_caller} is out of range",
            "use 1 to 1000",
        )
    _validate_retention(path, config.retention)


RETENTION_DAYS_MAX = 36_500.0  # a century: longer is "keep forever" in all but name
SWEEP_INTERVAL_MAX_S = 86_400.0
SWEEP_BATCH_MAX = 100_000


def _validate_retention(path: str, retention: RetentionSection) -> None:
    for key in ("read_messages_days", "unread_messages_days", "audit_days"):
        value = getattr(retention, key)
        _positive(path, f"retention.{key}", value)
        if value > RETENTION_DAYS_MAX:
            raise ConfigError(
                path,
                f"retention.{key}",
                f"{value:g} days is out of range",
                f"use more than 0 up to {RETENTION_DAYS_MAX:g}",
            )
    if retention.read_messages_days > retention.unread_messages_days:
        raise ConfigError(
            path,
            "retention.read_messages_days",
            f"{retention.read_messages_days:g} is longer than retention.unread_messages_days"
            f" ({retention.unread_messages_days:g}), which deletes every message at that age, read or not",
            "set read_messages_days to at most unread_messages_days",
        )
    _positive(path, "retention.sweep_interval_s", retention.sweep_interval_s)
    if retention.sweep_interval_s > SWEEP_INTERVAL_MAX_S:
        raise ConfigError(
            path,
            "retention.sweep_interval_s",
            f"{retention.sweep_interval_s:g} is out of range",
            f"use more than 0 up to {SWEEP_INTERVAL_MAX_S:g} seconds",
        )
    if not 1 <= retention.sweep_batch <= SWEEP_BATCH_MAX:
        raise ConfigError(
            path, "retention.sweep_batch", f"{retention.sweep_batch} is out of range", f"use 1 to {SWEEP_BATCH_MAX}"
        )


ADMIN_DROP_INS = "admin.d"  # beside admin.toml: *.toml files read after it, in name order


def read_admin_toml(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """admin.toml merged with its drop-ins (`admin.d/*.toml` beside it, sorted by name), and the
    file each top-level key or table came from. A drop-in may add keys and tables, never set one
    that admin.toml or an earlier drop-in already sets: that is an error naming both files."""
    data = read_toml(path)
    origin = dict.fromkeys(data, path)
    folder = Path(path).parent / ADMIN_DROP_INS
    drop_ins = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    for drop_in in map(str, drop_ins):
        for key, value in read_toml(drop_in).items():
            if key in origin:
                raise ConfigError(
                    drop_in,
                    key,
                    f"is already set in {origin[key]}",
                    f"set {key} in one file only: remove it from {drop_in} or from {origin[key]}",
                )
            data[key] = value
            origin[key] = drop_in
    return data, origin


def load_admin_config(path: str) -> AdminConfig:
    data, origin = read_admin_toml(path)
    watchdog_path = origin.get("watchdog", path)
    watchdog_data = data.pop("watchdog", {})
    for key in ("bridge_url", "admin_token_file"):
        if key not in data:
            raise ConfigError(path, key, "is missing", f'add {key} = "..."')
    allowed = {"bridge_url", "admin_token_file", "ca_file"}
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(origin[key], key, "unknown key", f"remove it or use one of: {', '.join(sorted(allowed))}")
        _check_type(origin[key], key, value, str)
    url = data["bridge_url"]
    check_bridge_url(origin["bridge_url"], url, data.get("ca_file"), origin.get("ca_file", path))
    watchdog = build_section(watchdog_path, "watchdog", WatchdogSection, watchdog_data)
    for key in ("interval_s", "threshold_s", "check_timeout_s"):
        _positive(watchdog_path, f"watchdog.{key}", getattr(watchdog, key))
    if not math.isfinite(watchdog.grace_s) or watchdog.grace_s < 0:
        raise ConfigError(
            watchdog_path, "watchdog.grace_s", f"must not be negative, got {watchdog.grace_s}", "set it to 0 or more"
        )
    return AdminConfig(
        path=path,
        bridge_url=url,
        admin_token_file=data["admin_token_file"],
        ca_file=data.get("ca_file"),
        watchdog=watchdog,
    )
