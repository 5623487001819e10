"""Check graft's import graph: every import goes down the layer table, and no import cycle exists.

Run ``python -m graft.dev.layers`` (or ``--root PATH/TO/graft`` for another copy
of the package). The graph is read from the code with :mod:`ast`, so every
``import`` counts, including those inside functions (a lazy import is still a
dependency). Violations are printed as ``file:line: message``; the exit code is
1 if there is any, 0 otherwise.

The layer table, from the bottom (a unit may import itself and the units listed
in :data:`MAY_IMPORT`, nothing else):

=============  =====================================================  ==========================================
unit           where (``src/graft/...``)                              may import
=============  =====================================================  ==========================================
foundation     config, credentials, storage, geometry, imagery,       (foundation only)
               rejections, ``__init__``
sources        ``sources/``: where ground photos and satellite chips  foundation
               come from
dataset        ``dataset/``: the on-disk dataset format               foundation
models         ``models/``, ``losses.py``: CLIP tower, satellite      foundation
               encoders, checkpoints, losses
pipeline       ``pipeline/``: build and embed the dataset             foundation, sources, dataset, models
evaluation     ``evaluation/``: tasks, benchmark sets, reports,       foundation, dataset, models
               export
model_apps     ``vqa/``, ``mapsearch/``: ``graft vqa``, ``graft map``,  foundation, dataset, models, evaluation
               apps on a trained model (beside evaluation, never
               training)
training       ``training/``: every training loop                     foundation, dataset, models, pipeline,
                                                                      evaluation
demo           ``demo/``: the synthetic world and ``graft demo``      everything below
apps           ``cli.py``, ``doctor.py``: commands                    everything below, demo
dev            ``dev/``: this checker                                 foundation
=============  =====================================================  ==========================================

Why this order: a source never imports the pipeline, and evaluation never imports a
source or the pipeline (benchmarks and GRAFT datasets are read through ``dataset``).
Evaluation sits below training so that evaluating or exporting a model never imports
the training stack, while the trainer may score alignment on validation pairs with
evaluation's metric. ``cli.py`` also names handler modules as strings (its dispatch
table); as the top layer it may reach any of them.

Besides the layer order, no two modules may import each other directly or through
others, and no two subpackages (``graft.evaluation`` and ``graft.evaluation.datasets``
count as two) either.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

UNITS: dict[str, tuple[str, ...]] = {
    "foundation": ("graft", "graft.config", "graft.credentials", "graft.storage", "graft.geometry",
                   "graft.imagery", "graft.rejections", "graft.errors", "graft.embedding_metrics"),
    "sources": ("graft.sources",),
    "dataset": ("graft.dataset",),
    "models": ("graft.models", "graft.losses"),
    "pipeline": ("graft.pipeline",),
    "evaluation": ("graft.evaluation",),
    "training": ("graft.training",),
    "model_apps": ("graft.vqa", "graft.mapsearch"),
    "demo": ("graft.demo",),
    "apps": ("graft.cli", "graft.doctor"),
    "dev": ("graft.dev",),
}

_BELOW_DEMO = {"foundation", "sources", "dataset", "models", "pipeline", "evaluation", "training", "model_apps"}
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),
    "sources": {"foundation"},
    "dataset": {"foundation"},
    "models": {"foundation"},
    "pipeline": {"foundation", "sources", "dataset", "models"},
    "evaluation": {"foundation", "dataset", "models"},
    "training": {"foundation", "dataset", "models", "pipeline", "evaluation"},
    # Applications on a trained model (VQA, map search) sit beside evaluation and use it, never training.
    "model_apps": {"foundation", "dataset", "models", "evaluation"},
    "demo": set(_BELOW_DEMO),
    "apps": _BELOW_DEMO | {"demo"},
    "dev": {"foundation"},
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is written."""

    source: str  # importing module
    target: str  # imported graft module
    file: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root.parent)}:{self.line}"


