"""Fixtures that start the REAL bridge (`s2-bridge serve` in a subprocess) on loopback, with a
real TLS certificate from a CA made here, and talk to it with the real MCP client."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from s2_bridge.contract import tokens


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- PKI -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca_file: str
    cert_file: str
    key_file: str
    other_ca_file: str  # a CA that did not sign the server: clients must refuse it


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make_ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("s2 test CA")
    _, other_cert = _make_ca("s2 unrelated CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.crt": _pem(ca_cert),
        "other-ca.crt": _pem(other_cert),
        "server.crt": _pem(cert),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "server.key").chmod(0o600)
    return PKI(
        ca_file=str(folder / "ca.crt"),
        cert_file=str(folder / "server.crt"),
        key_file=str(folder / "server.key"),
        other_ca_file=str(folder / "other-ca.crt"),
    )


# --- the bridge process ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Bridge:
    """A real `s2-bridge serve` subprocess; stop()/start() keep its port and database."""

    workdir: Path
    tls: PKI | None
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/mcp"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str | None:
        return self.tls.ca_file if self.tls else None

    @property
    def db_path(self) -> Path:
        return self.workdir / "data" / "bridge.db"

    @property
    def admin_token_file(self) -> Path:
        return self.workdir / "data" / "admin.token"

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    @property
    def config_path(self) -> Path:
        return self.workdir / "bridge.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "bridge.log"

    def write_config(self) -> None:
        tls = f'[tls]\ncert_file = "{self.tls.cert_file}"\nkey_file = "{self.tls.key_file}"\n' if self.tls else ""
        self.config_path.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f"{tls}"
            f'[storage]\npath = "{self.db_path}"\n'
            f'[auth]\nadmin_token_file = "{self.admin_token_file}"\n'
            f"{self.extra_config}"
        )

    def admin_config(self, **watchdog: float) -> Path:
        """An admin client config (watchdog/status/admin commands) for this bridge."""
        path = self.workdir / "admin.toml"
        lines = [f'bridge_url = "{self.url}"', f'admin_token_file = "{self.admin_token_file}"']
        if self.ca_file:
            lines.append(f'ca_file = "{self.ca_file}"')
        if watchdog:
            lines.append("[watchdog]")
            lines.extend(f"{key} = {value}" for key, value in watchdog.items())
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        args = [sys.executable, "-m", "s2_bridge.cli", "serve", "--config", str(self.config_path)]
        if not self.tls:
            args.append("--insecure-http")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                response = httpx2.get(f"{self.base_url}/healthz", verify=self.ssl_context(), timeout=1.0)
                if response.status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bridge did not answer in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def ssl_context(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else False

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def _bridge(tmp_path: Path, tls: PKI | None) -> Iterator[Bridge]:
    bridge = Bridge(workdir=tmp_path, tls=tls)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()


@pytest.fixture
def bridge(tmp_path: Path, pki: PKI) -> Iterator[Bridge]:
    """A TLS bridge whose certificate verifies against `pki.ca_file`."""
    yield from _bridge(tmp_path, pki)


@pytest.fixture
def plain_bridge(tmp_path: Path) -> Iterator[Bridge]:
    """The same over plain HTTP on loopback (--insecure-http)."""
    yield from _bridge(tmp_path, None)


# --- talking to it ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(bridge: Bridge, token: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    """A real MCP client (Streamable HTTP) carrying `token` as its bearer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, verify=bridge.ssl_context(), timeout=90.0) as http:
        async with Client(streamable_http_client(bridge.url, http_client=http), mode=mode) as client:
            yield client


def result_of(result: Any) -> dict[str, Any]:
    """A tool result as a dict: the structured content, or the parsed error JSON."""
    if result.is_error:
        text = result.content[0].text
        return json.loads(text[text.index("{") :])
    return dict(result.structured_content)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    return result_of(await client.call_tool(tool, arguments))


