"""The package graph holds its layers (docs/architecture.md): no import cycle between packages, no import from
a lower layer up to a higher one — counting imports inside functions too, since a lazy import that dodges a
cycle is still a cycle — and no private name imported across modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "visiontrain"

# package (first name under visiontrain) → its layer; docs/architecture.md draws the same table
LAYERS: dict[str, int] = {
    "errors": 0, "faults": 0, "versions": 0, "text": 0, "registry": 0, "fileio": 0, "limits": 0, "optional": 0,
    "fonts": 0, "host": 0,
    "config": 1, "checkpoint": 1,
    "data": 2, "models": 2,
    "engine": 3, "watch": 3,
    "use": 4,
    "trainer": 5, "cli": 5, "testing": 5, "__init__": 5, "__main__": 5,
}
# Imports between packages of the same layer that are allowed (the target stands under the source).
SAME_LAYER: dict[str, set[str]] = {
    "fileio": {"errors", "faults"}, "registry": {"errors"}, "optional": {"errors"},
    "checkpoint": {"config"},
    "watch": {"engine"},
    "cli": {"trainer", "__init__"}, "__init__": {"trainer"}, "__main__": {"cli"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str, int, bool, list[str]]]:
    """(importing module, imported module, line, inside a function, names imported) for every visiontrain import."""
    found = []
    for path in SRC.rglob("*.py"):
        module = _module(path)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, in_function in _walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("visiontrain"):
                        found.append((module, alias.name, node.lineno, in_function, []))
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, is_pkg)
                if not (target and target.startswith("visiontrain")):
                    continue
                for alias in node.names:  # `from visiontrain import plots` imports the module visiontrain.plots
                    sub = f"{target}.{alias.name}"
                    named = sub if _exists(sub) else target
                    found.append((module, named, node.lineno, in_function, [] if named == sub else [alias.name]))
    return found


def _exists(module: str) -> bool:
    path = SRC.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _walk(tree: ast.AST):
    stack = [(tree, False)]
    while stack:
        node, in_function = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue  # annotations only: never executed
            yield child, in_function
            stack.append((child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)))


def _absolute(node: ast.ImportFrom, module: str, is_pkg: bool) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, target, line, _lazy, _names in _imports():
        a, b = _package(source), _package(target)
        if a != b:
            edges[(a, b)].append(f"{source}:{line} imports {target}")
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {_package(_module(p)) for p in SRC.rglob("*.py")}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS and docs/architecture.md: {packages - set(LAYERS)}"


def test_no_import_runs_up_the_layers() -> None:
    wrong = []
    for (a, b), where in sorted(_package_edges().items()):
        if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and b not in SAME_LAYER.get(a, set())):
            wrong += where
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in _package_edges():
        graph[a].add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)


def test_no_private_name_is_imported_across_modules() -> None:
    wrong = [f"{source}:{line} imports {name} from {target}" for source, target, line, _lazy, names in _imports()
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", sorted({p for p, layer in LAYERS.items() if layer < 5}))
def test_lower_layers_never_parse_argv(package: str) -> None:
    """argparse belongs to the cli package alone."""
    files = [SRC / f"{package}.py"] if (SRC / f"{package}.py").exists() else list((SRC / package).rglob("*.py"))
    users = [str(p.relative_to(SRC)) for p in files if "argparse" in p.read_text(encoding="utf-8")]
    assert not users, users


def test_no_cycle_between_modules() -> None:
    """Not even inside a package: every import, lazy ones included, points down a tree of modules."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target, _line, _lazy, _names in _imports():
        while not _exists(target) and "." in target:
            target = target.rsplit(".", 1)[0]
        if target != source:
            graph[source].add(target)
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        for nxt in sorted(graph[node]):
            assert nxt not in path, " -> ".join((*path, node, nxt))
            if nxt not in done:
                visit(nxt, (*path, node))
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, ())


# Imports inside functions outside the faces — cli/, whose commands import what they run only when they run, and
# `__init__`, whose API names load on first use (PEP 562), so that `visiontrain --help` and `import visiontrain`
# stay quick —: each loads a heavy or optional dependency, never dodges a cycle.
LAZY_ALLOWED = {
    "visiontrain.watch.plots": "matplotlib, loaded when a picture is drawn",
    "visiontrain.use.serve.app": "fastapi, the serve extra",
    "visiontrain.use.serve.guard": "fastapi, the serve extra",
    "visiontrain.use.serve.protocol": "uvicorn, the serve extra",
}


def test_imports_inside_functions_load_heavy_or_optional_dependencies_only() -> None:
    wrong = [f"{source}:{line} imports {target} inside a function" for source, target, line, lazy, _ in _imports()
             if lazy and _package(source) not in ("cli", "__init__") and target not in LAZY_ALLOWED]
    assert not wrong, "\n".join(wrong)
