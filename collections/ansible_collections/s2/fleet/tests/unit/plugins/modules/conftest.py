"""Fixtures that start the REAL s2 bridge (`s2-bridge serve`) on loopback for the module tests.

The modules' core functions are called with a real BridgeClient against that bridge; the
entry-point tests run the modules through `ansible` itself (AnsiballZ, respawn, no_log).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# .../collections/ansible_collections/s2/fleet/tests/unit/plugins/modules/conftest.py
COLLECTIONS_ROOT = Path(__file__).resolve().parents[7]
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))

from ansible_collections.s2.fleet.plugins.module_utils.runtime import (  # noqa: E402
    AdminBridge,
    Failure,
    read_admin_config,
)
from s2_bridge.contract.tokens import TOKEN_RE  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bridge_command() -> list[str]:
    script = shutil.which("s2-bridge", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "s2_bridge.cli"]


@dataclass
class Bridge:
    url: str
    base: str
    folder: Path
    admin_token_file: str
    process: subprocess.Popen
    log: Path
    admin_config: str = ""
    ca_file: str | None = None
    extra: dict = field(default_factory=dict)

    def admin(self, **kwargs) -> AdminBridge:
        """The admin's bridge as the modules reach it: from this bridge's admin.toml."""
        return AdminBridge.from_admin_config(read_admin_config(self.admin_config), **kwargs)

    def as_token(self, token: str) -> AdminBridge:
        return AdminBridge(self.url, token, ca_file=self.ca_file)

    def conversations(self, worker_id: str, include_revoked: bool = False) -> list[dict]:
        listing = self.admin().call("list_conversations", {"include_revoked": include_revoked})
        return [c for c in listing["conversations"] if c["worker_id"] == worker_id]

    def token_works(self, token: str, tool: str = "check_partner_status") -> bool:
        """True when the bridge serves this token; False when it refuses it as unauthenticated."""
        try:
            self.as_token(token).call(tool, {})
        except Failure as err:
            if err.code == "unauthenticated":
                return False
            raise
        return True

    @property
    def admin_token(self) -> str:
        return Path(self.admin_token_file).read_text().strip()


def write_config(folder: Path, port: int, tls: tuple[str, str] | None, limits: dict | None = None) -> Path:
    limits = {"calls_per_s": 1000, "calls_burst": 1000, **(limits or {})}
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "[storage]",
        'backend = "sqlite"',
        f'path = "{folder / "bridge.db"}"',
        "[auth]",
        f'admin_token_file = "{folder / "admin.token"}"',
        "[health]",
        "silent_after_s = 45",
        "[limits]",
        *(f"{key} = {value}" for key, value in limits.items()),
    ]
    if tls:
        lines += ["[tls]", f'cert_file = "{tls[0]}"', f'key_file = "{tls[1]}"']
    config = folder / "bridge.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def write_admin_config(path: Path, bridge_url: str, admin_token_file: str, ca_file: str | None = None) -> str:
    """An admin client configuration (admin.toml) as the mcp_bridge role writes it; returns its path."""
    lines = [f"bridge_url = {json.dumps(bridge_url)}"]
    if ca_file:
        lines.append(f"ca_file = {json.dumps(ca_file)}")
    lines.append(f"admin_token_file = {json.dumps(admin_token_file)}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def start_bridge(
    folder: Path, tls: tuple[str, str] | None = None, ca_file: str | None = None, limits: dict | None = None
) -> Bridge:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(folder, port, tls, limits)
    log = folder / "bridge.log"
    args = [*bridge_command(), "serve", "--config", str(config)]
    if not tls:
        args.append("--insecure-http")
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    scheme = "https" if tls else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    bridge = Bridge(
        url=f"{base}/mcp",
        base=base,
        folder=folder,
        admin_token_file=str(folder / "admin.token"),
        process=process,
        log=log,
        admin_config=write_admin_config(folder / "admin.toml", f"{base}/mcp", str(folder / "admin.token"), ca_file),
        ca_file=ca_file,
    )
    wait_healthy(bridge)
    return bridge


def wait_healthy(bridge: Bridge, timeout: float = 30.0) -> None:
    context = ssl.create_default_context(cafile=bridge.ca_file) if bridge.ca_file else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bridge.process.poll() is not None:
            raise RuntimeError(f"bridge exited with {bridge.process.returncode}:\n{bridge.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{bridge.base}/healthz", timeout=2, context=context) as answer:
                healthy = answer.status == 200 and json.loads(answer.read()) == {"ok": True}
                if healthy and Path(bridge.admin_token_file).is_file():
                    return
        except OSError:
            pass
        time.sleep(0.1)
    stop_bridge(bridge)
    raise RuntimeError(f"bridge did not answer /healthz within {timeout}s:\n{bridge.log.read_text()}")


def stop_bridge(bridge: Bridge) -> None:
    if bridge.process.poll() is None:
        bridge.process.terminate()
        try:
            bridge.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bridge.process.kill()
            bridge.process.wait()


@pytest.fixture(scope="session")
def bridge(tmp_path_factory: pytest.TempPathFactory):
    """One plain-HTTP bridge on loopback for the session; tests keep apart by worker id."""
    b = start_bridge(tmp_path_factory.mktemp("bridge"))
    yield b
    stop_bridge(b)


@pytest.fixture(scope="module")
def module_bridge(tmp_path_factory: pytest.TempPathFactory):
    """A plain-HTTP bridge for one test module (the lead token is one per bridge: its tests share this one)."""
    b = start_bridge(tmp_path_factory.mktemp("module-bridge"))
    yield b
    stop_bridge(b)


@pytest.fixture
def fresh_bridge(tmp_path: Path):
    """A bridge of its own, for tests that look at the whole fleet."""
    b = start_bridge(tmp_path / "bridge")
    yield b
    stop_bridge(b)


@pytest.fixture
def bridge_factory(tmp_path: Path):
    """start(name, limits=None) -> a bridge of its own with these [limits]; all stopped after the test."""
    started: list[Bridge] = []

    def start(name: str, limits: dict | None = None) -> Bridge:
        b = start_bridge(tmp_path / name, limits=limits)
        started.append(b)
        return b

    yield start
    for b in started:
        stop_bridge(b)


@pytest.fixture
def worker_id() -> str:
    return "w" + uuid.uuid4().hex[:10]


@pytest.fixture
def params(bridge: Bridge, tmp_path: Path, worker_id: str) -> dict:
    """bridge_conversation's parameters as its run hands them to converge(): the options (defaults filled in), and
    bridge_url and ca_file as flow.run reads them from admin_config."""
    return {
        "admin_config": bridge.admin_config,
        "bridge_url": bridge.url,
        "ca_file": "",
        "runtime_python": sys.executable,
        "timeout_s": 30.0,
        "my_role": "s2-orchestrator",
        "partner_role": "tests",
        "worker_id": worker_id,
        "ttl_s": 2592000,
        "min_lifetime_s": 604800,
        "state": "present",
        "credentials_dir": str(tmp_path / "credentials"),
        "owner": None,
        "group": None,
    }


def assert_no_token(bridge, result, *token_sets):
    text = json.dumps(result)
    assert not TOKEN_RE.search(text), "a token-shaped string leaked into the result"
    assert bridge.admin_token not in text
    for tokens in token_sets:
        for token in tokens:
            assert token not in text


# What flow.run reads from admin_config into the parameters: never a module argument.
RESOLVED = ("bridge_url", "ca_file", "timeout_s")


def module_args(params: dict, **overrides) -> dict:
    """A module's arguments from its parameters: the set ones, without timeout_s and what admin_config gives."""
    args = {k: v for k, v in params.items() if v not in (None, "") and k not in RESOLVED}
    args.update(overrides)
    return args


