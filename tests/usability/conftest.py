"""Fixtures of the first-hour usability tests (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_data import make_dataset, tiny_clip_spec

from graft.config import validate


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A tiny CLIP and a 64-tile dataset with train and val splits, embeddings cached: ``(dataset, spec)``.

    Photos take their tile's complementary colour, so an untrained encoder does not match tiles to
    photos and the validation signal has room to rise.
    """
    root = tmp_path_factory.mktemp("usability-world")
    spec = tiny_clip_spec(root / "clip")
    make_dataset(root / "data", spec, n_tiles=64, tile_size=48, splits=("train", "val"), invert_photos=True)
    return root / "data", spec


def train_config(world, run_dir: Path, **sections):
    """A small CPU training config on ``tiny_world``; ``sections`` update its sections."""
    from graft.training.config import TrainConfig

    data, spec = world
    cfg = {
        "run_dir": str(run_dir),
        "clip": spec.model_dump(),
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "data": {"dataset": str(data), "batch_size": 4, "workers": 0, "shuffle_buffer": 8},
        "train": {"max_steps": 6, "ckpt_every": 3, "log_every": 1, "precision": "fp32"},
        "validation": {"enabled": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return validate(TrainConfig, cfg)
