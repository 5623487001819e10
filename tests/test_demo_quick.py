"""The reduced demo (`graft demo --quick`): the whole flow, and the paper's ordering in miniature.

GRAFT (aligned through ground photos only) must beat the teacher applied directly to the tiles,
which must in turn beat chance, on held-out geographic blocks.
"""

from __future__ import annotations

import json

import pytest

from graft.demo.run import run_demo

pytestmark = pytest.mark.slow


def _value(rows, task, dataset, model, metric):
    hits = [r["value"] for r in rows if (r["task"], r["dataset"], r["model"], r["metric"]) == (task, dataset, model, metric)]
    assert len(hits) == 1, f"expected one {task}/{dataset}/{model}/{metric} row, found {len(hits)}"
    return hits[0]


def test_graft_beats_baseline_beats_chance(quick_demo):
    out, doc = quick_demo
    rows = doc["rows"]
    n_classes = len((out / "heldout" / "classnames.txt").read_text().split("\n")) - 1
    chance = 1.0 / n_classes
    graft = _value(rows, "zeroshot_classification", "heldout[ground]", "graft-image", "top1")
    base = _value(rows, "zeroshot_classification", "heldout[ground]", "baseline", "top1")
    assert graft > base > chance, (graft, base, chance)
    seg_graft = _value(rows, "segmentation", "heldout-seg[ground]", "graft-pixel", "miou")
    seg_base = _value(rows, "segmentation", "heldout-seg[ground]", "baseline", "miou")
    assert seg_graft > seg_base, (seg_graft, seg_base)
    ret_graft = _value(rows, "retrieval", "heldout[ground]", "graft-image", "map")
    ret_base = _value(rows, "retrieval", "heldout[ground]", "baseline", "map")
    assert ret_graft > ret_base, (ret_graft, ret_base)


def test_vqa_programs_over_the_pixel_model_beat_the_baseline(quick_demo):
    """RSVQA-format questions on held-out tiles: the pixel model answers through the same programs as the
    teacher's patch tokens, clearly better overall and better on presence. (The quick demo trains a fraction
    of the full demo's steps; the full demo's report holds the issue's targets: +15 points, presence >= .85.)"""
    _, doc = quick_demo
    rows = doc["rows"]
    graft = _value(rows, "vqa", "heldout-vqa", "graft-pixel", "overall_accuracy")
    base = _value(rows, "vqa", "heldout-vqa", "baseline", "overall_accuracy")
    assert graft >= base + 0.10, (graft, base)
    presence = _value(rows, "vqa", "heldout-vqa", "graft-pixel", "accuracy[presence]")
    assert presence > _value(rows, "vqa", "heldout-vqa", "baseline", "accuracy[presence]")
    assert _value(rows, "vqa", "heldout-vqa", "graft-pixel", "parsed_share") == 1.0


def test_report_and_outputs_follow_the_documented_layout(quick_demo):
    out, doc = quick_demo
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["rows"] == doc["rows"]
    models = {r["model"] for r in on_disk["rows"]}
    tasks = {r["task"] for r in on_disk["rows"]}
    assert models == {"graft-image", "graft-pixel", "baseline"}
    assert tasks == {"zeroshot_classification", "retrieval", "segmentation", "knn", "linear_probe", "alignment", "vqa"}
    assert set(on_disk["wall_s"]) >= {"world", "teacher", "dataset", "embed", "train", "eval", "export", "total"}
    assert (out / "report.md").read_text().count("|") > 20
    assert (out / "dataset" / "manifest.parquet").is_file()
    assert (out / "heldout" / "templates.txt").read_text().strip() == "a photo of a {}."
    assert (out / "export" / "open_clip_config.json").is_file()


@pytest.mark.heavy
def test_two_runs_give_the_same_numbers(quick_demo, tmp_path):
    """Seeds and thread count are fixed, so a second run reproduces every reported value exactly."""
    _, first = quick_demo
    second = run_demo(tmp_path / "again", quick=True, seed=0)
    assert second["rows"] == first["rows"]
