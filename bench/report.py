"""``results.json`` and ``results.md``: the bench's figures, the machine they were measured on, and the curves.

``results.json``::

    {"figures": [{"name", "value", "goal", "op", "met", "status", "spread", "about", "group", "measured_at"}, ...],
     "machine": {"cpu_count", "cpu_model", "torch", ...},
     "when": ISO time of this run,
     "quick": false,
     "groups": {GROUP: {"title", "tables", "detail", "notes", "seconds", "loadavg_before",
                        "loadavg_after", "measured_at", "error"}}}

A run restricted with ``--only`` carries the other groups over from the
previous ``results.json`` (each figure keeps its own ``measured_at``), so the
file always lists every figure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from graft.storage import atomic_write_json, atomic_write_text


def load_previous(path: Path, quick: bool) -> dict[str, Any] | None:
    """The previous results at ``path`` if they exist, parse, and were made in the same mode (quick or not)."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("quick") != quick or not isinstance(doc.get("groups"), dict):
        return None
    return doc


def merge(doc: dict[str, Any], previous: dict[str, Any] | None, ran: list[str], order: list[str]) -> dict[str, Any]:
    """Add the groups of ``previous`` that this run did not measure; order groups and figures as ``order``."""
    if previous:
        for group, entry in previous["groups"].items():
            if group not in ran and group in order:
                doc["groups"][group] = entry
                doc["figures"].extend(f for f in previous.get("figures", []) if f.get("group") == group)
    rank = {g: i for i, g in enumerate(order)}
    doc["groups"] = dict(sorted(doc["groups"].items(), key=lambda kv: rank.get(kv[0], len(rank))))
    doc["figures"].sort(key=lambda f: rank.get(f.get("group"), len(rank)))
    return doc


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def _status(f: dict[str, Any]) -> str:
    if f.get("status") == "noisy":
        return f"too noisy to judge: spread {_fmt(f.get('spread'))} after re-measuring"
    return "met" if f["met"] else "NOT met"


def _met(f: dict[str, Any]) -> str:
    if f.get("status") == "noisy":
        return "noisy"
    return "yes" if f["met"] else "**no**"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(doc: dict[str, Any], about: dict[str, str]) -> str:
    """The Markdown report: summary table, machine, then one section per group with its explanation."""
    m = doc["machine"]
    lines = [
        "# graft bench results",
        "",
        "Written by `make bench` (`python -m bench.run`); do not edit by hand. What each figure means and why "
        "its goal is what it is: `bench/README.md`.",
        "",
        f"Run at {doc['when']} on {m.get('cpu_model')} ({m.get('cpus_usable')} usable CPUs, "
        f"{m.get('mem_total_gib')} GiB), torch {m.get('torch')}, torch threads: {m.get('torch_threads')}"
        f"{', **quick mode: numbers are not meaningful**' if doc.get('quick') else ''}.",
        "",
        "## Figures",
        "",
        _table(["figure", "value", "goal", "met", "spread (IQR/median)", "measured at"],
               [[f"`{f['name']}`", f["value"], f"{f['op']} {f['goal']}", _met(f), f.get("spread"),
                 f.get("measured_at", "")] for f in doc["figures"]]),
        "",
        "## Machine",
        "",
        _table(["fact", "value"], [[k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else v]
                                   for k, v in m.items()]),
        "",
    ]
    for group, g in doc["groups"].items():
        lines += [f"## {g.get('title', group)}", ""]
        if about.get(group):
            lines += [about[group], ""]
        figs = [f for f in doc["figures"] if f.get("group") == group]
        for f in figs:
            lines.append(f"- `{f['name']}` = **{_fmt(f['value'])}** (goal {f['op']} {f['goal']}, "
                         f"{_status(f)}): {f.get('about', '')}")
        if figs:
            lines.append("")
        if g.get("error"):
            lines += [f"**This group failed:** `{g['error']}`", ""]
        for t in g.get("tables", []):
            lines += [f"**{t['title']}**", "", _table(t["columns"], t["rows"]), ""]
        for note in g.get("notes", []):
            lines.append(f"- {note}")
        la, lb = g.get("loadavg_before"), g.get("loadavg_after")
        lines += ["", f"_Measured at {g.get('measured_at', '?')} in {g.get('seconds', '?')} s; load average "
                      f"(1/5/15 min) before {la}, after {lb}._", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_results(out_dir: Path, doc: dict[str, Any], about: dict[str, str]) -> tuple[Path, Path]:
    """Atomically write ``results.json`` and ``results.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / "results.json", out_dir / "results.md"
    atomic_write_json(jpath, doc)
    atomic_write_text(mpath, render_markdown(doc, about))
    return jpath, mpath
