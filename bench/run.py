"""``python -m bench.run [--only NAME ...] [--quick]``: measure graft's speed and memory figures.

Writes ``bench/results.json`` and ``bench/results.md`` (``--quick`` writes to
``runs/bench/quick/`` instead, so a smoke run never overwrites real results).
``NAME`` is a group (``cache_speedup``, ``loader``, ``block_mix``, ``fetch``, ``ann``,
``build_rss``, ``ablation_positives``) or one of its figures' names. Each group runs even if an
earlier one failed; the exit code is 1 if any group failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import re
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.harness import (
    REPO_ROOT,
    BenchContext,
    Figure,
    GroupResult,
    loadavg,
    log,
    machine_info,
    result_to_json,
)
from bench.report import load_previous, merge, write_results

GROUP_MODULES = {
    "cache_speedup": "bench.cache_speedup",
    "loader": "bench.loader",
    "block_mix": "bench.block_mix",
    "fetch": "bench.fetch",
    "ann": "bench.ann",
    "build_rss": "bench.build_rss",
    "ablation_positives": "bench.ablation_positives",
}


def _module(group: str) -> ModuleType:
    return importlib.import_module(GROUP_MODULES[group])


def _about(mod: ModuleType) -> str:
    """A group's explanation for results.md: its module docstring without the summary line, as Markdown."""
    doc = (mod.__doc__ or "").strip()
    parts = doc.split("\n\n", 1)
    if len(parts) < 2:
        return ""
    paragraphs = [" ".join(p.split()) for p in parts[1].split("\n\n")]
    text = "\n\n".join(paragraphs)
    # reST roles and literals -> Markdown code spans.
    text = re.sub(r":(?:class|meth|func|mod|data|attr):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def resolve_groups(names: list[str] | None) -> list[str]:
    """Groups to run for ``--only`` names (group names or figure names); all groups when None.

    Raises:
        SystemExit: a name is neither a group nor a figure, with the valid names.
    """
    if not names:
        return list(GROUP_MODULES)
    by_figure = {fig: g for g in GROUP_MODULES for fig in _module(g).FIGURES}
    chosen: list[str] = []
    for name in names:
        group = name if name in GROUP_MODULES else by_figure.get(name)
        if group is None:
            raise SystemExit(f"bench: unknown --only name {name!r}; expected a group ({', '.join(GROUP_MODULES)}) "
                             f"or a figure ({', '.join(sorted(by_figure))})")
        if group not in chosen:
            chosen.append(group)
    return [g for g in GROUP_MODULES if g in chosen]


def _failed_result(group: str, mod: ModuleType, err: BaseException) -> GroupResult:
    figures = [Figure(name, float("nan"), goal, op, "not measured: the group failed")
               for name, (op, goal) in mod.FIGURES.items()]
    return GroupResult(group, figures, notes=[f"failed: {type(err).__name__}: {err}"])


def run_groups(groups: list[str], ctx: BenchContext) -> tuple[dict[str, Any], bool]:
    """Run ``groups`` in order; returns (results document without merge, whether all succeeded)."""
    doc: dict[str, Any] = {"figures": [], "machine": machine_info(), "when": _now(), "quick": ctx.quick,
                           "groups": {}}
    ok = True
    for group in groups:
        mod = _module(group)
        log(f"=== {group}: {mod.TITLE}")
        before, t0 = loadavg(), time.perf_counter()
        error = None
        try:
            res = mod.run(ctx)
        except Exception as e:  # noqa: BLE001 - one broken group must not lose the others' measurements
            traceback.print_exc()
            res, error, ok = _failed_result(group, mod, e), f"{type(e).__name__}: {e}", False
        res.seconds = time.perf_counter() - t0
        res.loadavg_before, res.loadavg_after, res.measured_at = before, loadavg(), _now()
        names = [f.name for f in res.figures]
        if error is None and sorted(names) != sorted(mod.FIGURES):
            raise RuntimeError(f"bench group {group} reported figures {names}, expected {list(mod.FIGURES)}")
        entry = {"title": mod.TITLE, **result_to_json(res)}
        if error:
            entry["error"] = error
        doc["groups"][group] = entry
        for f in res.figures:
            doc["figures"].append({**f.to_json(), "group": group, "measured_at": res.measured_at})
        for f in res.figures:
            spread = f", spread {f.spread:.2f}" if f.spread is not None else ""
            log(f"{f.name} = {f.value:.4g} (goal {f.op} {f.goal}: {f.status}{spread})")
    return doc, ok


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Measure graft's speed and memory figures "
                                "(ratios measured within one run); see bench/README.md.")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these groups or figures")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers are not meaningful)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for results.json/results.md (default: bench/, or runs/bench/quick with --quick)")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "bench" / "work",
                   help="scratch folder; generated worlds and datasets are kept here and reused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice, one per core)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    groups = resolve_groups(args.only)
    if args.torch_threads is not None:
        import torch

        if args.torch_threads < 1:
            raise SystemExit(f"bench: --torch-threads must be >= 1, got {args.torch_threads}")
        torch.set_num_threads(args.torch_threads)
    out = args.out or (REPO_ROOT / "runs" / "bench" / "quick" if args.quick else REPO_ROOT / "bench")
    ctx = BenchContext(quick=args.quick, workdir=args.workdir, seed=args.seed)
    doc, ok = run_groups(groups, ctx)
    doc = merge(doc, load_previous(out / "results.json", args.quick), groups, list(GROUP_MODULES))
    about = {g: _about(_module(g)) for g in doc["groups"]}
    jpath, mpath = write_results(out, doc, about)
    met = sum(bool(f["met"]) for f in doc["figures"])
    noisy = sum(f.get("status") == "noisy" for f in doc["figures"])
    log(f"{met}/{len(doc['figures'])} figures meet their goal ({noisy} too noisy to judge); wrote {jpath} and {mpath}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
