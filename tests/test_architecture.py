"""The import structure of the package, read from the source with ``ast`` (nothing imported).

An edge ``a -> b`` is any ``import``/``from ... import`` of ``rnnsweep.b`` in module ``a``, at
module level or inside a function (a function-level import is still a dependency; it only
hides a cycle until the function runs). ``from rnnsweep.x import y`` is an edge to the
submodule ``rnnsweep.x.y`` when that is a module, else to the package ``rnnsweep.x``.
The implicit import of a parent package's ``__init__`` is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("algorithms", "tasks", "orchestrator", "benchmarks")
FORBIDDEN_IN_NUMERICS = ("ray", "optuna", "mlflow")


def module_files() -> dict[str, Path]:
    """``rnnsweep.<package>.<module>`` -> its source file, for every module of the package."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(("rnnsweep", *parts))] = path
    return modules


MODULES = module_files()


def imported_names(path: Path) -> list[str]:
    """Every absolute module name an import statement anywhere in ``path`` names (a
    ``from a import b`` gives ``a.b`` when that is one of ours, else ``a``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use rnnsweep.* names)"
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if sub in MODULES else base)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    return {
        module: {name for name in imported_names(path) if name in MODULES and name != module}
        for module, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_walk_sees_every_package_and_a_known_edge() -> None:
    graph = import_graph()
    assert {m.split(".")[1] for m in graph} == set(PACKAGES)
    assert "rnnsweep.algorithms.params" in graph["rnnsweep.algorithms.estimator"]
    # a function-level import counts: a member imports the probe inside its constructor
    assert "rnnsweep.algorithms.probe" in graph["rnnsweep.algorithms.member"]


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_package_modules() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", ["algorithms", "tasks"])
def test_numerics_import_no_ray_optuna_or_mlflow(package: str) -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in MODULES.items()
        if module.split(".")[1] == package
        for name in imported_names(path)
        if name.split(".")[0] in FORBIDDEN_IN_NUMERICS
    ]
    assert offenders == []


def test_tasks_import_nothing_of_algorithms() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in MODULES.items()
        if module.startswith("rnnsweep.tasks")
        for name in imported_names(path)
        if name.startswith("rnnsweep.algorithms")
    ]
    assert offenders == []


def private_torch_uses(path: Path) -> list[str]:
    """``torch._name`` / ``torch.x._name`` attribute chains and imports of such modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "torch":
                if any(part.startswith("_") and not part.startswith("__") for part in chain):
                    found.append(".".join(["torch", *reversed(chain)]))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            if any(
                name.split(".")[0] == "torch" and any(p.startswith("_") for p in name.split("."))
                for name in names
            ):
                found.append(f"import of {names}")
    return found


def test_private_torch_apis_only_behind_the_one_adam_function() -> None:
    uses = {
        module: private_torch_uses(path)
        for module, path in MODULES.items()
        if private_torch_uses(path)
    }
    assert uses == {"rnnsweep.algorithms.optimizer": ["torch._fused_adam_"]}
