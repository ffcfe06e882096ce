"""Hostile network load against a real TLS bridge on loopback (issue 14, part A): connection cap
and head/handshake deadlines, forged X-Forwarded-For, log injection, --insecure-http off
loopback, an exposed admin token, the data directory's mode and the /mcp/ redirect."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import PKI, Bridge, create_conversation, heartbeat, serve_once, shaped_token, worker_file
from s2_bridge.agent import lean_http
from s2_bridge.agent.client import BridgeClient
from s2_bridge.contract import exitcodes
from s2_bridge.contract.credentials import load_credentials
from s2_bridge.contract.errors import ConfigError
from s2_bridge.contract.logsafe import SafeFormatter, log_text
from s2_bridge.contract.loopback import is_loopback_host

pytestmark = pytest.mark.anyio

HEADER_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 2.0


@dataclass
class LimitedBridge(Bridge):
    """A bridge whose [server] table carries extra keys (Bridge writes [server] itself)."""

    server_extra: str = ""

    def write_config(self) -> None:
        super().write_config()
        port_line = f"port = {self.port}\n"
        text = self.config_path.read_text()
        self.config_path.write_text(text.replace(port_line, port_line + self.server_extra, 1))


def limited_bridge(tmp_path: Path, pki: PKI, extra_config: str = "", **server: object) -> LimitedBridge:
    keys = {"header_timeout_s": HEADER_TIMEOUT_S, "tls_handshake_timeout_s": HANDSHAKE_TIMEOUT_S} | server
    lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
    bridge = LimitedBridge(workdir=tmp_path, tls=pki, extra_config=extra_config, server_extra=lines)
    bridge.start()
    return bridge


def client_context(bridge: Bridge) -> ssl.SSLContext:
    context = bridge.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    return context


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails past `seconds`."""
    start = time.monotonic()
    with anyio.fail_after(seconds):
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, ssl.SSLError, OSError):
            pass
    return time.monotonic() - start


# --- item 1: connection cap and timeouts ------------------------------------------------------


async def test_slowloris_is_dropped_and_heartbeats_succeed_during_it(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki, max_connections=50)
    try:
        created = await create_conversation(bridge, "3")
        context = client_context(bridge)
        attackers = []
        for _ in range(60):  # more than the cap
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=context)
            writer.write(b"POST /v1/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            await writer.drain()
            attackers.append((reader, writer))

        async def trickle(writer: asyncio.StreamWriter) -> None:
            # one header line every 0.5 s: each line is progress, never a complete head
            with anyio.move_on_after(HEADER_TIMEOUT_S * 3):
                while not writer.is_closing():
                    await asyncio.sleep(0.5)
                    try:
                        writer.write(b"X-Slow: 1\r\n")
                        await writer.drain()
                    except (ConnectionError, ssl.SSLError, OSError):
                        return

        trickles = [asyncio.create_task(trickle(writer)) for _, writer in attackers]
        # real heartbeats while the attack holds the cap
        statuses = [await heartbeat(bridge, created["worker_token"]) for _ in range(5)]
        assert statuses == [200] * 5
        waits = await asyncio.gather(*(closed_within(reader, HEADER_TIMEOUT_S + 3) for reader, _ in attackers))
        assert max(waits) <= HEADER_TIMEOUT_S + 3
        for task in trickles:
            task.cancel()
        for _, writer in attackers:
            writer.close()
        assert await heartbeat(bridge, created["worker_token"]) == 200
    finally:
        bridge.stop()


async def test_tls_connection_that_sends_nothing_is_closed_after_header_timeout(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=client_context(bridge))
        waited = await closed_within(reader, HEADER_TIMEOUT_S + 4)
        assert waited >= HEADER_TIMEOUT_S - 0.5
        writer.close()
    finally:
        bridge.stop()


async def test_tcp_connection_that_never_starts_tls_is_closed_after_handshake_timeout(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)  # plain TCP, no ClientHello
        waited = await closed_within(reader, HANDSHAKE_TIMEOUT_S + 4)
        assert waited >= HANDSHAKE_TIMEOUT_S - 0.5
        writer.close()
    finally:
        bridge.stop()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path, pki: PKI) -> None:
    """Busy connections (parked waits) are never evicted; a new one past the cap is refused."""
    bridge = limited_bridge(tmp_path, pki, max_connections=3)
    try:
        created = await create_conversation(bridge, "3")
        auth = f"Authorization: Bearer {created['worker_token']}\r\n".encode()
        context = client_context(bridge)
        held = []
        for _ in range(3):  # authenticated heads, bodies still to come: busy, not evictable
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=context)
            writer.write(b"POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 100\r\n\r\n")
            await writer.drain()
            held.append((reader, writer))
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=context)
        with anyio.fail_after(5):
            answer = await reader.read(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        writer.close()
        for _, held_writer in held:
            held_writer.close()
    finally:
        bridge.stop()


async def test_idle_keep_alive_connections_are_evicted_at_the_cap(tmp_path: Path, pki: PKI) -> None:
    """A connection idle between requests (an unauthenticated GET, then nothing) holds no slot
    a real client needs: at the cap it is dropped for the newcomer, oldest first."""
    bridge = limited_bridge(tmp_path, pki, max_connections=3)
    try:
        created = await create_conversation(bridge, "3")
        context = client_context(bridge)
        idle = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=context)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            with anyio.fail_after(5):
                assert (await reader.read(4096)).startswith(b"HTTP/1.1 200")
            idle.append((reader, writer))
        await asyncio.sleep(0.2)
        assert await heartbeat(bridge, created["worker_token"]) == 200
        assert await closed_within(idle[0][0], 5) < 5  # the oldest idle one went
        for _, writer in idle:
            writer.close()
    finally:
        bridge.stop()


