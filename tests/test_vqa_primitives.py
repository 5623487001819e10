"""VQA primitives on images with known masks: counts and areas are exact on clean masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graft.vqa import primitives as P
from graft.vqa.parser import parse_question
from graft.vqa.program import parse_program, run_program

GSD = 2.0


def _mask(shape, *boxes):
    m = np.zeros(shape, dtype=bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_count_area_fraction_exists_are_exact_on_a_clean_mask():
    # three separate blocks; the last two touch only at a corner (4-connectivity keeps them apart)
    m = _mask((40, 40), (0, 5, 0, 5), (10, 14, 10, 20), (14, 20, 20, 24))
    r = P.regions_from_mask(m, GSD)
    assert P.count(r) == 3
    assert P.exists(r)
    assert P.area_m2(r) == (25 + 40 + 24) * GSD ** 2
    assert P.fraction(r) == pytest.approx((25 + 40 + 24) / 1600)
    empty = P.regions_from_mask(np.zeros((8, 8), bool), GSD)
    assert not P.exists(empty) and P.count(empty) == 0 and P.area_m2(empty) == 0.0 and P.fraction(empty) == 0.0


def test_regions_below_the_minimum_size_are_dropped():
    m = _mask((30, 30), (0, 10, 0, 10), (20, 22, 20, 22))
    assert P.count(P.regions_from_mask(m, GSD, min_pixels=5)) == 1
    assert P.count(P.regions_from_mask(m, GSD, min_pixels=1)) == 2


def test_size_filter_uses_each_regions_own_area_in_square_metres():
    s = P.PrimitiveSettings(small_max_m2=100.0, large_min_m2=1000.0)
    # 5x5 px = 100 m2 (small), 10x10 = 400 m2 (medium), 20x20 = 1600 m2 (large) at 2 m GSD
    m = _mask((60, 60), (0, 5, 0, 5), (10, 20, 10, 20), (30, 50, 30, 50))
    r = P.regions_from_mask(m, GSD)
    assert [P.area_m2(P.filter_size(r, k, s)) for k in ("small", "medium", "large")] == [100.0, 400.0, 1600.0]


def test_shape_filter_tells_squares_rectangles_and_discs_apart():
    s = P.PrimitiveSettings()
    yy, xx = np.mgrid[:80, :80]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 <= 12 ** 2
    m = _mask((80, 80), (0, 10, 0, 10), (20, 25, 0, 30)) | disc
    r = P.regions_from_mask(m, GSD)
    assert P.area_m2(P.filter_shape(r, "square", s)) == 100 * GSD ** 2
    assert P.area_m2(P.filter_shape(r, "rectangular", s)) == 150 * GSD ** 2
    assert P.area_m2(P.filter_shape(r, "circular", s)) == disc.sum() * GSD ** 2


def test_relations_compare_centroids_and_distance():
    s = P.PrimitiveSettings(next_to_m=10.0)
    a = P.regions_from_mask(_mask((40, 40), (0, 4, 0, 4), (0, 4, 30, 34), (30, 34, 0, 4)), GSD)
    anchor = P.regions_from_mask(_mask((40, 40), (0, 4, 10, 14)), GSD)
    assert P.count(P.filter_relation(a, "left_of", anchor, s)) == 2  # (0,0) and (30,0)
    assert P.count(P.filter_relation(a, "right_of", anchor, s)) == 1
    assert P.count(P.filter_relation(a, "below", anchor, s)) == 1
    assert P.count(P.filter_relation(a, "above", anchor, s)) == 0
    # next to: within 10 m = 5 px of the anchor; only the block at columns 0-3 (7 px gap = 14 m) is not
    assert P.count(P.filter_relation(a, "next_to", anchor, P.PrimitiveSettings(next_to_m=14.0))) == 1
    assert P.count(P.filter_relation(a, "next_to", anchor, s)) == 0


# --------------------------------------------------------------------------- a scene with a known concept map

CONCEPTS = ["building", "road", "water area", "rural area", "urban area"]


def _scene(grid: np.ndarray, patch_px: int = 8) -> P.Scene:
    """Patch features one-hot in the class of each patch (cosine 1 with its own concept, 0 with the others),
    plus a little of "urban area" where there are buildings (left unnormalised so the concept scores stay 1/0)."""
    d = len(CONCEPTS)
    feats = torch.nn.functional.one_hot(torch.as_tensor(grid), d).float()
    feats[..., CONCEPTS.index("urban area")] += 0.3 * feats[..., 0]

    def encode(names):
        return torch.nn.functional.one_hot(torch.as_tensor([CONCEPTS.index(n) for n in names]), d).float()

    g = grid.shape[0]
    return P.Scene(rgb=np.zeros((g * patch_px, g * patch_px, 3), np.uint8), patch_feats=feats,
                   encode_concepts=encode, gsd_m=GSD, vocabulary=tuple(CONCEPTS[:3]),
                   settings=P.PrimitiveSettings(background=()))


# Horizontal bands: bilinear upsampling of a one-hot patch map switches class exactly at patch borders
# (where three classes meet at a corner the argmax may round the corner off, so bands keep this exact).
GRID = np.array([
    [0, 0, 0, 0],
    [1, 1, 1, 1],
    [2, 2, 2, 2],
    [0, 0, 0, 0],
])


def test_scene_masks_follow_the_patch_map_exactly():
    scene = _scene(GRID)
    up = np.kron(GRID, np.ones((8, 8), dtype=int))
    for k, c in enumerate(CONCEPTS[:3]):
        assert (scene.mask(c) == (up == k)).all(), c
    assert P.count(scene.regions("building")) == 2
    assert P.area_m2(scene.regions("road")) == 4 * 64 * GSD ** 2


@pytest.mark.parametrize(("question", "answer"), [
    ("Is there a building?", True),
    ("How many buildings are there?", 2),
    ("How many roads are there?", 1),
    ("Are there more buildings than roads?", True),
    ("Are there less buildings than roads?", False),
    ("Is the number of water areas equal to the number of roads?", True),
    ("What is the area covered by roads?", 4 * 64 * GSD ** 2),
    ("Is it a rural or an urban area?", "urban"),
    ("Is there a building at the top of a water area?", True),
    ("How many buildings at the bottom of a road are there?", 1),
])
def test_programs_answer_exactly_on_a_known_map(question, answer):
    assert run_program(parse_question(question).program, _scene(GRID)) == answer


def test_fraction_and_not_primitives():
    scene = _scene(GRID)
    frac = parse_program({"op": "fraction", "of": {"op": "regions", "concept": "water area"}})
    assert run_program(frac, scene) == pytest.approx(4 / 16)
    neg = parse_program({"op": "not", "of": {"op": "exists", "of": {"op": "regions", "concept": "road"}}})
    assert run_program(neg, scene) is False
