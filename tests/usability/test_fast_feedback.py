"""Why: slow feedback and noise.

A misspelt key took 5-10 s to report (open_clip was imported first), `graft train` loaded the CLIP
tower before checking that embeddings were cached, and every model load printed about ten open_clip
INFO lines plus faiss's ModuleNotFoundError line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from graft.config import validate
from graft.training.config import TrainConfig
from graft.training.data import DataError

from .conftest import train_config


def test_config_errors_come_before_heavy_imports_and_third_party_logs_are_quiet(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: runs/x\ndata: {dataset: nowhere}\noptim: {lrr: 1}\n")
    code = (
        "import sys, logging\n"
        "from graft.cli import main, configure_logging\n"
        f"rc = main(['train', {str(bad)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'open_clip') if m in sys.modules)\n"
        "print('rc', rc, 'heavy', heavy)\n"
        "configure_logging(False)\n"
        "logging.getLogger('open_clip').info('third-party info line')\n"
        "logging.getLogger('graft.training').info('graft info line')\n"
        "import faiss\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "rc 2 heavy []" in r.stdout, r.stdout + r.stderr
    assert "optim.lrr: unknown key" in r.stderr
    assert "graft info line" in r.stderr
    assert "third-party info line" not in r.stderr and "ModuleNotFoundError" not in r.stderr


def test_missing_embedding_cache_fails_before_the_tower_loads(tiny_world, tmp_path, monkeypatch):
    from helpers_data import make_dataset

    import graft.training.trainer as trainer_mod

    data, spec = tiny_world
    bare = make_dataset(tmp_path / "bare", spec, n_tiles=4, embed=False)

    def no_load(*a, **k):
        raise AssertionError("the CLIP tower must not load before the cache is checked")

    monkeypatch.setattr(trainer_mod, "load_clip", no_load)
    cfg = train_config((bare, spec), tmp_path / "run")
    with pytest.raises(DataError, match="no cached ground embeddings; run 'graft embed"):
        trainer_mod.Trainer(cfg)
    # A cache made with another tower is refused before loading too.
    other = validate(TrainConfig, {**cfg.model_dump(mode="json"), "data": {**cfg.data.model_dump(), "dataset": str(data)},
                                   "clip": {**spec.model_dump(), "pretrained": None}})
    with pytest.raises(DataError, match="another CLIP tower"):
        trainer_mod.Trainer(other)
