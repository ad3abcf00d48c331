"""The package's import graph, read from the source files (function-level imports included): no circles,
nothing outside ``captum_fgattr.bench`` imports the benchmark (the library does not depend on its CLI), and no
module of the benchmark imports one of a higher level (:data:`LEVELS`)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("captum_fgattr", "quantus_saco")
_B = "captum_fgattr.bench."
#: the benchmark's levels, lowest first (a module or package name covers what is inside it): a module imports its
#: own level or lower ones only
LEVELS: tuple[tuple[str, ...], ...] = (
    tuple(_B + m for m in ("plugins", "choices", "values", "distributed", "stats", "data", "models", "sae_sources",
                           "methods", "methods_json", "metrics", "config")),  # registries, loaders, the run
    #                                                                      description, pure statistics
    (_B + "store", _B + "resolve"),
    (_B + "evaluate", _B + "experiments", _B + "validity"),  # the protocol, its metric-validity checks
    (_B + "analysis",),  # what finished runs show
    (_B + "report",),
    (_B + "study",),  # the one pipeline, its report included
    (_B + "features", _B + "train_saes", _B + "default"),  # built on runs and run descriptions
    (_B + "cli",),  # parsing and printing
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (relative imports resolved; ``from pkg import mod`` counts
    as importing ``pkg.mod`` when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_the_import_graph_is_read():
    edges = graph()
    assert "captum_fgattr.attr" in edges["captum_fgattr.bench.methods"]
    assert "captum_fgattr.gates" in edges["captum_fgattr.attr"]


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            # a package's __init__ importing its own submodules is not a circle of concepts
            if node == target.rpartition(".")[0] or target == node.rpartition(".")[0]:
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_benchmark_imports_the_benchmark():
    upward = sorted(f"{module} imports {target}" for module, targets in graph().items()
                    if not module.startswith("captum_fgattr.bench")
                    for target in targets if target.startswith("captum_fgattr.bench"))
    assert not upward, "; ".join(upward)


def level(module: str) -> int | None:
    """The index in :data:`LEVELS` of a benchmark module (None outside the benchmark or for its package)."""
    return next((i for i, names in enumerate(LEVELS)
                 for name in names if module == name or module.startswith(name + ".")), None)


def test_every_benchmark_module_has_a_level():
    unplaced = sorted(m for m in graph() if m.startswith(_B) and level(m) is None)
    assert not unplaced, "add to LEVELS: " + ", ".join(unplaced)


def test_no_import_from_a_lower_to_a_higher_level():
    upward = sorted(f"{module} imports {target}" for module, targets in graph().items() if level(module) is not None
                    for target in targets if (level(target) or 0) > level(module))
    assert not upward, "; ".join(upward)
