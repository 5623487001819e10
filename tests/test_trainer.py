"""The trainer on tiny generated shards: it learns, leaves CLIP untouched, resumes exactly, validates configs."""

import itertools
from pathlib import Path

import pytest
import torch
from helpers_data import make_dataset, tiny_clip_spec

from graft.config import ConfigError, load_config, validate
from graft.models.checkpoint import find_latest_checkpoint, load_model_state
from graft.training.config import TrainConfig
from graft.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    spec = tiny_clip_spec(root / "clip")
    make_dataset(root / "data", spec, n_tiles=16, tile_size=48)
    return root / "data", spec


def _cfg(tmp: Path, dataset, kind="image", **train) -> TrainConfig:
    data, spec = dataset
    return validate(TrainConfig, {
        "run_dir": str(tmp / f"run-{kind}"),
        "clip": spec.model_dump(),
        "model": {"kind": kind},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "data": {"dataset": str(data), "batch_size": 4, "workers": 0, "shuffle_buffer": 8},
        "train": {"max_steps": 30, "ckpt_every": 10, "log_every": 5, "precision": "fp32", **train},
    })


@pytest.mark.parametrize("kind", ["image", "pixel"])
def test_loss_goes_down_clip_frozen_encoder_gets_grads(tmp_path, dataset, kind):
    cfg = _cfg(tmp_path, dataset, kind, max_steps=40)
    trainer = Trainer(cfg)
    clip_before = {k: v.clone() for k, v in trainer.bundle.model.state_dict().items() if not k.startswith("visual.")}
    visual_ref = {k: v.clone() for k, v in trainer.bundle.model.visual.state_dict().items()}
    # Every encoder parameter receives a gradient on the first step.
    from graft.training.data import BatchIterator

    batch = next(BatchIterator(trainer.stream, 0))
    scaled, _ = trainer._loss(batch)
    scaled.backward()
    no_grad = [n for n, p in trainer.model.encoder.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    trainer.optimizer.zero_grad(set_to_none=True)

    # The 1:N loss cannot go below mean_i log(N_i) (a tile's own photos share one softmax),
    # so "goes down" is measured on the excess over that floor. It is measured on the same batches
    # (tiles, crops, positives) before and after training: the excess of a training batch depends on
    # which tiles it holds and which photos its crops keep (data.positives: crop) as much as on the
    # model, so first-vs-last training batches compare different problems.
    fixed = list(itertools.islice(BatchIterator(trainer.stream, 0), 4))

    def excess() -> float:
        with torch.no_grad():
            return sum(trainer._loss(b)[1].item() - torch.log(torch.bincount(b["owner"]).float()).mean().item()
                       for b in fixed) / len(fixed)

    before = excess()
    it = BatchIterator(trainer.stream, 0)
    for _ in range(40):
        trainer.train_step([next(it)])
        trainer.step += 1
    assert excess() < 0.5 * before
    # The CLIP tower (text side and its own image tower) is bitwise unchanged: the encoder is a copy.
    for k, v in trainer.bundle.model.state_dict().items():
        ref = clip_before.get(k, visual_ref.get(k.removeprefix("visual.")))
        assert torch.equal(v, ref), k


def test_interrupted_and_resumed_run_is_bitwise_equal(tmp_path, dataset):
    full = _cfg(tmp_path / "a", dataset, "pixel", max_steps=12, ckpt_every=4)
    train(full)
    ref = load_model_state(find_latest_checkpoint(full.run_dir))

    part = _cfg(tmp_path / "b", dataset, "pixel", max_steps=12, ckpt_every=4)
    train(part, stop_after=5)  # "killed" after step 5: last checkpoint is step 4
    # Throw away the step-5 state: only what the checkpoint holds survives a kill.
    train(part, resume="latest")
    got = load_model_state(find_latest_checkpoint(part.run_dir))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_live_ground_matches_cached_loss(tmp_path, dataset):
    cfg = _cfg(tmp_path, dataset, "image")
    cached, live = Trainer(cfg), Trainer(cfg, live_ground=True)
    from graft.training.data import BatchIterator

    bc = next(BatchIterator(cached.stream, 0))
    bl = next(BatchIterator(live.stream, 0))
    assert bc["tile_ids"] == bl["tile_ids"]
    _, lc = cached._loss(bc)
    _, ll = live._loss(bl)
    assert float(lc) == pytest.approx(float(ll), abs=2e-2)  # fp16 cache vs fp32 live


def test_cache_made_with_other_tower_is_refused(tmp_path, dataset):
    data, _ = dataset
    other = tiny_clip_spec(tmp_path / "other", seed=1)
    cfg = _cfg(tmp_path, (data, other), "image")
    with pytest.raises(RuntimeError, match="another CLIP tower"):
        Trainer(cfg)


def test_bad_configs_fail_with_the_key_named(tmp_path, dataset):
    good = _cfg(tmp_path, dataset).model_dump(mode="json")
    bad_key = {**good, "optim": {**good["optim"], "lrr": 1.0}}
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        validate(TrainConfig, bad_key)
    bad_type = {**good, "train": {**good["train"], "max_steps": "lots"}}
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        validate(TrainConfig, bad_type)
    missing = {**good, "data": {**good["data"], "dataset": str(tmp_path / "nope")}}
    with pytest.raises(ConfigError, match=r"data\.dataset.*graft build"):
        validate(TrainConfig, missing)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
