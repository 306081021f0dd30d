"""Every maestro_jax module imports, and the package's import graph has no cycle.

The graph is read with `ast` from maestro_jax/**/*.py, function-level imports included (a cycle that only closes
inside a function still makes two modules depend on each other). `from pkg import name` points at the module
`pkg.name` when that is a module of the package, else at `pkg`.
"""

import ast
import importlib
from pathlib import Path

import pytest

import maestro_jax

PACKAGE_DIR = Path(maestro_jax.__file__).parent


def package_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """{dotted module name: source file} of every module under `package_dir` (packages by their __init__)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its source}."""
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".")
                    anchor = parts[: len(parts) - node.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [_module_or_package(f"{base}.{alias.name}", base, modules) for alias in node.names]
            else:
                continue
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def _module_or_package(name: str, package: str, modules: dict) -> str:
    return name if name in modules else package


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted; [] when acyclic."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from .. import a\n")
    (package / "d.py").write_text("from pkg.a import thing\n")
    graph = import_graph(package_modules(package))
    assert graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_package_import_graph_is_acyclic():
    cycles = import_cycles(import_graph(package_modules()))
    assert not cycles, "import cycles (modules that import each other, directly or around a loop): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_every_module_imports(module):
    importlib.import_module(module)
