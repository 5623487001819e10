"""The demo's RSVQA-format question set: every answer follows from the label raster."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from graft.demo.vqa_set import write_heldout_vqa
from graft.vqa.parser import parse_question
from graft.vqa.rsvqa import format_answer, load_rsvqa


def test_questions_and_answers_come_from_the_label_raster(tmp_path):
    labels = np.zeros((128, 128), dtype=np.uint8)  # class 0 everywhere ...
    labels[:, 64:] = 1  # ... class 1 on the right half
    labels[8:20, 8:20] = 2  # two blocks of class 2 in the left half
    labels[40:52, 8:20] = 2
    palette = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]], dtype=np.uint8)  # the image shows the labels
    world = SimpleNamespace(labels=labels, rgb=palette[labels], classes=("sea", "forest", "city"),
                            config=SimpleNamespace(gsd=10.0), grid=SimpleNamespace(size=128))
    allowed = np.zeros_like(labels, dtype=bool)
    allowed[:, :64] = True  # only the left half is held out
    root = write_heldout_vqa(world, tmp_path, 48, allowed, n_tiles=1, seed=0)
    data = load_rsvqa(root)
    assert data.variant.name == "hr" and {q.type for q in data.items} == {"presence", "count", "comp", "area"}
    assert all(parse_question(q.question).qtype == q.type for q in data.items)
    window = (data.read_rgb(0)[..., 1] == 255) * 1 + (data.read_rgb(0)[..., 0] == 255) * 2
    assert not (window == 1).any()  # the window lies in the held-out half: no forest
    for q in data.items:
        name = next(c for c in ("sea", "forest", "city") if c in q.question)
        k = ("sea", "forest", "city").index(name)
        if q.type == "presence":
            assert q.answer == ("yes" if (window == k).any() else "no"), q
        elif q.type == "count":
            assert q.answer == str(ndimage.label(window == k)[1]), q
        elif q.type == "area":
            assert q.answer == format_answer((window == k).sum() * 100.0, "area", data.variant), q
