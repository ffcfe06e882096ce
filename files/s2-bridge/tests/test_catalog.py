"""The committed tool catalog (s2_bridge/contract/tool_catalog.json) against the live bridge.

The proxy answers tools/list from that file, so it must be exactly what the bridge serves:
when a tool's name, description or schema changes on the server, this fails until the
catalog is regenerated with `python -m s2_bridge.server.catalog_gen --write`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import Bridge
from fixtures_client import cli_env
from s2_bridge.contract import catalog
from s2_bridge.contract.permissions import TOOL_CALLERS, tools_for
from s2_bridge.server import catalog_gen

pytestmark = pytest.mark.anyio

PACKAGE = Path(__file__).resolve().parents[1]
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]


async def test_committed_catalog_is_what_the_live_bridge_serves(bridge: Bridge) -> None:
    tokens = await catalog_gen.identity_tokens(bridge.url, bridge.admin_token, bridge.ca_file)
    assert set(tokens) == {"admin", "coordinator", "worker", "lead"}
    live, shown = await catalog_gen.collect(bridge.url, tokens, bridge.ca_file)
    changes = catalog.difference(catalog.load(), live)
    assert not changes, f"the tool catalog is stale ({'; '.join(changes)}); fix: {catalog.REGENERATE}"
    assert catalog.load() == live  # the same order too
    # Each identity is shown exactly the tools the permission table gives it: the list the
    # proxy builds from the catalog for that identity.
    for kind, names in shown.items():
        assert sorted(names) == sorted(tools_for(kind)), kind
        assert [tool["name"] for tool in catalog.tools_for(kind, live)] == list(tools_for(kind))


def test_catalog_covers_the_permission_table_and_keeps_wire_keys_only() -> None:
    tools = catalog.load()
    assert [tool["name"] for tool in tools] == list(TOOL_CALLERS)
    for tool in tools:
        assert set(tool) <= set(catalog.WIRE_KEYS), tool["name"]
        assert tool["description"] and tool["inputSchema"]["type"] == "object", tool["name"]


def test_committed_file_is_in_canonical_form() -> None:
    """What --write would write for the same tools: diffs stay reviewable."""
    assert catalog.CATALOG_PATH.read_text(encoding="utf-8") == catalog.dumps(catalog.load())


def test_loading_the_catalog_imports_no_sdk() -> None:
    code = (
        "import sys; from s2_bridge.contract import catalog; catalog.tools_for('worker', catalog.load()); "
        "print(sorted(m for m in ('mcp', 'mcp_types', 'pydantic', 'httpx2', 'anyio') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=cli_env())
    assert done.stdout.strip() == "[]"


def test_a_broken_catalog_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "tool_catalog.json"
    broken.write_text("{")
    with pytest.raises(
        catalog.CatalogError, match=r"fix: reinstall, or run python -m s2_bridge\.server\.catalog_gen --write"
    ):
        catalog.load(broken)
    broken.write_text(json.dumps({"tools": [{"description": "no name"}]}))
    with pytest.raises(catalog.CatalogError, match="not a list of tool objects"):
        catalog.load(broken)


def test_the_wheel_carries_the_catalog(tmp_path: Path) -> None:
    """Package data: the wheel the roles build and ship to hosts holds the file. Built the
    roles' way (pip wheel, isolated build) from a copy, so the work tree gets no build/."""
    source = tmp_path / "src-copy"
    shutil.copytree(
        PACKAGE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests", "bench", ".pytest_cache"),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("s2_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "s2_bridge/contract/tool_catalog.json" in archive.namelist()
        carried = json.loads(archive.read("s2_bridge/contract/tool_catalog.json"))
    assert carried["tools"] == catalog.load()
