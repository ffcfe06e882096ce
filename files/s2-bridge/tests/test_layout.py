"""The package's three parts and their one direction of dependency: `contract` (what the bridge,
the agents and the Ansible collection share) imports neither `server` nor `agent`; `server`
imports `agent` only for the catalog generator's client; `agent` (what runs on the workers)
imports no `server` module; no module imports itself back through
another (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import s2_bridge

ROOT = Path(s2_bridge.__file__).parent
# server -> agent imports that are allowed: the catalog generator lists tools with the MCP client
SERVER_USES_AGENT = {("s2_bridge.server.catalog_gen", "s2_bridge.agent.client")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the s2_bridge modules it imports (anywhere in the file, lazy imports too)."""
    modules = {module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("s2_bridge"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("s2_bridge"))
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_every_module_is_in_one_of_the_three_parts() -> None:
    stray = [m for m in imports() if part(m) not in ("contract", "server", "agent", "cli") and m != "s2_bridge"]
    assert stray == []


def test_contract_imports_neither_server_nor_agent() -> None:
    wrong = [(m, t) for m, targets in imports().items() if part(m) == "contract" for t in targets]
    assert [(m, t) for m, t in wrong if part(t) in ("server", "agent", "cli")] == []


def test_server_imports_agent_only_where_listed() -> None:
    pairs = {(m, t) for m, targets in imports().items() if part(m) == "server" for t in targets if part(t) == "agent"}
    assert pairs <= SERVER_USES_AGENT


def test_agent_imports_no_server_module() -> None:
    pairs = [(m, t) for m, targets in imports().items() if part(m) == "agent" for t in targets if part(t) == "server"]
    assert pairs == []


def test_no_import_cycles() -> None:
    graph = imports()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            # a package's __init__ is imported on the way to its modules: not an edge back
            if not module.startswith(target + "."):
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
