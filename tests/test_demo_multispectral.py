"""`graft demo --multispectral` (`make demo-ms`): the issue's targets, measured end to end on the quick world.

Heavy (a run and its re-run took 127 s on 2 quiet cores): run with
``pytest -m heavy tests/test_demo_multispectral.py``.
"""

from __future__ import annotations

import pytest

from graft.demo.multispectral import run_multispectral_demo


@pytest.mark.heavy
def test_nir_separates_the_rgb_lookalike_pair_without_costing_overall_top1(tmp_path):
    doc = run_multispectral_demo(tmp_path / "ms", quick=True, seed=0)
    rows = {r["model"]: r for r in doc["rows"]}
    rgb, ms = rows["rgb"], rows["rgb+nir"]
    assert ms["bands"] == ["R", "G", "B", "N"] and rgb["bands"] == ["R", "G", "B"]
    assert doc["pair_tiles"] >= 20
    assert ms["top1_pair"] >= 0.85, doc["rows"]
    assert abs(rgb["top1_pair"] - 0.5) <= 0.15, doc["rows"]  # the RGB model cannot tell the pair apart
    assert ms["top1_all"] >= rgb["top1_all"], doc["rows"]
    assert (tmp_path / "ms" / "report.md").read_text().count("rgb+nir") == 1

    # Re-running resumes: the teacher is reused and both runs are finished, so the numbers are the same.
    again = run_multispectral_demo(tmp_path / "ms", quick=True, seed=0)
    assert again["rows"] == doc["rows"]
    assert not (tmp_path / "ms" / "train-rgb" / "previous-1").exists()