async def create_conversation(bridge: Bridge, worker_id: str, role: str = "tests", **extra: Any) -> dict[str, Any]:
    async with connect(bridge, bridge.admin_token) as admin:
        created = await call(
            admin,
            "create_conversation",
            my_role="s2-orchestrator",
            partner_role=f"worker-{worker_id}-{role}",
            worker_id=worker_id,
            **extra,
        )
    assert "error" not in created, created
    return created


def shaped_token(kind: tokens.TokenKind, fill: str = "A") -> str:
    """A token of the right shape (tokens.py) that no bridge issued: refused as unknown."""
    return tokens.PREFIXES[kind] + fill * tokens.BODY_CHARS


def write_credentials(bridge: Bridge, created: dict[str, Any], path: Path, *, worker_copy: bool = True) -> Path:
    """Write a credentials file per docs/CONTRACTS.md, 0600."""
    body = {
        "conversation_id": created["conversation_id"],
        "worker_id": created["worker_id"],
        "worker_role": created["worker_role"],
        "coordinator_token": "" if worker_copy else created["coordinator_token"],
        "worker_token": created["worker_token"],
        "created_at": created["created_at"],
        "expires_at": created["expires_at"],
        "bridge_url": bridge.url,
        "ca_file": bridge.ca_file or "",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle)
    return path


async def issue_lead(bridge: Bridge, **extra: Any) -> dict[str, Any]:
    """rotate_lead as the admin: the fleet's lead token (earlier ones are refused from now on)."""
    async with connect(bridge, bridge.admin_token) as admin:
        lead = await call(admin, "rotate_lead", **extra)
    assert "error" not in lead, lead
    return lead


def write_lead_credentials(bridge: Bridge, lead: dict[str, Any], path: Path) -> Path:
    """Write the lead's credentials file per docs/CONTRACTS.md, 0600."""
    body = {key: lead[key] for key in ("lead_role", "lead_token", "created_at", "expires_at")}
    body |= {"bridge_url": bridge.url, "ca_file": bridge.ca_file or ""}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle)
    return path


def worker_file(path: Path, url: str, ca_file: str | None = None) -> Path:
    """A well-formed worker credentials file (fixed ids, a made-up token) for a server that may
    not be the bridge, or not be there at all."""
    document = {
        "conversation_id": "conv_0123456789abcdef",
        "worker_id": "3",
        "worker_role": "worker-3-tests",
        "coordinator_token": "",
        "worker_token": shaped_token("worker"),
        "created_at": "2026-01-01T00:00:00+00:00",
        "expires_at": "2099-01-01T00:00:00+00:00",
        "bridge_url": url,
        "ca_file": ca_file or "",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
    return path


_raw_ids = itertools.count(1)


def raw_tool_call(token: str, name: str, arguments: dict[str, Any], client_name: str = "tests") -> dict[str, Any]:
    """Keyword arguments for an httpx2 POST of one tools/call as raw JSON-RPC (2026-07-28
    protocol), so values a client library would refuse (2**63, lone surrogates) reach the bridge."""
    body = {
        "jsonrpc": "2.0",
        "id": next(_raw_ids),
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": client_name, "version": "0"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    return {"content": json.dumps(body, allow_nan=False), "headers": headers}


async def raw_call(bridge: Bridge, token: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """tools/call as raw JSON (so a lone surrogate or a 2**63 reaches the server as sent)."""
    async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=90) as http:
        response = await http.post(bridge.url, **raw_tool_call(token, name, arguments, "hostile"))
    assert response.status_code == 200, response.text[:500]
    result = response.json()["result"]
    if result["isError"]:
        return json.loads(result["content"][0]["text"])
    return dict(result["structuredContent"])


async def heartbeat(bridge: Bridge, token: str) -> int:
    async with httpx2.AsyncClient(verify=bridge.ssl_context(), timeout=10.0) as http:
        response = await http.post(
            f"{bridge.base_url}/v1/heartbeat", json={}, headers={"Authorization": f"Bearer {token}"}
        )
    return response.status_code


def serve_once(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run `s2-bridge serve --config CONFIG [EXTRA...]` to completion (it must refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "s2_bridge.cli", "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
