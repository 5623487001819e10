"""Why: a run did not say whether it learned.

A short run can end far from converged while its loss looks like any other run's. Every run now
measures a label-free validation signal (pair retrieval and mutual-kNN alignment on the val split),
logs it with the loss, keeps it with each checkpoint, and ends with a verdict and a hint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from graft.dataset.layout import tile_shards
from graft.dataset.shards import iter_tile_samples
from graft.imagery import center_crop_offset, inside_crop
from graft.models.checkpoint import list_checkpoints, read_meta
from graft.models.clip_tower import load_clip
from graft.training.trainer import train

from .conftest import train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ON = {"enabled": True, "every": 4}


def test_under_trained_run_says_the_signal_was_still_rising(tiny_world, tmp_path):
    cfg = train_config(tiny_world, tmp_path / "run", optim={"lr": 3e-4, "min_lr_ratio": 1.0},
                       train={"max_steps": 24, "ckpt_every": 12}, validation=ON)
    summary = train(cfg)
    assert summary.validation is not None and "still rising" in summary.validation
    assert "train longer" in summary.validation and "train.max_steps" in summary.validation
    lines = [json.loads(x) for x in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val_score" in x]
    assert [x["step"] for x in val] == [4, 8, 12, 16, 20, 24]
    assert all({"val_recall@1", "val_recall@5", "val_alignment"} <= set(x) for x in val)
    # Every val tile (fewer than validation.max_tiles) that holds a photo in its centre crop, the geometry
    # of the image-level positives.
    assert val[0]["val_tiles"] == _val_tiles_with_a_photo_in_centre_crop(tiny_world)
    # Each checkpoint keeps the signal measured at its step.
    for ckpt in list_checkpoints(cfg.run_dir):
        step = read_meta(ckpt)["step"]
        logged = next(x for x in val if x["step"] == step)
        assert read_meta(ckpt)["validation"] == {k: v for k, v in logged.items() if k != "step"}


def _val_tiles_with_a_photo_in_centre_crop(world) -> int:
    dataset, spec = world
    size, n = load_clip(spec).image_size, 0
    for shard in tile_shards(dataset):
        for tile in iter_tile_samples(shard, decode_tif=False):
            if tile.record["split"] != "val":
                continue
            off = center_crop_offset(tile.record["grid"]["size"], size)
            rows = [p["row"] for p in tile.record["photos"]]
            cols = [p["col"] for p in tile.record["photos"]]
            n += bool(inside_crop(rows, cols, off, off, size).any())
    return n


def test_run_that_peaked_early_names_the_best_checkpoint(tiny_world, tmp_path):
    run = tmp_path / "run"
    good = train_config(tiny_world, run, train={"max_steps": 20, "ckpt_every": 10, "keep_last": 1}, validation=ON)
    train(good)
    # The same run continued with a learning rate far too high: the signal falls after step 20.
    wrecked = train_config(tiny_world, run, optim={"lr": 0.5},
                           train={"max_steps": 40, "ckpt_every": 10, "keep_last": 1}, validation=ON)
    summary = train(wrecked, resume="latest")
    assert summary.validation is not None and "peaked" in summary.validation
    named = Path(re.search(r"the best checkpoint kept is (\S+) ", summary.validation).group(1))
    assert named.is_dir() and read_meta(named)["step"] <= 20  # before the learning rate wrecked it
    # It is the kept checkpoint with the best signal; keep_last=1 keeps the newest, and spares the best.
    kept = {c.name: read_meta(c)["validation"]["val_score"] for c in list_checkpoints(run)}
    assert sorted(kept) == sorted({named.name, "step-0000040"})
    assert kept[named.name] == max(kept.values()) > kept["step-0000040"]