async def test_a_request_body_that_never_arrives_is_dropped_after_the_body_timeout(tmp_path: Path, pki: PKI) -> None:
    """A complete head announcing a body that never comes (with or without a token) does not
    hold the connection beyond [server] body_timeout_s."""
    bridge = limited_bridge(tmp_path, pki, max_connections=4, body_timeout_s=2)
    try:
        created = await create_conversation(bridge, "3")
        context = client_context(bridge)
        held = []
        for auth in (b"", f"Authorization: Bearer {created['worker_token']}\r\n".encode()):
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port, ssl=context)
            writer.write(b"POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 100\r\n\r\n{")
            await writer.drain()
            held.append((reader, writer))
        waits = await asyncio.gather(*(closed_within(reader, 8) for reader, _ in held))
        assert max(waits) < 8
        assert await heartbeat(bridge, created["worker_token"]) == 200
        for _, writer in held:
            writer.close()
    finally:
        bridge.stop()


# --- item 4: X-Forwarded-For ------------------------------------------------------------------


async def test_forged_x_forwarded_for_neither_bypasses_the_limit_nor_reaches_audit(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki, extra_config="[limits]\nauth_failures_per_min = 5\n")
    try:
        statuses = []
        async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=10.0) as http:
            for number in range(12):
                response = await http.post(
                    f"{bridge.base_url}/v1/heartbeat",
                    json={},
                    headers={
                        "Authorization": "Bearer " + shaped_token("worker", "B"),
                        "X-Forwarded-For": f"203.0.113.{number}",
                    },
                )
                statuses.append(response.status_code)
        assert statuses[:5] == [401] * 5
        assert set(statuses[6:]) == {429}
        with sqlite3.connect(bridge.db_path) as db:
            remotes = {row[0] for row in db.execute("SELECT remote FROM audit_log WHERE actor = 'anonymous'")}
        assert remotes == {"127.0.0.1"}
    finally:
        bridge.stop()


# --- item 5: log injection --------------------------------------------------------------------


def test_every_log_line_is_one_line_whatever_the_message_carries() -> None:
    """The formatter the command installs escapes controls in any message (a role name, a peer's
    error), not only where log_text was called."""
    record = logging.LogRecord(
        "s2_bridge.x", logging.WARNING, __file__, 1, "worker %s: %s", ("w\rFAKE", "a\nb\x1b[2J"), None
    )
    line = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "WARNING s2_bridge.x: worker w\\x0dFAKE: a\\x0ab\\x1b[2J"


def test_log_text_escapes_controls_and_caps_length() -> None:
    assert log_text("/v1/x\nCRITICAL forged\x1b[31m\u2028") == "/v1/x\\x0aCRITICAL forged\\x1b[31m\\u2028"
    assert log_text("a\\x0a") == "a\\\\x0a"  # a literal backslash cannot imitate an escape
    long = log_text("/" + "a" * 60_000)
    assert len(long) < 230 and long.endswith("...(+59801 chars)")


