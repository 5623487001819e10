"""Smoke tests of the bench harness (bench/): ``--quick`` sizes, the results schema, merging, RSS measurement.

The real bench (``make bench``) is not part of the suite; these check that it
runs end to end and writes what bench/README.md promises. The build-RSS group
starts several ``graft`` subprocesses, so its quick run is marked heavy.
"""

from __future__ import annotations

import ast
import datetime as dt
import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bench import ann, run
from bench.build_rss import run_measured
from bench.harness import NOISY_SPREAD, Figure, Samples, measure_steady
from bench.report import render_markdown

QUICK_GROUPS = ["cache_speedup", "loader", "block_mix", "fetch", "ann"]
FIGURE_KEYS = {"name", "value", "goal", "op", "met", "status", "spread", "about", "group", "measured_at"}


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _check_figure(f: dict) -> None:
    assert FIGURE_KEYS <= f.keys(), f
    assert f["op"] in (">=", "<=")
    assert isinstance(f["goal"], (int, float))
    if f["status"] == "noisy":
        # Neither met nor missed: reported with the spread that made it unjudgeable.
        assert f["met"] is None and f["spread"] > NOISY_SPREAD
    elif f["value"] is None:
        assert f["met"] is False
    else:
        assert math.isfinite(f["value"])
        assert f["met"] == (f["value"] >= f["goal"] if f["op"] == ">=" else f["value"] <= f["goal"])
        assert f["status"] == ("met" if f["met"] else "missed")


