"""Imports run one way: no cycles through the CLI package, the deploy package, the rollout runner or the model
sources (lazy imports in functions count too), the deploy and rollout code never reach the gateway, every
module imports fresh in either order, and unit tests never import benchmarks/ (its helpers' tests are in
tests/benchmarks); no module in serving/ is over 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECKED = ("serving.cli", "serving.deploy", "serving.rollout", "serving.app", "models.catalog", "models.loader",
           "models.source")


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("serving", "models"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in it; `from pkg import mod` names the submodule)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A cycle through `start` (as a path start -> ... -> start), or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    todo, seen = [start], {start}
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _checked(graph: dict[str, set[str]]) -> list[str]:
    return sorted(m for m in graph if any(m == c or m.startswith(c + ".") for c in CHECKED))


def test_no_import_cycles_through_the_cli_deploy_rollout_and_model_modules() -> None:
    graph = _graph()
    assert "serving.cli.admin" in graph and "models.source" in graph and "serving.deploy.serve_config" in graph
    cycles = [c for m in _checked(graph) if (c := _cycle_from(graph, m))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cli_imports_one_way() -> None:
    graph = _graph()
    subcommands = {"serving.cli.platform", "serving.cli.models", "serving.cli.rollout", "serving.cli.admin"}
    assert subcommands <= graph["serving.cli"]
    assert graph["serving.cli._common"].isdisjoint({"serving.cli", *subcommands})
    for module in subcommands:
        assert "serving.cli" not in graph[module] and graph[module].isdisjoint(subcommands), module


def test_deploy_and_rollout_do_not_reach_the_gateway() -> None:
    graph = _graph()
    for module in _checked(graph):
        if module.startswith(("serving.deploy", "serving.rollout")):
            reached = _reachable(graph, module)
            assert not any(m == "serving.app" or m.startswith("serving.api") for m in reached), (module, reached)


def test_unit_tests_do_not_import_the_benchmarks() -> None:
    """tests/unit tests serving/ and models/; tests of the benchmark scripts' own helpers live in tests/benchmarks."""
    files = sorted((ROOT / "tests" / "unit").rglob("*.py"))
    assert Path(__file__).resolve() in files
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                base = node.module or ""
                names = [base, *(f"{base}.{a.name}" for a in node.names)]  # `from tests import benchmarks` too
            else:
                continue
            hits = [n for n in names if n.split(".")[0] == "benchmarks" or n.startswith("tests.benchmarks")]
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {hits[0]}")
    assert not found, "unit tests importing benchmarks: " + "; ".join(found)


MAX_MODULE_LINES = 400


def test_no_serving_module_is_over_400_lines() -> None:
    """Small modules with names that say what they are: a module past the limit is split, not grown."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "serving").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("order", [
    ["models.catalog", "models.loader"],
    ["models.loader", "models.catalog"],
    ["models.source", "models.loader"],
    ["serving.cli.admin", "serving.cli.rollout", "serving.cli"],
    ["serving.cli", "serving.cli.admin"],
    ["serving.deploy.serve_config", "serving.rollout.runner", "serving.app"],
    ["serving.app", "serving.rollout.plan"],
])
def test_modules_import_fresh_in_any_order(order: list[str]) -> None:
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in order)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
