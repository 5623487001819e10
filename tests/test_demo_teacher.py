"""The demo's CLIP teacher: trained on ground photos only, loads like any CLIP, and is fooled by overhead tiles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from graft.demo.teacher import (
    TEACHER_MODEL,
    find_teacher,
    photo_zero_shot_accuracy,
    read_teacher_report,
    tile_zero_shot_accuracy,
    train_teacher,
)
from graft.demo.world import CLASSES, WorldConfig, generate_world
from graft.models.clip_tower import MODEL_CONFIG_DIR, ClipSpec, load_clip

# Classes whose overhead palette is borrowed from another class's ground palette (see graft.demo.world).
DERANGED = ("forest", "farmland", "city", "desert")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig.quick(seed=0))


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory):
    # threads=1: on a shared 2-core machine a 2-thread torch step stalls whenever the other core is busy.
    spec = train_teacher(world, tmp_path_factory.mktemp("teacher") / "clip", steps=80, batch_size=64, seed=0,
                         threads=1, progress=False)
    return spec, load_clip(spec), read_teacher_report(spec.model)


def test_teacher_is_a_loadable_open_clip_folder(teacher):
    spec, bundle, report = teacher
    assert spec.model.startswith("local-dir:") and spec.pretrained is None
    folder = spec.model.removeprefix("local-dir:")
    cfg = json.loads(Path(folder, "open_clip_config.json").read_text())
    assert cfg["model_cfg"] == json.loads((MODEL_CONFIG_DIR / f"{TEACHER_MODEL}.json").read_text())
    assert {"mean", "std"} <= set(cfg["preprocess_cfg"])
    weights = load_file(f"{folder}/open_clip_model.safetensors")
    state = bundle.model.state_dict()
    assert set(weights) == set(state) and all(np.array_equal(weights[k], state[k]) for k in weights)
    assert bundle.image_size == cfg["model_cfg"]["vision_cfg"]["image_size"]
    assert bundle.embed_dim == cfg["model_cfg"]["embed_dim"]
    assert ClipSpec(model=spec.model, pretrained=None).fingerprint() == spec.fingerprint()


def test_teacher_classifies_ground_photos_zero_shot(teacher, world):
    _, bundle, report = teacher
    # 80 steps on the quick world; the full demo world trains longer (measured there: 1.0 held-out).
    assert report.heldout_photos >= 60 and report.heldout_accuracy >= 0.8, report.heldout_accuracy
    # The report was measured on the reloaded folder: recomputing it gives the same number.
    assert photo_zero_shot_accuracy(bundle, world, photo_ids=report.heldout_ids) == report.heldout_accuracy


def test_overhead_tiles_look_different_from_ground_photos(teacher, world):
    _, bundle, report = teacher
    tile_acc, confusion = tile_zero_shot_accuracy(bundle, world, tile_size=64, per_class=30)
    assert confusion.sum(1).min() >= 15  # every class has enough pure 64 px windows in the quick world
    assert tile_acc <= report.heldout_accuracy - 0.3, (tile_acc, confusion)
    per_class = confusion.diagonal() / confusion.sum(1)
    for name in DERANGED:
        assert per_class[CLASSES.index(name)] < 0.5, (name, confusion)


def test_training_is_deterministic_for_a_seed(world, tmp_path):
    a = train_teacher(world, tmp_path / "a", steps=3, batch_size=32, seed=5, threads=1, progress=False)
    b = train_teacher(world, tmp_path / "b", steps=3, batch_size=32, seed=5, threads=1, progress=False)
    wa = load_file(f"{a.model.removeprefix('local-dir:')}/open_clip_model.safetensors")
    wb = load_file(f"{b.model.removeprefix('local-dir:')}/open_clip_model.safetensors")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert read_teacher_report(a.model).heldout_ids == read_teacher_report(b.model).heldout_ids


def test_a_teacher_is_found_again_only_for_the_same_recipe_and_world(world, tmp_path):
    """A re-run demo reuses its teacher (retraining it would invalidate the embedding cache and the runs)."""
    spec = train_teacher(world, tmp_path / "t", steps=2, batch_size=32, seed=5, threads=1, progress=False)
    assert find_teacher(world, tmp_path / "t", steps=2, batch_size=32, seed=5) == spec
    # threads and progress do not change the weights; every recipe argument, defaults included, does.
    assert find_teacher(world, tmp_path / "t", steps=2, batch_size=32, seed=5, threads=2, progress=True) == spec
    assert find_teacher(world, tmp_path / "t", steps=3, batch_size=32, seed=5) is None
    assert find_teacher(world, tmp_path / "t", steps=2, batch_size=32, seed=5, lr=1e-3) is None
    other = replace(world, config=replace(world.config, seed=world.config.seed + 1))
    assert find_teacher(other, tmp_path / "t", steps=2, batch_size=32, seed=5) is None
    assert find_teacher(world, tmp_path / "absent", steps=2, batch_size=32, seed=5) is None


def test_bad_arguments_are_explained(world, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        train_teacher(world, tmp_path / "x", steps=1, batch_size=10_000, progress=False)
    with pytest.raises(ValueError, match="holdout_frac"):
        train_teacher(world, tmp_path / "x", steps=1, holdout_frac=0.7, progress=False)
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        read_teacher_report(tmp_path)