# --- TLS: a CA and a server certificate for 127.0.0.1, made here ---------------------------------


def _make_pki(folder: Path) -> dict[str, str]:
    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)

    def ca(common: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca("s2 module test CA")
    _other_key, other_cert = ca("unrelated CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca_file": folder / "ca.crt",
        "other_ca_file": folder / "other-ca.crt",
        "cert_file": folder / "server.crt",
        "key_file": folder / "server.key",
    }
    paths["ca_file"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["other_ca_file"].write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert_file"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key_file"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(paths["key_file"], 0o600)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def tls_bridge(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tls-bridge")
    pki = _make_pki(folder / "pki")
    b = start_bridge(folder / "bridge", tls=(pki["cert_file"], pki["key_file"]), ca_file=pki["ca_file"])
    b.extra.update(pki)
    yield b
    stop_bridge(b)


# --- running a module through ansible itself -------------------------------------------------


@dataclass
class AnsibleRun:
    rc: int
    stdout: str
    stderr: str
    result: dict


def run_module(
    module: str, args: dict, tmp_path: Path, *, interpreter: str | None = None, extra_args: tuple[str, ...] = ()
) -> AnsibleRun:
    """`ansible localhost -m s2.fleet.MODULE -a JSON`; returns the host's result as the callback printed it.

    The minimal callback prints `localhost | STATUS => {json}`; the json callback is not used because it
    overwrites a result key named `action` with the task's action.
    """
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(tmp_path / "no-ansible.cfg"),  # not the repo's: these tests own their settings
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_HOST_KEY_CHECKING="0",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote"),
        ANSIBLE_NOCOLOR="1",
    )
    ansible = Path(sys.executable).parent / "ansible"
    command = [
        str(ansible),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={interpreter or sys.executable}",
        "-m",
        f"s2.fleet.{module}",
        "-a",
        json.dumps(args),
        *extra_args,
    ]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    result: dict = {}
    with contextlib.suppress(ValueError):
        marker = proc.stdout.rindex("localhost | ")
        start = proc.stdout.index("{", marker)
        result, _end = json.JSONDecoder().raw_decode(proc.stdout[start:])
    return AnsibleRun(proc.returncode, proc.stdout, proc.stderr, result)


@pytest.fixture
def ansible_module(tmp_path: Path):
    """run_module bound to this test's temp directory."""

    def run(module: str, args: dict, **kwargs) -> AnsibleRun:
        return run_module(module, args, tmp_path, **kwargs)

    return run
