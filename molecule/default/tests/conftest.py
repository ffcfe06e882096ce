"""testinfra over podman's native backend for the molecule scenarios.

molecule runs pytest with ``--connection=ansible --ansible-inventory=DIR``; testinfra's ansible
backend does not map ``containers.podman.podman`` to its native podman backend and would run
every check through Ansible (about ten times slower). This conftest reads the scenario's
inventory once and, unless ``--hosts`` was given, tests every inventory host as
``podman://NAME``.

Fixtures for tests:
  inventory       {"groups": {group: [hosts]}, "hostvars": {host: {...}}}
  host_name       inventory name of the host a test runs against
  in_group        in_group("workers") -> bool for the current host
  get_lab_host    get_lab_host("worker-3-tests") -> a testinfra host (cross-host checks)
  orch_name       the orchestrator's inventory (and container) name: groups['orchestrator'][0]
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml


def _inventory_source(config: pytest.Config) -> str | None:
    source = getattr(config.option, "ansible_inventory", None)
    if source:
        return source
    inv_file = os.environ.get("MOLECULE_INVENTORY_FILE")
    return str(Path(inv_file).parent) if inv_file else None


def _load_inventory(source: str) -> dict:
    out = subprocess.run(
        ["ansible-inventory", "-i", source, "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    raw = json.loads(out)
    groups: dict[str, list[str]] = {}

    def hosts_of(group: str) -> list[str]:
        if group in groups:
            return groups[group]
        entry = raw.get(group, {})
        hosts = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            hosts += [h for h in hosts_of(child) if h not in hosts]
        groups[group] = hosts
        return hosts

    for name in raw:
        if name != "_meta":
            hosts_of(name)
    return {"groups": groups, "hostvars": raw.get("_meta", {}).get("hostvars", {})}


# The inventory, read once at configure time (before the host parametrization needs it).
_LOADED: dict[str, dict] = {}


def pytest_configure(config: pytest.Config) -> None:
    source = _inventory_source(config)
    if source is None:
        return
    _LOADED["inventory"] = _load_inventory(source)
    if getattr(config.option, "hosts", None) is None:
        names = sorted(_LOADED["inventory"]["groups"].get("all", []))
        if not names:
            raise pytest.UsageError(f"inventory {source} has no hosts: run 'molecule create' first")
        config.option.hosts = ",".join(f"podman://{n}" for n in names)


@pytest.fixture(scope="session")
def inventory() -> dict:
    if "inventory" not in _LOADED:
        pytest.skip("no molecule inventory (run through molecule, or pass --ansible-inventory)")
    return _LOADED["inventory"]


@pytest.fixture
def host_name(host) -> str:
    return host.backend.get_hostname()


@pytest.fixture
def in_group(inventory, host_name):
    def check(group: str) -> bool:
        return host_name in inventory["groups"].get(group, [])

    return check


@pytest.fixture(scope="session")
def get_lab_host():
    cache: dict[str, testinfra.host.Host] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = testinfra.get_host(f"podman://{name}")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def orch_name(inventory) -> str:
    """The orchestrator host: the one host of group 'orchestrator' (as the roles find it)."""
    return inventory["groups"]["orchestrator"][0]


@pytest.fixture(scope="session")
def platforms() -> dict[str, dict]:
    """The scenario's platforms from molecule.yml, by name (molecule sets MOLECULE_FILE)."""
    molecule_file = os.environ.get("MOLECULE_FILE")
    if not molecule_file:
        pytest.skip("MOLECULE_FILE is not set: run through molecule")
    data = yaml.safe_load(Path(molecule_file).read_text(encoding="utf-8"))
    return {p["name"]: p for p in data["platforms"]}


@pytest.fixture
def runs_systemd(platforms, host_name) -> bool:
    """True when the platform boots systemd as PID 1 (create.yml's default)."""
    value = str(platforms[host_name].get("systemd", "always")).lower()
    return value in ("always", "true")