def test_quick_run_writes_every_figure_with_the_documented_schema(tmp_path, restore_threads):
    out = tmp_path / "out"
    code = run.main(["--quick", "--only", *QUICK_GROUPS, "--out", str(out), "--workdir", str(tmp_path / "work"),
                     "--torch-threads", "1"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert {"figures", "machine", "when", "quick", "groups"} <= doc.keys()
    assert doc["quick"] is True
    dt.datetime.fromisoformat(doc["when"])
    for key in ("cpu_count", "cpu_model", "torch", "torch_threads"):
        assert key in doc["machine"], key
    expected = {name for g in QUICK_GROUPS for name in run._module(g).FIGURES}
    assert {f["name"] for f in doc["figures"]} == expected
    for f in doc["figures"]:
        _check_figure(f)
        assert f["value"] is not None, f"{f['name']} was not measured"
    assert set(doc["groups"]) == set(QUICK_GROUPS)
    assert [f["group"] for f in doc["figures"]] == sorted((f["group"] for f in doc["figures"]), key=QUICK_GROUPS.index)
    for g in doc["groups"].values():
        assert "error" not in g
        assert g["tables"] and all(t["rows"] for t in g["tables"])
    md = (out / "results.md").read_text()
    for name in expected:
        assert f"`{name}`" in md


def test_a_failing_group_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(ann, "run", broken)
    code = run.main(["--quick", "--only", "ann", "--out", str(tmp_path), "--workdir", str(tmp_path / "w")])
    assert code == 1
    doc = json.loads((tmp_path / "results.json").read_text())
    assert "simulated failure" in doc["groups"]["ann"]["error"]
    assert {f["name"] for f in doc["figures"]} == set(ann.FIGURES)
    for f in doc["figures"]:
        _check_figure(f)
        assert f["value"] is None and f["met"] is False


def test_only_accepts_figure_names_and_rejects_unknown_ones():
    assert run.resolve_groups(["ann_speedup", "fetch", "ann_recall_at_10"]) == ["fetch", "ann"]
    assert run.resolve_groups(None) == list(run.GROUP_MODULES)
    with pytest.raises(SystemExit, match="unknown --only name 'nope'"):
        run.resolve_groups(["nope"])


def test_a_partial_run_carries_the_other_groups_over():
    from bench.report import merge

    previous = {"quick": False, "groups": {"ann": {"title": "old ann"}, "fetch": {"title": "old fetch"}},
                "figures": [{"name": "ann_speedup", "group": "ann"}, {"name": "fetch_speedup_c32", "group": "fetch"}]}
    doc = {"groups": {"fetch": {"title": "new fetch"}}, "figures": [{"name": "fetch_speedup_c32", "group": "fetch",
                                                                      "value": 1.0}]}
    merged = merge(doc, previous, ["fetch"], list(run.GROUP_MODULES))
    assert merged["groups"] == {"fetch": {"title": "new fetch"}, "ann": {"title": "old ann"}}
    assert [f["name"] for f in merged["figures"]] == ["fetch_speedup_c32", "ann_speedup"]
    assert merged["figures"][0]["value"] == 1.0


def test_run_measured_reports_each_childs_own_peak_rss(tmp_path):
    big = run_measured([sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                       tmp_path / "big.log")
    small = run_measured([sys.executable, "-c", "b = bytearray(20 * 2**20)"], tmp_path / "small.log")
    assert big.peak_rss_mib >= 300
    # Per child, not the running maximum over all children (which RUSAGE_CHILDREN would give).
    assert small.peak_rss_mib < 200
    with pytest.raises(RuntimeError, match="exited with 3; see .*fail.log"):
        run_measured([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "fail.log")


def test_recall_at_k_counts_overlap():
    import numpy as np

    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert ann.recall_at_k(truth, truth) == 1.0
    assert ann.recall_at_k(np.array([[3, 2, 9], [7, 8, 9]]), truth) == pytest.approx(2 / 6)


@pytest.mark.heavy
def test_build_rss_quick(tmp_path):
    from bench import build_rss
    from bench.harness import BenchContext

    res = build_rss.run(BenchContext(quick=True, workdir=tmp_path))
    (fig,) = res.figures
    assert fig.name == "build_rss_10x_over_1x" and math.isfinite(fig.value) and fig.value > 0
    rows = res.tables[0].rows
    assert [r[0] for r in rows] == ["1x", "2x"]
    assert all(r[4] > 0 and r[7] > 0 for r in rows)


def _rounds(*spreads: float):
    """A measure() whose successive rounds have the given IQR/median spreads (median 1), and its call count."""
    calls = []

    def measure() -> Samples:
        s = spreads[len(calls)]
        calls.append(s)
        return Samples([1.0 - s, 1.0 - s / 2, 1.0, 1.0 + s / 2, 1.0 + s])  # quartiles 1 -/+ s/2: IQR = s

    return measure, calls


def test_a_steady_round_is_reported_without_re_measuring():
    measure, calls = _rounds(0.05, 0.9)
    steady = measure_steady(measure, lambda r: r.rel_spread)
    assert calls == [0.05] and not steady.noisy and steady.spread == pytest.approx(0.05)


def test_a_noisy_round_is_re_measured_until_steady():
    measure, calls = _rounds(0.47, 0.3, 0.08)
    steady = measure_steady(measure, lambda r: r.rel_spread)
    assert calls == [0.47, 0.3, 0.08]
    assert not steady.noisy and steady.result.rel_spread == pytest.approx(0.08)
    assert steady.spreads == pytest.approx([0.47, 0.3, 0.08])


def test_a_figure_that_stays_noisy_is_reported_as_noisy_with_its_least_spread_round():
    measure, calls = _rounds(0.47, 0.25, 0.6, 0.01)
    steady = measure_steady(measure, lambda r: r.rel_spread, max_rounds=3)
    assert len(calls) == 3 and steady.noisy and steady.spread == pytest.approx(0.25)
    # A value far below its goal is still not "missed": one disturbed sample decides nothing.
    fig = Figure("x_speedup", 0.32, 0.8, ">=", "about", spread=steady.spread, noisy=steady.noisy)
    j = fig.to_json()
    assert j["met"] is None and j["status"] == "noisy" and j["spread"] == pytest.approx(0.25)
    steady_fig = Figure("y_speedup", 0.32, 0.8, ">=", "about", spread=0.05)
    assert steady_fig.to_json()["met"] is False and steady_fig.status == "missed"
    doc = {"figures": [{**j, "group": "g"}, {**steady_fig.to_json(), "group": "g"}], "machine": {}, "when": "now",
           "groups": {"g": {"title": "G"}}}
    md = render_markdown(doc, {})
    assert "| `x_speedup` | 0.32 | >= 0.8 | noisy | 0.25 |" in md
    assert "too noisy to judge: spread 0.25" in md and "| `y_speedup` | 0.32 | >= 0.8 | **no** |" in md


@pytest.mark.heavy
def test_ablation_positives_quick(tmp_path):
    from bench import ablation_positives
    from bench.harness import BenchContext

    res = ablation_positives.run(BenchContext(quick=True, workdir=tmp_path))
    assert sorted(f.name for f in res.figures) == sorted(ablation_positives.FIGURES)
    assert all(0.0 <= f.value <= 1.0 for f in res.figures)


def test_every_graft_name_the_bench_imports_exists():
    """Why: `make bench` imported `train_binary_filter` from where it lived before a move; the import sits inside
    a function that only the full (heavy) bench reaches, so nothing in CI noticed and build_rss came out NaN."""
    missing = []
    for path in sorted((Path(__file__).parents[1] / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graft"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(
                            f"{node.module}.{alias.name}") is None:
                        missing.append(f"{path.name}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, missing
