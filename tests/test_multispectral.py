"""Multispectral encoders: exact RGB behaviour at step 0, band-aware reading, statistics, training and loading."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers_data import make_dataset, tiny_clip_spec

from graft.config import ConfigError, validate
from graft.dataset.band_stats import (
    BandStatsError,
    band_mean_std,
    compute_band_stats,
    dataset_band_stats,
    read_band_stats,
    write_band_stats,
)
from graft.imagery import BandError, BandNorm, tile_to_channels, tile_to_rgb8
from graft.models.checkpoint import band_norm_of, load_encoder, read_meta
from graft.models.clip_tower import load_clip
from graft.models.satellite import build_encoder
from graft.training.config import TrainConfig
from graft.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory):
    return tiny_clip_spec(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("kind", ["image", "pixel"])
def test_n_band_encoder_at_init_is_exactly_the_rgb_clip_tower_on_rgb(clip_spec, kind):
    clip = load_clip(clip_spec).model
    rgb_encoder = build_encoder(kind, clip.visual).eval()
    ms_encoder = build_encoder(kind, clip.visual, in_chans=7).eval()
    assert ms_encoder.in_chans == 7
    g = torch.Generator().manual_seed(0)
    size = ms_encoder.image_size
    rgb = torch.randn(3, 3, size, size, generator=g)
    for extra in (torch.zeros(3, 4, size, size), 1e4 * torch.randn(3, 4, size, size, generator=g),
                  torch.full((3, 4, size, size), -3.0)):
        x = torch.cat([rgb, extra], dim=1)
        with torch.no_grad():
            assert torch.equal(ms_encoder.encode_image(x), clip.encode_image(rgb, normalize=True))
            assert torch.equal(ms_encoder(x), rgb_encoder(rgb))  # pixel-level: every patch embedding too
    with pytest.raises(ValueError, match="reads 7 bands"):
        ms_encoder(rgb)


def test_rgb_reading_picks_bands_by_name_and_channels_match_the_rgb_path():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 6000, (5, 8, 8)).astype(np.uint16)
    # Sentinel-2 bands stored blue-first: R, G, B are found by name, not position.
    names = ["B2", "B3", "B4", "B8", "B11"]
    assert np.array_equal(tile_to_rgb8(tile, names), tile_to_rgb8(tile[[2, 1, 0]]))
    assert np.array_equal(tile_to_rgb8(tile[:3], ["b1", "b2", "b3"]), tile_to_rgb8(tile[:3]))  # unnamed: first three
    ch = tile_to_channels(tile, names, ["B4", "B3", "B2", "B11", "B8"])
    # R, G, B exactly as the RGB training path computes them (torch division of the 8-bit stretch).
    rgb_path = torch.from_numpy(tile_to_rgb8(tile, names)).permute(2, 0, 1).float().div_(255.0)
    assert torch.equal(torch.from_numpy(ch[:3]), rgb_path)
    assert np.array_equal(ch[3], tile[4].astype(np.float32)) and np.array_equal(ch[4], tile[3].astype(np.float32))
    assert ch.dtype == np.float32 and ch.shape == (5, 8, 8)
    with pytest.raises(BandError, match=r"not \['B12'\]"):
        tile_to_channels(tile, names, ["B4", "B3", "B2", "B12"])
    with pytest.raises(BandError, match="does not name its bands"):
        tile_to_channels(tile, None, ["B4", "B3", "B2", "B8"])


def test_band_statistics_are_exact():
    rng = np.random.default_rng(1)
    tiles = []
    for i in range(7):
        a = rng.integers(0, 10_000, (3, 9, 9)).astype(np.uint16)
        a[:, : i % 3, :] = 0  # rows of missing data (0 in every band) are left out
        a[1, 5, 5] = 0  # a zero in one band only is data
        tiles.append(("train" if i < 5 else "val", ["B4", "B8", "B11"], a))
    stats = compute_band_stats(iter(tiles))
    for split in ("train", "val"):
        arrays = [a for s, _, a in tiles if s == split]
        vals = np.concatenate([a[:, np.any(a != 0, axis=0)] for a in arrays], axis=1).astype(np.int64)
        n = vals.shape[1]
        got = stats["splits"][split]
        assert got["tiles"] == len(arrays)
        for b, name in enumerate(["B4", "B8", "B11"]):
            s, q = int(vals[b].sum()), int((vals[b] ** 2).sum())
            assert got["bands"][name]["count"] == n
            assert got["bands"][name]["mean"] == float(Fraction(s, n))
            assert got["bands"][name]["std"] == pytest.approx(float(Fraction(n * q - s * s, n * n)) ** 0.5, rel=1e-15)
            assert got["bands"][name]["std"] == pytest.approx(float(vals[b].std()), rel=1e-12)
    with pytest.raises(BandStatsError, match="one band list"):
        compute_band_stats(iter([("train", ["B4"], tiles[0][2][:1]), ("train", ["B8"], tiles[0][2][:1])]))


@pytest.fixture(scope="module")
def ms_dataset(tmp_path_factory, clip_spec):
    root = make_dataset(tmp_path_factory.mktemp("ms") / "data", clip_spec, n_tiles=12, tile_size=48,
                        bands=("R", "G", "B", "N"))
    write_band_stats(root, dataset_band_stats(root))
    return root


def test_dataset_band_statistics_match_the_tiles(ms_dataset):
    import webdataset as wds

    from graft.imagery import decode_geotiff

    stats = read_band_stats(ms_dataset)
    assert stats["bands"] == ["R", "G", "B", "N"] and set(stats["splits"]) == {"train"}
    arrays = [decode_geotiff(s["tif"])[0] for s in
              wds.WebDataset(sorted(str(p) for p in ms_dataset.glob("tiles/*.tar")), shardshuffle=False)]
    vals = np.concatenate([a.reshape(4, -1) for a in arrays], axis=1).astype(np.float64)  # no all-zero pixels here
    mean, std = band_mean_std(stats, "train", ["N", "R"])
    assert mean == pytest.approx([vals[3].mean(), vals[0].mean()], rel=1e-12)
    assert std == pytest.approx([vals[3].std(), vals[0].std()], rel=1e-12)
    with pytest.raises(BandStatsError, match="not \\['B8'\\]"):
        band_mean_std(stats, "train", ["B8"])


def _train_cfg(tmp, data, spec, bands, steps=6):
    return validate(TrainConfig, {
        "run_dir": str(tmp / f"run-{len(bands or [])}"), "clip": spec.model_dump(),
        "model": {"kind": "image", "bands": bands},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "data": {"dataset": str(data), "batch_size": 4, "workers": 0, "shuffle_buffer": 4},
        "train": {"max_steps": steps, "ckpt_every": steps, "log_every": 2, "precision": "fp32", "seed": 0},
    })


def test_multispectral_training_learns_the_extra_band_and_the_checkpoint_carries_its_normalisation(
        tmp_path, ms_dataset, clip_spec):
    summary = train(_train_cfg(tmp_path, ms_dataset, clip_spec, ["R", "G", "B", "N"]))
    meta = read_meta(summary.checkpoint)
    norm = band_norm_of(meta)
    stats = read_band_stats(ms_dataset)["splits"]["train"]["bands"]["N"]
    clip_pre = load_clip(clip_spec).model.visual.preprocess_cfg
    assert norm == BandNorm(("R", "G", "B", "N"), (*clip_pre["mean"], stats["mean"]), (*clip_pre["std"], stats["std"]))
    encoder, _, _ = load_encoder(summary.checkpoint)
    assert encoder.in_chans == 4
    assert encoder.visual.conv1.extra.weight.abs().sum() > 0  # the NIR weights moved off zero
    # An RGB model on the same dataset reads its R, G, B bands and stores no band list.
    rgb = train(_train_cfg(tmp_path, ms_dataset, clip_spec, None, steps=2))
    assert band_norm_of(read_meta(rgb.checkpoint)) is None
    assert load_encoder(rgb.checkpoint)[0].in_chans == 3


def test_multispectral_training_refuses_bands_the_dataset_lacks(tmp_path, ms_dataset, clip_spec):
    with pytest.raises(BandStatsError, match="not \\['B8'\\]"):
        train(_train_cfg(tmp_path, ms_dataset, clip_spec, ["R", "G", "B", "B8"]))
    with pytest.raises(ConfigError, match="R, G, B first"):
        _train_cfg(tmp_path, ms_dataset, clip_spec, ["R", "G"])


def test_sentinel2_band_spellings_match():
    from graft.imagery import band_indexes, canonical_band, rgb_band_indexes

    assert [canonical_band(b) for b in ["B04", "B8A", "B08A", "B8a", "B10", "N", "b1"]] == \
        ["B4", "B8A", "B8A", "B8A", "B10", "N", "b1"]
    assert rgb_band_indexes(["b1", "b2", "b3", "b4"]) == [0, 1, 2]  # GeoTIFF band indexes are not S2 bands
    eurosat = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B08A", "B09", "B10", "B11", "B12"]
    assert rgb_band_indexes(eurosat) == [3, 2, 1]
    assert band_indexes(eurosat, ["B4", "B3", "B2", "B8", "B8A", "B11"]) == [3, 2, 1, 7, 8, 11]
