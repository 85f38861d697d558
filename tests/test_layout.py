"""The package's import graph: no module reaches into another's private names, no
cycles, and the layering DESIGN.md states (drivers on top, configs only there)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "distillspec_jax"
# The drivers: command lines over train stages and `evaluate`. Nothing imports them
# (but `main`, the study's command under its first name).
DRIVERS = {"study", "ablation", "main"}


def _modules(folder: str) -> dict[str, ast.Module]:
    out = {}
    for name in sorted(os.listdir(os.path.join(REPO, folder))):
        if name.endswith(".py"):
            with open(os.path.join(REPO, folder, name)) as f:
                out[name[:-3]] = ast.parse(f.read(), filename=name)
    return out


def _package_imports(tree: ast.Module) -> dict[str, str]:
    """{local name: package module} of every import of a package module (module level
    or inside functions)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            for alias in node.names:
                names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            module = node.module.split(".")[1]
            names[f"<from {module}>"] = module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    names[alias.asname or alias.name] = alias.name.split(".")[1]
    return names


def _private_uses(tree: ast.Module) -> list[str]:
    """`module._name` reads and `from distillspec_jax.module import _name` imports."""
    imported = _package_imports(tree)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{imported[node.value.id]}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


PACKAGE_MODULES = _modules(PACKAGE)


@pytest.mark.parametrize("folder", [PACKAGE, "benchmarks"])
def test_no_module_uses_another_modules_private_names(folder):
    uses = {
        name: _private_uses(tree) for name, tree in _modules(folder).items() if _private_uses(tree)
    }
    assert not uses, uses


def test_import_graph_has_no_cycles():
    graph = {
        name: set(_package_imports(tree).values()) - {name}
        for name, tree in PACKAGE_MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done.

    def visit(name, path):
        if state.get(name) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, name]))
        if state.get(name) == 2:
            return
        state[name] = 1
        for other in sorted(graph.get(name, ())):
            visit(other, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def test_library_modules_import_no_driver_and_no_config():
    for name, tree in PACKAGE_MODULES.items():
        imported = set(_package_imports(tree).values())
        if name == "main":
            assert imported == {"study"}
            continue
        assert not imported & DRIVERS, (name, imported & DRIVERS)
        if name not in DRIVERS:
            configs = [
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("configs")
            ]
            assert not configs, f"{name} imports configs"
