"""The import graph of vitinit (read with ``ast``, nothing imported): no cycle, and no import up the layers.

Layers, lowest first; a module imports its own layer and those below. A new package must be placed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    **dict.fromkeys(("errors", "variants", "families", "ops"), 0),
    **dict.fromkeys(("io", "canonical"), 1),
    **dict.fromkeys(("formats", "modeling", "data", "evaluation", "normalize", "recipes"), 2),
    **dict.fromkeys(("targets", "engine", "analysis"), 3),
    **dict.fromkeys(("convert", "bench", "hub"), 4),
    **dict.fromkeys(("__init__", "api"), 5),  # vitinit/__init__.py re-exports vitinit/api.py
    "cli": 6,  # vitinit_cli
}

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cli":  # installed as vitinit_cli
        parts[0] = "vitinit_cli"
    elif parts[0] == "recipes":  # installed as vitinit.recipes
        parts = ["vitinit", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for d in ("vitinit", "cli", "recipes") for p in (ROOT / d).rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file (function-level imports count too).

    ``from pkg import sub`` is an edge to ``pkg.sub`` only when ``sub`` is a module: reaching a submodule
    through its package is not a dependency on the package's other contents.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    key = "cli" if parts[0] == "vitinit_cli" else (parts[1] if len(parts) > 1 else "__init__")
    return key, LAYERS.get(key)


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_every_package_has_a_layer():
    unplaced = sorted({_layer(m)[0] for m in _graph() if _layer(m)[1] is None})
    assert not unplaced, f"place these in LAYERS (tests/test_imports.py): {unplaced}"


def test_no_import_runs_up_the_layers():
    graph = _graph()
    upward = sorted(
        f"{a} → {b}"
        for a, targets in graph.items()
        for b in targets
        if b != "vitinit"  # the package root's __version__
        and _layer(a)[0] != _layer(b)[0]
        and None not in (_layer(a)[1], _layer(b)[1])
        and _layer(b)[1] > _layer(a)[1]
    )
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(sorted(c)) for c in cycles)


def test_the_checker_sees_what_it_must():
    """The graph is read right: a known edge is present, and a made-up cycle and upward edge are found."""
    graph = _graph()
    assert "vitinit.engine.run_folder" in graph["vitinit.analysis.runs"]
    assert "vitinit.bench.worker" in graph["vitinit.bench.slurm"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _layer("vitinit.engine.slurm")[1] < _layer("vitinit.bench")[1]