async def test_a_path_cannot_forge_a_log_line_or_fill_audit(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki)
    try:
        async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=10.0) as http:
            headers = {"Authorization": "Bearer " + shaped_token("worker", "C")}
            forged = await http.post(f"{bridge.base_url}/v1/x%0aCRITICAL%20forged%1b[2J", json={}, headers=headers)
            huge = await http.post(f"{bridge.base_url}/v1/{'a' * 60_000}", json={}, headers=headers)
        assert forged.status_code == 401
        assert huge.status_code == 401
        deadline = time.monotonic() + 5
        while "aaaa" not in bridge.log_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lines = bridge.log_text().splitlines()
        assert not any(line.startswith("CRITICAL") for line in lines), lines
        assert "\x1b" not in bridge.log_text()
        assert any("/v1/x\\x0aCRITICAL forged\\x1b[2J" in line for line in lines), lines
        assert max(len(line) for line in lines) < 1000
        with sqlite3.connect(bridge.db_path) as db:
            targets = [row[0] for row in db.execute("SELECT target FROM audit_log WHERE action = 'auth.failed'")]
        assert len(targets) == 2
        assert all(len(target) < 250 and "\n" not in target for target in targets), targets
    finally:
        bridge.stop()


# --- item 9: plain HTTP only on loopback ------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("orchestrator.example", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_insecure_http_is_refused_off_loopback(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    data = tmp_path / "data"
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = 8443\n[storage]\npath = "{data}/bridge.db"\n'
        f'[auth]\nadmin_token_file = "{data}/admin.token"\n'
    )
    result = serve_once(config, "--insecure-http")
    assert result.returncode == exitcodes.CONFIG_ERROR
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert ": server.host:" in lines[0] and "fix:" in lines[0] and "127.0.0.1" in lines[0]
    assert not data.exists()


async def test_clients_refuse_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    remote = "http://10.0.0.5:8443/mcp"
    with pytest.raises(ConfigError, match="clear text"):
        BridgeClient(remote, shaped_token("worker"))
    with pytest.raises(lean_http.HttpFailure, match="clear text"):
        lean_http.get_json(remote, shaped_token("worker"), "/v1/updates", deadline=time.monotonic() + 1)
    with pytest.raises(ConfigError, match="bridge_url"):
        load_credentials(str(worker_file(tmp_path / "remote.json", remote)))
    # loopback stays allowed (tests and a bridge on the same host)
    BridgeClient("http://127.0.0.1:8443/mcp", shaped_token("worker"))
    load_credentials(str(worker_file(tmp_path / "local.json", "http://localhost:8443/mcp")))


# --- item 11: an exposed admin token ----------------------------------------------------------


async def test_exposed_admin_token_is_rotated_at_start(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki)
    try:
        old = bridge.admin_token
        bridge.stop()
        bridge.admin_token_file.chmod(0o644)
        bridge.start()
        new = bridge.admin_token
        assert new != old
        assert stat.S_IMODE(bridge.admin_token_file.stat().st_mode) == 0o600
        assert "readable by group or others" in bridge.log_text()
        async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=10.0) as http:
            refused = await http.post(
                f"{bridge.base_url}/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {old}"}
            )
            accepted = await http.post(
                f"{bridge.base_url}/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {new}"}
            )
        assert refused.status_code == 401
        assert accepted.status_code != 401
        # a 0600 file keeps its token across a restart
        bridge.stop()
        bridge.start()
        assert bridge.admin_token == new
    finally:
        bridge.stop()


# --- item 12 (part): data directory mode, /mcp/ redirect ----------------------------------------


async def test_data_directory_is_0700_and_mcp_slash_redirect_is_relative(tmp_path: Path, pki: PKI) -> None:
    bridge = limited_bridge(tmp_path, pki)
    try:
        assert stat.S_IMODE(bridge.db_path.parent.stat().st_mode) == 0o700
        created = await create_conversation(bridge, "4")
        async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=10.0, follow_redirects=False) as http:
            response = await http.post(
                f"{bridge.base_url}/mcp/",
                json={},
                headers={"Authorization": f"Bearer {created['worker_token']}", "Host": "evil.example"},
            )
        assert response.status_code == 307
        assert response.headers["location"] == "/mcp"
    finally:
        bridge.stop()
