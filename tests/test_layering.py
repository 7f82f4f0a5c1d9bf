"""The package's layers point one way: the engine imports nothing above it, and no module imports itself back.

Every ``import`` statement of every module under ``pxpermute/`` is read with
:mod:`ast` -- those inside functions and methods included, only blocks under
``if TYPE_CHECKING:`` (never executed) left out.  Importing ``pxpermute.a.b``
also runs ``pxpermute/a/__init__.py``, so that counts as an edge to ``pxpermute.a``
too (not to the top-level package, and not to the importer's own packages).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pxpermute"
PKG = "pxpermute"

#: the engine: channel_importance and everything it needs (DESIGN.md, "Layers")
ENGINE = {
    "pxpermute.importance", "pxpermute.perturb", "pxpermute.metrics", "pxpermute.result", "pxpermute.stats",
    "pxpermute.runner", "pxpermute.adaptive", "pxpermute.checkpoint", "pxpermute.distributed",
    "pxpermute.fingerprint", "pxpermute.predictor", "pxpermute.sources", "pxpermute.keys", "pxpermute._fileio",
    "pxpermute._validation", "pxpermute._version", "pxpermute._progress", "pxpermute._text", "pxpermute.datasets", "pxpermute.inference",
}
#: what the engine must never reach, even through a function-level import
ABOVE_ENGINE = ("training", "models", "evaluation", "cli", "baselines", "diagnostics", "io", "panel", "scale")
#: the one lazy import the engine may make (inside ``plot()``); its own imports are checked for cycles below
LAZY_OK = {"pxpermute.plotting"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _raw_imports(tree: ast.AST) -> list[tuple[str, int, list[str]]]:
    """(module, level, names) of every import, skipping ``if TYPE_CHECKING:`` bodies."""
    out: list[tuple[str, int, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, 0, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level, [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _resolve(importer: str, module: str, level: int, names: list[str]) -> set[str]:
    is_pkg = MODULES[importer].name == "__init__.py"
    if level:
        base = importer.split(".") if is_pkg else importer.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        target = ".".join(base + ([module] if module else []))
    else:
        target = module
    if target != PKG and not target.startswith(PKG + "."):
        return set()
    found = set()
    for name in names:  # ``from pkg import submodule``
        if f"{target}.{name}" in MODULES:
            found.add(f"{target}.{name}")
    if target in MODULES and (not names or len(found) < len(names)):
        found.add(target)
    # parents that run on the way (not the top-level package, not the importer's own packages)
    for t in list(found):
        parts = t.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if not (importer == parent or importer.startswith(parent + ".")):
                found.add(parent)
    found.discard(importer)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for module, level, names in _raw_imports(tree):
            edges |= _resolve(name, module, level, names)
        graph[name] = edges
    return graph


GRAPH = _graph()


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        color[u] = GREY
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if color.get(v, BLACK) == GREY:
                return stack[stack.index(v):] + [v]
            if color.get(v) == WHITE:
                cyc = dfs(v)
                if cyc:
                    return cyc
        stack.pop()
        color[u] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE:
            cyc = dfs(node)
            if cyc:
                return cyc
    return None


def _reachable(start: str, graph: dict[str, set[str]], stop: set[str]) -> dict[str, str]:
    """Modules reachable from ``start`` -> the module that imports them (not walking past ``stop``)."""
    seen = {start: ""}
    todo = [start]
    while todo:
        u = todo.pop()
        if u in stop and u != start:
            continue
        for v in graph.get(u, ()):
            if v not in seen:
                seen[v] = u
                todo.append(v)
    return seen


def _path(seen: dict[str, str], end: str) -> str:
    chain = [end]
    while seen[chain[-1]]:
        chain.append(seen[chain[-1]])
    return " -> ".join(reversed(chain))


def test_the_parser_sees_function_level_imports():
    tree = ast.parse("def f():\n    from .training import x\nif TYPE_CHECKING:\n    from .models import y\n")
    assert [m for m, _, _ in _raw_imports(tree)] == ["training"]
    assert _resolve("pxpermute.result", "plotting", 1, ["plot_importance"]) == {"pxpermute.plotting"}
    assert _resolve("pxpermute.importance", "", 1, ["perturb"]) == {"pxpermute.perturb"}
    assert _resolve("pxpermute.importance", "datasets.base", 1, ["IFCDataset"]) == {
        "pxpermute.datasets.base", "pxpermute.datasets"}
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, (
        "import cycle (function-level imports count): " + " -> ".join(cycle or []) + ". Break it by pointing "
        "the arrow down: e.g. plotting draws results it is given and never computes them (the engine's plot() "
        "imports plotting lazily); move a function that must compute into pxpermute.evaluation")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if any(m == e or m.startswith(e + ".") for e in ENGINE)))
def test_engine_imports_nothing_above_it(module):
    seen = _reachable(module, GRAPH, stop=LAZY_OK)
    bad = sorted(m for m in seen if m.split(".")[1] in ABOVE_ENGINE)
    assert not bad, f"{module} reaches modules above the engine: " + "; ".join(_path(seen, m) for m in bad)


def test_channel_importance_reaches_only_the_engine():
    seen = _reachable("pxpermute.importance", GRAPH, stop=LAZY_OK)
    outside = sorted(m for m in seen if m not in LAZY_OK and not any(m == e or m.startswith(e + ".") for e in ENGINE))
    assert not outside, "the engine imports modules not listed as engine: " + "; ".join(_path(seen, m) for m in outside)


def test_a_run_of_the_engine_loads_nothing_above_it(tmp_path):
    """The static check, confirmed at run time: a full engine run (adaptive k, checkpoint, bootstrap, save/load)."""
    import subprocess
    import sys

    code = f"""
import sys
import numpy as np
import torch
import pxpermute
from pxpermute import ImportanceResult, channel_importance
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3, 6, 6)).astype("float32"); y = rng.integers(0, 2, 40)
model = lambda x: torch.stack([torch.zeros(len(x)), x[:, 0].mean((1, 2))], 1)
res = channel_importance(model, (X, y), n_repeats=6, adaptive={{"min_repeats": 3, "chunk": 3}}, n_bootstrap=9,
                         checkpoint=r"{tmp_path / 'ck'}", progress=False)
ImportanceResult.load(res.save(r"{tmp_path / 'res'}")).summary()
print(" ".join(sorted(m for m in sys.modules if m.startswith("pxpermute."))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=ROOT.parent, env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.split()
    bad = [m for m in loaded if m.split(".")[1] in ABOVE_ENGINE]
    assert not bad, f"an engine run loaded {bad}"
    assert "pxpermute.runner" in loaded and "pxpermute.checkpoint" in loaded
