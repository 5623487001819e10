"""The evaluation report: ``report.json``, ``report.md`` and PNG plots, all written atomically.

``report.json`` = ``{"rows": [{"task", "dataset", "model", "metric", "value"}, ...],
"wall_s": {stage: seconds}, "rejections": {...}, "models": {...}, "plots": [...]}``
(docs/formats.md). ``report.md`` renders the rows side by side: one line per
task/dataset/metric, one column per model.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.storage import atomic_path, atomic_write_json, atomic_write_text

TASKS = ("zeroshot_classification", "retrieval", "segmentation", "knn", "linear_probe", "alignment", "vqa")


@dataclass
class Row:
    task: str
    dataset: str
    model: str
    metric: str
    value: float


@dataclass
class Report:
    """Accumulates result rows, stage timings, rejections and plot paths."""

    rows: list[Row] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    rejections: dict[str, dict] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, task: str, dataset: str, model: str, metric: str, value: float) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.rows.append(Row(task, dataset, model, metric, float(value)))

    def add_metrics(self, task: str, dataset: str, model: str, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.add(task, dataset, model, metric, value)

    @contextlib.contextmanager
    def timer(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``wall_s[stage]`` (stages repeat across models and accumulate)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall_s[stage] = round(self.wall_s.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def value(self, task: str, dataset: str, model: str, metric: str) -> float | None:
        for r in self.rows:
            if (r.task, r.dataset, r.model, r.metric) == (task, dataset, model, metric):
                return r.value
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; an undefined value (NaN, e.g. the AP of a class with no positive) becomes null."""
        rows = [dict(asdict(r), value=None if math.isnan(r.value) else r.value) for r in self.rows]
        return {"rows": rows, "wall_s": self.wall_s, "rejections": self.rejections,
                "models": self.models, "plots": self.plots, "notes": self.notes}

    def model_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r.model, None)
        for m in self.models:
            seen.setdefault(m, None)
        return list(seen)

    def table(self, per_class: bool = False) -> tuple[list[str], list[list[str]]]:
        """(header, lines) of the side-by-side table; ``per_class`` selects the ``metric[class]`` rows."""
        models = self.model_names()
        keys: dict[tuple[str, str, str], dict[str, float]] = {}
        for r in self.rows:
            if ("[" in r.metric) != per_class:
                continue
            keys.setdefault((r.task, r.dataset, r.metric), {})[r.model] = r.value
        header = ["task", "dataset", "metric", *models]
        # Grouped by task (in TASKS order), then in the order results were added.
        ordered = sorted(keys.items(), key=lambda kv: TASKS.index(kv[0][0]))
        lines = [[t, d, m, *(_fmt(vals.get(name)) for name in models)] for (t, d, m), vals in ordered]
        return header, lines

    def to_markdown(self) -> str:
        out = ["# Evaluation report", ""]
        if self.models:
            out += ["## Models", ""] + [f"- **{k}**: {v}" for k, v in self.models.items()] + [""]
        header, lines = self.table()
        out += ["## Results", "", _md_table(header, lines), ""]
        header, per_class = self.table(per_class=True)
        if per_class:
            out += ["## Per-class results", "", _md_table(header, per_class), ""]
        if self.plots:
            out += ["## Plots", ""] + [f"- [{Path(p).name}]({p})" for p in self.plots] + [""]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        if any(v.get("total") for v in self.rejections.values()):
            out += ["## Rejected input", ""]
            for name, rej in self.rejections.items():
                if rej.get("total"):
                    counts = ", ".join(f"{k}: {v}" for k, v in rej["counts"].items())
                    out.append(f"- {name}: {rej['total']} ({counts})")
            out.append("")
        out += ["## Wall time (s)", "", _md_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in self.wall_s.items()]),
                ""]
        return "\n".join(out)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` atomically; returns their paths."""
        out_dir = Path(out_dir)
        atomic_write_json(out_dir / "report.json", self.to_json())
        atomic_write_text(out_dir / "report.md", self.to_markdown())
        return out_dir / "report.json", out_dir / "report.md"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "n/a"
    return f"{v:.4f}"


def _md_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    rows += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(rows)


def format_summary(report: Report) -> str:
    """A plain-text side-by-side table for the terminal."""
    header, lines = report.table()
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*ln) for ln in lines])


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion_matrix(conf: np.ndarray, classnames: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows = ground truth), with counts in small sets."""
    plt = _pyplot()
    conf = np.asarray(conf, dtype=np.float64)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    c = len(classnames)
    size = max(4.0, 0.35 * c + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), labels=classnames, rotation=90, fontsize=7)
    ax.set_yticks(range(c), labels=classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if c <= 15:
        for i in range(c):
            for j in range(c):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, Path(path))


def plot_per_class_bars(values: dict[str, np.ndarray], classnames: Sequence[str], title: str, ylabel: str,
                        path: str | Path) -> Path:
    """Grouped bars: one group per class, one bar per model."""
    plt = _pyplot()
    c = len(classnames)
    models = list(values)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * c * max(1, len(models) / 2) + 2), 4))
    x = np.arange(c)
    for i, m in enumerate(models):
        ax.bar(x + (i - (len(models) - 1) / 2) * width, np.nan_to_num(values[m], nan=0.0), width, label=m)
    ax.set_xticks(x, labels=classnames, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_retrieval_grid(queries: Sequence[str], tiles: Sequence[Sequence[np.ndarray]],
                        relevant: Sequence[Sequence[bool]], title: str, path: str | Path) -> Path:
    """One row per text query: its top-k retrieved tiles, framed green if relevant and red if not."""
    plt = _pyplot()
    rows = len(queries)
    cols = max((len(t) for t in tiles), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 1.5, 1.6 * rows + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(tiles[r]):
                ax.imshow(tiles[r][c])
                color = "tab:green" if relevant[r][c] else "tab:red"
                for side in ax.spines.values():
                    side.set_edgecolor(color)
                    side.set_linewidth(3)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(queries[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))


def _palette(n: int) -> np.ndarray:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20", max(n, 1))
    return (np.array([cmap(i)[:3] for i in range(n)]) * 255).astype(np.uint8)


def colorize_mask(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8; ignored pixels black."""
    pal = _palette(num_classes)
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    valid = (mask != ignore_index) & (mask >= 0) & (mask < num_classes)
    out[valid] = pal[mask[valid]]
    return out


def plot_segmentation_overlays(examples: Sequence[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
                               classnames: Sequence[str], title: str, path: str | Path,
                               ignore_index: int = 255) -> Path:
    """Rows of image | ground truth | each model's prediction, with a class legend."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    c = len(classnames)
    models = list(examples[0][2]) if examples else []
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.2 * cols, 2.2 * len(examples) + 0.8), squeeze=False)
    for r, (rgb, gt, preds) in enumerate(examples):
        panels = [("image", rgb), ("ground truth", colorize_mask(gt, c, ignore_index))]
        panels += [(m, colorize_mask(preds[m], c, ignore_index)) for m in models]
        for col, (name, img) in enumerate(panels):
            ax = axes[r][col]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    pal = _palette(c) / 255.0
    fig.legend(handles=[Patch(color=pal[i], label=classnames[i]) for i in range(c)], loc="lower center",
               ncol=min(c, 6), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))
