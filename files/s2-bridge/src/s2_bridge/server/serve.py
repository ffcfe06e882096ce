"""`s2-bridge serve`: load the config, open the store, make sure the admin token file exists,
then run uvicorn with TLS (plain HTTP only with --insecure-http)."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import time
from pathlib import Path

import uvicorn

from s2_bridge.contract import exitcodes, tokens
from s2_bridge.contract.config import BridgeConfig, load_bridge_config
from s2_bridge.contract.credentials import write_private_text
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.loopback import is_loopback_host
from s2_bridge.server import dblock, netguard
from s2_bridge.server.app import BridgeApp
from s2_bridge.server.service import BridgeService
from s2_bridge.server.store import Store, open_store

log = logging.getLogger("s2_bridge.serve")


def ensure_admin_token(store: Store, path: str) -> None:
    """Keep a valid admin token file; otherwise make a new token and revoke every older one.

    A file that group or others could read may have leaked: its token is replaced (the old one
    is refused from now on) and the new one written 0600."""
    file = Path(path)
    if file.exists():
        if file.stat().st_mode & 0o077:
            log.warning(
                "%s was readable by group or others (mode %o): issuing a new admin token and refusing the old one",
                path,
                file.stat().st_mode & 0o777,
            )
            file.chmod(0o600)
            _issue_admin_token(store, path)
            return
        token = file.read_text().strip()
        record = store.lookup_token(tokens.token_hash(token)) if tokens.looks_like_token(token) else None
        if record is not None and record.kind == "admin" and not record.revoked:
            return
        log.warning("%s does not hold the current admin token; issuing a new one", path)
    _issue_admin_token(store, path)


def _issue_admin_token(store: Store, path: str) -> None:
    token = tokens.new_token("admin")
    store.replace_admin_token(tokens.token_hash(token), time.time())
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_text(path, token + "\n")
    log.info("wrote a new admin token to %s", path)


def build(config: BridgeConfig) -> tuple[BridgeApp, Store]:
    # The data directory holds the database and the admin token: only the bridge's user.
    Path(config.storage.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(config.storage.backend, config.storage.path)
    ensure_admin_token(store, config.auth.admin_token_file)
    return BridgeApp(BridgeService(store, config)), store


def tls_options(config: BridgeConfig, insecure_http: bool) -> dict[str, str]:
    """uvicorn's TLS options, checked before anything is created on disk."""
    tls: dict[str, str] = {}
    if not insecure_http:
        if config.tls is None:
            raise ConfigError(
                config.path,
                "tls",
                "is missing",
                "add [tls] cert_file/key_file, or --insecure-http on loopback",
            )
        for key in ("cert_file", "key_file"):
            value = getattr(config.tls, key)
            if not Path(value).is_file():
                raise ConfigError(config.path, f"tls.{key}", f"{value} does not exist", "point it at a PEM file")
        try:  # the way uvicorn will load them; the password callback keeps an encrypted key from prompting
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls.cert_file, config.tls.key_file, password=lambda: b""
            )
        except OSError as exc:  # ssl.SSLError is an OSError too
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise ConfigError(
                config.path,
                "tls.cert_file",
                f"{config.tls.cert_file} and {config.tls.key_file} are not a PEM certificate and its key ({reason})",
                "point tls.cert_file and tls.key_file at the server's PEM certificate and unencrypted key",
            ) from None
        tls = {"ssl_certfile": config.tls.cert_file, "ssl_keyfile": config.tls.key_file}
    return tls


def check_insecure_http(config: BridgeConfig) -> None:
    """--insecure-http only on a loopback listen address: tokens must not cross a network in clear."""
    if not is_loopback_host(config.server.host):
        raise ConfigError(
            config.path,
            "server.host",
            f"--insecure-http on {config.server.host!r} would send tokens over the network in clear text",
            'set server.host = "127.0.0.1" for plain HTTP, or drop --insecure-http and set [tls]',
        )


def uvicorn_config(app: BridgeApp, config: BridgeConfig, tls: dict[str, str]) -> uvicorn.Config:
    server = config.server
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        # connection cap and request-head deadline (netguard); idle keep-alive: daemons keep
        # one connection open between heartbeats
        http=netguard.guarded_protocol(server.max_connections, server.header_timeout_s, server.body_timeout_s),
        loop=netguard.loop_factory(server.tls_handshake_timeout_s),  # type: ignore[arg-type]
        timeout_keep_alive=server.keepalive_timeout_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=16 * 1024,
        # X-Forwarded-For is believed only from configured proxies (uvicorn trusts loopback by default)
        proxy_headers=bool(server.trusted_proxies),
        forwarded_allow_ips=list(server.trusted_proxies) or None,
        backlog=4096,
        **tls,  # type: ignore[arg-type]
    )


def hold_database_lock(config: BridgeConfig) -> int | None:
    """Lock `<storage.path>.lock` for the bridge's whole life (the descriptor stays open): one
    bridge per database, and `s2-bridge restore` refuses while it is held. None when another
    process holds it (exit 1: systemd tries again after RestartSec, once that process is gone)."""
    try:
        return dblock.acquire(config.storage.path)
    except dblock.LockHeld as exc:
        held = exc
    log.error("%s; fix: stop the other bridge (systemctl stop s2-bridge.service) or let the restore finish", held)
    return None


def run(args: argparse.Namespace) -> int:
    config = load_bridge_config(args.config)
    if args.insecure_http:
        check_insecure_http(config)
        log.warning("serving plain HTTP (--insecure-http): tokens cross the network in clear text")
    tls = tls_options(config, args.insecure_http)
    lock = hold_database_lock(config)
    if lock is None:
        return exitcodes.UNEXPECTED
    app, store = build(config)
    server = uvicorn.Server(uvicorn_config(app, config, tls))
    scheme = "http" if args.insecure_http else "https"
    log.info("s2-bridge listening on %s://%s:%d/mcp", scheme, config.server.host, config.server.port)
    try:
        server.run()
    finally:
        store.close()
        os.close(lock)
    return exitcodes.OK if server.started else exitcodes.UNEXPECTED