def module_name(root: Path, file: Path) -> str:
    """``ROOT/pipeline/build.py`` -> ``graft.pipeline.build``; a package's ``__init__.py`` -> the package."""
    parts = list(file.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([root.name, *parts])


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def read_imports(root: Path) -> tuple[set[str], list[Import]]:
    """All modules of the package at ``root`` and every import of a module of it, from the source."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(root, f) for f in files}
    found: list[Import] = []
    for f in files:
        mod = module_name(root, f)
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(mod, f.name == "__init__.py", node.level, node.module) if node.level
                        else node.module or "")
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                if t == root.name or t.startswith(root.name + "."):
                    found.append(Import(mod, t, f, node.lineno))
    return modules, found


def unit_of(module: str) -> str | None:
    """The layer-table unit of a module (longest matching prefix; the root package only by its own name)."""
    best, best_len = None, -1
    for unit, prefixes in UNITS.items():
        for p in prefixes:
            matches = module == p or ("." in p and module.startswith(p + "."))
            if matches and len(p) > best_len:
                best, best_len = unit, len(p)
    return best


def package_of(module: str, modules: set[str], packages: set[str]) -> str:
    """The subpackage a module belongs to (a package is its own; a top-level module is its own)."""
    if module in packages:
        return module
    parent = module.rsplit(".", 1)[0]
    return parent if parent in packages and "." in parent else module


def layer_violations(imports: Iterable[Import], root: Path) -> list[str]:
    out = []
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src is None:
            out.append(f"{imp.where(root)}: module {imp.source} is in no unit of the layer table "
                       "(add it to graft.dev.layers.UNITS)")
        elif dst is None:
            out.append(f"{imp.where(root)}: {imp.target} is in no unit of the layer table "
                       "(add it to graft.dev.layers.UNITS)")
        elif src != dst and dst not in MAY_IMPORT[src]:
            allowed = ", ".join(sorted(MAY_IMPORT[src])) or "nothing outside itself"
            out.append(f"{imp.where(root)}: {imp.source} ({src}) imports {imp.target} ({dst}); "
                       f"{src} may import {allowed}")
    return out


def find_cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as a sorted node list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def _cycle_path(comp: list[str], edges: dict[str, dict[str, Import]]) -> list[tuple[str, str, Import]]:
    """One concrete cycle through the component's first node, as ``(from, to, import)`` steps."""
    start, members = comp[0], set(comp)
    came_from: dict[str, str] = {}
    queue, seen = [start], {start}
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, {})):
            if w == start:
                nodes = [v]
                while nodes[0] != start:
                    nodes.insert(0, came_from[nodes[0]])
                nodes.append(start)
                return [(a, b, edges[a][b]) for a, b in zip(nodes, nodes[1:], strict=False)]
            if w in members and w not in seen:
                seen.add(w)
                came_from[w] = v
                queue.append(w)
    return []


def cycle_violations(imports: Iterable[Import], modules: set[str], root: Path) -> list[str]:
    imports = list(imports)
    packages = {module_name(root, f) for f in root.rglob("__init__.py")}
    out = []
    for level, node_of in (("module", lambda m: m), ("subpackage", lambda m: package_of(m, modules, packages))):
        edges: dict[str, dict[str, Import]] = {}
        for imp in imports:
            a, b = node_of(imp.source), node_of(imp.target)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, imp)
        for comp in find_cycles(edges):
            if level == "subpackage" and not packages.intersection(comp):
                continue  # a cycle of plain modules, already reported at the module level
            path = _cycle_path(comp, edges)
            steps = "; ".join(f"{imp.where(root)} {a} -> {b}" for a, b, imp in path)
            out.append(f"{path[0][2].where(root)}: import cycle between {level}s {', '.join(comp)}: {steps}")
    return out


def check(root: Path) -> list[str]:
    """Every violation in the package at ``root`` (a folder named like the package, e.g. ``src/graft``)."""
    modules, imports = read_imports(root)
    out = [f"{root / 'dev' / 'layers.py'}: unit {u} may import {sorted(MAY_IMPORT[u] - set(UNITS))}, "
           "which are not units" for u in MAY_IMPORT if MAY_IMPORT[u] - set(UNITS)]
    out += layer_violations(imports, root)
    out += cycle_violations(imports, modules, root)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graft.dev.layers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the package folder to check (default: this graft)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    modules, imports = read_imports(root)
    problems = check(root)
    for p in problems:
        print(p)
    units = sorted({u for m in modules if (u := unit_of(m)) is not None})
    print(f"graft.dev.layers: {len(modules)} modules in {len(units)} units, {len(imports)} imports of "
          f"{root.name} modules, {len(problems)} violation(s) under {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
