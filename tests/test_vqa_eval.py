"""The vqa task of graft eval on an RSVQA-layout set, and the graft vqa command, with tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_data import make_checkpoint, tiny_clip_spec

from graft.cli import main
from graft.evaluation.run import evaluate
from graft.vqa.rsvqa import write_rsvqa_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vqa_models")
    spec = tiny_clip_spec(tmp)
    return spec, make_checkpoint(tmp, spec, "pixel", 1)


def test_eval_scores_every_question_for_every_model(models, tmp_path):
    spec, pixel = models
    rng = np.random.default_rng(0)
    images = {i: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)}
    questions = [(i, t, q, a) for i in images for t, q, a in [
        ("presence", "Is there a road?", "yes"), ("comp", "Are there more roads than buildings?", "no"),
        ("count", "How many buildings are there?", "2"), ("area", "What is the area covered by roads?", "250m2")]]
    questions.append((0, "presence", "Describe the roof colours.", "no"))  # unparsable: refused, scored wrong
    root = write_rsvqa_split(tmp_path / "hr", "hr", "test", images, questions)
    result = evaluate({"models": [{"name": "graft-pixel", "checkpoint": str(pixel)}], "baseline": spec.model_dump(),
                       "benchmarks": [{"name": "rsvqa-hr", "type": "rsvqa", "root": str(root)}],
                       "out_dir": str(tmp_path / "eval"), "device": "cpu", "workers": 0, "plots": False})
    rows = {(r["model"], r["metric"]): r["value"] for r in result["rows"] if r["task"] == "vqa"}
    for model in ("graft-pixel", "baseline"):
        assert rows[(model, "questions")] == 13
        assert rows[(model, "parsed_share")] == pytest.approx(12 / 13)
        for m in ("overall_accuracy", "average_accuracy", "accuracy[presence]", "accuracy[comp]",
                  "accuracy[count]", "accuracy[area]"):
            assert 0.0 <= rows[(model, m)] <= 1.0
    assert result["rejections"]["rsvqa-hr"]["counts"] == {"program_unparsed": 1}
    assert "| vqa |" in (tmp_path / "eval" / "report.md").read_text()


def test_graft_vqa_answers_one_question(models, tmp_path, capsys):
    _, pixel = models
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    rc = main(["vqa", str(tmp_path / "t.png"), "What is the area covered by roads?", "--model", str(pixel),
               "--gsd", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert '"op": "area"' in out and "m^2" in out and "road:" in out
    rc = main(["vqa", str(tmp_path / "t.png"), "Describe the roof colours.", "--model", str(pixel)])
    assert rc == 1
    assert "refused:  unparsed" in capsys.readouterr().out
