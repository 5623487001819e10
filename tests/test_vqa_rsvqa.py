"""RSVQA-LR and -HR layouts on generated fixtures, answer vocabularies and scoring, and the parser's
coverage of every question template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graft.evaluation.datasets import DatasetNotFoundError
from graft.vqa.parser import parse_coverage, parse_question
from graft.vqa.rsvqa import (
    AREA_BUCKETS,
    LR_COUNT_BUCKETS,
    VARIANTS,
    format_answer,
    load_rsvqa,
    score,
    write_rsvqa_split,
)

TEMPLATES = Path(__file__).parent / "data" / "rsvqa_question_templates.txt"


def _images(n: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(n)}


def _deactivate(path: Path, key: str, ids: set[int]) -> None:
    doc = json.loads(path.read_text())
    for row in doc[key]:
        if row["id"] in ids:
            row["active"] = False
    path.write_text(json.dumps(doc))


def test_lr_layout_buckets_counts_and_drops_inactive_entries(tmp_path):
    root = write_rsvqa_split(tmp_path / "lr", "lr", "test", _images(2), [
        (0, "presence", "Is there a building?", "yes"),
        (0, "count", "How many buildings are there?", "37"),
        (1, "comp", "Are there more roads than buildings?", "no"),
        (1, "rural_urban", "Is it a rural or an urban area?", "rural"),
        (1, "count", "How many roads are there?", "0"),
        (1, "presence", "Is there a road?", "no"),
    ])
    assert sorted(p.name for p in root.iterdir()) == [
        "Images_LR", "LR_split_test_answers.json", "LR_split_test_images.json", "LR_split_test_questions.json"]
    _deactivate(root / "LR_split_test_questions.json", "questions", {5})  # not part of the split: skipped
    _deactivate(root / "LR_split_test_answers.json", "answers", {4})  # a question without its answer: rejected
    data = load_rsvqa(root, split="test")
    assert data.variant.name == "lr" and data.gsd_m == 10.0
    assert [(q.type, q.answer) for q in data.items] == [
        ("presence", "yes"), ("count", "between 11 and 100"), ("comp", "no"), ("rural_urban", "rural")]
    assert dict(data.rejections.counts) == {"no_active_answer": 1}
    assert data.read_rgb(1).shape == (16, 16, 3)
    assert len(data.subset_images([1])) == 2


def test_hr_layout_keeps_exact_counts_and_buckets_areas(tmp_path):
    root = write_rsvqa_split(tmp_path / "hr", "hr", "test_phili", _images(2), [
        (0, "count", "How many buildings are there?", "4"),
        (0, "area", "What is the area covered by buildings?", "537m2"),
        (1, "area", "What is the area covered by roads?", "0m2"),
        (1, "presence", "Is there a road?", "no"),
        (1, "comp", "Is the number of roads equal to the number of buildings?", "yes"),
    ])
    (root / "Data" / "1.tif").unlink()  # a missing image: its questions are rejected with the reason
    data = load_rsvqa(root, name="hr", split="test_phili", gsd_m=0.3)
    assert data.variant.name == "hr" and data.gsd_m == 0.3
    assert [(q.type, q.answer) for q in data.items] == [("count", "4"), ("area", "between 101m2 and 1000m2")]
    assert dict(data.rejections.counts) == {"missing_image": 3}


def test_bad_rows_are_counted_and_missing_layouts_say_what_to_get(tmp_path):
    root = write_rsvqa_split(tmp_path / "hr", "hr", "test", _images(1), [
        (0, "area", "What is the area covered by roads?", "a lot"),
        (0, "colour", "What colour is the roof?", "red"),
        (0, "presence", "Is there a road?", "yes"),
    ])
    data = load_rsvqa(root)
    assert len(data) == 1
    assert dict(data.rejections.counts) == {"bad_answer": 1, "unknown_question_type": 1}
    with pytest.raises(DatasetNotFoundError, match="zenodo"):
        load_rsvqa(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="USGS_split_val_questions.json"):
        load_rsvqa(root, split="val")
    (root / "USGS_split_test_images.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="USGS_split_test_images.json"):
        load_rsvqa(root)


@pytest.mark.parametrize(("value", "qtype", "variant", "expected"), [
    (True, "presence", "lr", "yes"), (False, "comp", "hr", "no"),
    (0, "count", "lr", "0"), (10, "count", "lr", "between 1 and 10"), (11, "count", "lr", "between 11 and 100"),
    (1000, "count", "lr", "between 101 and 1000"), (1001, "count", "lr", "more than 1000"),
    (7, "count", "hr", "7"),
    (0.2, "area", "hr", "0m2"), (10.4, "area", "hr", "between 1m2 and 10m2"), (100.0, "area", "hr",
                                                                              "between 11m2 and 100m2"),
    (101.0, "area", "hr", "between 101m2 and 1000m2"), (5e4, "area", "hr", "more than 1000m2"),
    ("urban", "rural_urban", "lr", "urban"),
])
def test_answers_land_in_rsvqas_vocabulary(value, qtype, variant, expected):
    out = format_answer(value, qtype, VARIANTS[variant])
    assert out == expected
    if qtype == "area":
        assert out in AREA_BUCKETS
    if qtype == "count" and variant == "lr":
        assert out in LR_COUNT_BUCKETS


def test_scores_per_type_overall_and_average():
    m = score(["presence", "presence", "count", "comp"], [True, False, True, True])
    assert m == {"accuracy[presence]": 0.5, "accuracy[comp]": 1.0, "accuracy[count]": 1.0,
                 "overall_accuracy": 0.75, "average_accuracy": pytest.approx(2.5 / 3)}


def test_parser_covers_every_rsvqa_template_and_finds_its_type():
    rows = [line.split("|") for line in TEMPLATES.read_text().splitlines() if line and not line.startswith("#")]
    assert {t for t, _ in rows} == {"presence", "comp", "count", "area", "rural_urban"}
    share, refused = parse_coverage([q for _, q in rows])
    assert share == 1.0, refused
    for qtype, question in rows:
        assert parse_question(question).qtype == qtype, question


def test_parser_reports_what_it_cannot_parse():
    share, refused = parse_coverage(["Is there a road?", "What colour is the roof?", "Describe the image."])
    assert share == pytest.approx(1 / 3)
    assert refused == {"unparsed": 2}
    node = parse_question("Is the number of small buildings at the left of a road equal to the number of "
                          "circular water areas?").program.tree
    assert node["left"]["of"] == {"op": "relate", "relation": "left_of",
                                  "of": {"op": "regions", "concept": "building", "size": "small"},
                                  "to": {"op": "regions", "concept": "road"}}
    assert node["right"]["of"] == {"op": "regions", "concept": "water area", "shape": "circular"}
