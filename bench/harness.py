"""What every bench group shares: figures, timing statistics, the run context and the machine's facts.

A *group* (``bench/cache_speedup.py`` ...) measures one or more *figures*. A
figure is always a ratio of two quantities measured in the same run on the
same machine (or a curve of such ratios), never an absolute time compared
with a number written in the code, so it means the same on a laptop and on a
server, and a busy machine moves it far less than it moves raw timings.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MODEL_CONFIG_DIR = BENCH_DIR / "model_configs"

BENCH_VIT = "graft-bench-vit"
"""The bench's ViT (224 px, patch 16, width 256, 4 layers): see ``bench/README.md`` for why this size."""


def register_bench_models() -> None:
    """Register ``bench/model_configs/*.json`` with open_clip (after graft's own configs).

    DataLoader workers are forked, so they inherit the registration.
    """
    import open_clip

    import graft.models.clip_tower  # noqa: F401 - registers graft's configs first; add_model_config rescans all

    if str(MODEL_CONFIG_DIR) not in map(str, getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def log(msg: str) -> None:
    """One progress line on stderr (tqdm bars go there too)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Figure:
    """One headline number and its goal.

    Attributes:
        name: stable identifier (see ``bench/README.md``).
        value: the measured ratio (NaN if it could not be measured).
        goal: the threshold.
        op: ``>=`` (higher is better) or ``<=`` (lower is better).
        about: one line saying what the number is.
    """

    name: str
    value: float
    goal: float
    op: Literal[">=", "<="]
    about: str
    spread: float | None = None  # IQR/median of the samples behind a timed figure (None: not a timing)
    noisy: bool = False  # still too noisy after re-measuring (see measure_steady): neither met nor missed

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None for a noisy figure (one disturbed sample decides nothing)."""
        if self.noisy:
            return None
        if not math.isfinite(self.value):
            return False
        return self.value >= self.goal if self.op == ">=" else self.value <= self.goal

    @property
    def status(self) -> str:
        return "noisy" if self.noisy else ("met" if self.met else "missed")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": _round(self.value), "goal": self.goal, "op": self.op,
                "met": self.met, "status": self.status, "spread": _round(self.spread), "about": self.about}


@dataclass
class Table:
    """A curve or breakdown rendered as a Markdown table (and stored as rows in the JSON)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": [[_round(v) for v in r] for r in self.rows]}


@dataclass
class GroupResult:
    """What one group measured: its figures, its tables, free-form detail and notes."""

    group: str
    figures: list[Figure]
    tables: list[Table] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    loadavg_before: tuple[float, float, float] | None = None
    loadavg_after: tuple[float, float, float] | None = None
    measured_at: str = ""


@dataclass
class Samples:
    """Repeated measurements of one quantity, summarised robustly (median and inter-quartile spread)."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    def quartiles(self) -> tuple[float, float]:
        if len(self.values) < 2:
            v = self.values[0] if self.values else math.nan
            return v, v
        q = statistics.quantiles(self.values, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def rel_spread(self) -> float:
        """Inter-quartile range over the median: how noisy the measurement was (0.05 = 5 %)."""
        q1, q3 = self.quartiles()
        return (q3 - q1) / self.median if self.median else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"n": len(self.values), "median": _round(self.median), "min": _round(min(self.values, default=math.nan)),
                "max": _round(max(self.values, default=math.nan)), "iqr_over_median": _round(self.rel_spread),
                "values": [_round(v) for v in self.values]}


NOISY_SPREAD = 0.2
"""IQR/median above which a timed figure's samples are too disturbed to judge (a shared machine's bursts)."""
MAX_ROUNDS = 3
"""Measurements of a noisy figure, the first included, before it is reported as noisy."""


@dataclass
class Steady:
    """The outcome of :func:`measure_steady`: the round reported and the spread of every round taken."""

    result: Any
    spread: float
    spreads: list[float]

    @property
    def noisy(self) -> bool:
        return not (math.isfinite(self.spread) and self.spread <= NOISY_SPREAD)


def measure_steady(measure: Callable[[], Any], spread_of: Callable[[Any], float],
                   threshold: float = NOISY_SPREAD, max_rounds: int = MAX_ROUNDS) -> Steady:
    """Measure until one round's samples are steady (spread <= ``threshold``), at most ``max_rounds`` times.

    A burst of load from another process widens a round's spread; a later round usually misses it. The
    round reported is the first steady one, or else the least spread one, then flagged noisy so that
    the figure is shown with its spread instead of as met or missed.
    """
    rounds: list[tuple[Any, float]] = []
    for i in range(max_rounds):
        result = measure()
        spread = spread_of(result)
        rounds.append((result, spread))
        if math.isfinite(spread) and spread <= threshold:
            break
        if i + 1 < max_rounds:
            log(f"spread {spread:.2f} > {threshold}: re-measuring ({i + 2}/{max_rounds})")
    finite = [r for r in rounds if math.isfinite(r[1])]
    best = min(finite, key=lambda r: r[1]) if finite else rounds[-1]
    return Steady(best[0], best[1], [r[1] for r in rounds])


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Samples:
    """Wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Samples(out)


@dataclass
class BenchContext:
    """Settings every group receives.

    Attributes:
        quick: shrink every figure to seconds (for the smoke test); numbers are then meaningless.
        workdir: scratch space for generated inputs; reusable inputs (worlds, datasets) are kept
            there between runs, keyed by their parameters.
        seed: seeds every generator.
    """

    quick: bool
    workdir: Path
    seed: int = 0

    def sub(self, name: str) -> Path:
        path = self.workdir / ("quick" if self.quick else "full") / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Facts a reader needs to interpret the figures: CPUs, memory, library versions, load."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "numpy": np.__version__,
        "loadavg_at_start": loadavg(),
    }
    for mod in ("faiss", "open_clip", "rasterio", "webdataset"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "unknown")
        except ImportError:
            info[mod] = None
    from graft import __version__ as graft_version

    info["graft"] = graft_version
    return info


def _round(v: Any) -> Any:
    """Floats to 4 significant digits for the JSON (the measurements are not more precise than that)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return float(f"{v:.4g}")
    return v


def result_to_json(res: GroupResult) -> dict[str, Any]:
    """The JSON form of a group's result (figures are listed separately, at the top level)."""
    d = asdict(res)
    d.pop("figures")
    d.pop("group")
    d["tables"] = [t.to_json() for t in res.tables]
    d["seconds"] = round(res.seconds, 1)
    return d
