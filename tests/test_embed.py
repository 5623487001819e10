"""graft embed: fp16 ground embeddings cached in the tile shards, resumable, refusing a foreign spec."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
import yaml
from helpers_build import shared_dataset
from helpers_data import tiny_clip_spec
from PIL import Image

from graft.cli import main as graft_main
from graft.dataset.embeddings import EmbeddingCacheError, cache_spec_mismatch, read_cached_embeddings
from graft.dataset.shards import iter_photo_samples, iter_raw_samples, iter_tile_samples
from graft.models.clip_tower import FrozenClipTower, load_clip, spec_record
from graft.pipeline.embed import embed_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def dataset(tmp_path_factory, tmp_path):
    base = shared_dataset(tmp_path_factory)
    shutil.copytree(base.cfg.out_dir, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return tiny_clip_spec(folder, seed=0), tiny_clip_spec(folder, seed=1)


def _direct_embeddings(bundle, dataset, tile_shard):
    """Embeddings computed straight from the photo shard with the frozen tower, tile by tile."""
    tower = FrozenClipTower(bundle)
    photos = {s.photo_id: s.image for s in iter_photo_samples(dataset / tile_shard.replace("tiles", "photos"))}
    out = {}
    for tile in iter_tile_samples(dataset / tile_shard, decode_tif=False):
        ids = [p["photo_id"] for p in tile.record["photos"]]
        x = torch.stack([bundle.preprocess(Image.open(io.BytesIO(photos[i])).convert("RGB")) for i in ids])
        out[tile.tile_id] = tower.encode_images(x).numpy()
    return out


def summary_non_empty(dataset):
    """How many tile shards hold at least one tile (an empty shard has nothing to embed)."""
    return sum(1 for p in (dataset / "tiles").glob("*.tar") if any(True for _ in iter_raw_samples(p)))


def _shard_bytes(dataset):
    return {p.name: p.read_bytes() for p in sorted((dataset / "tiles").glob("*.tar"))}


def test_embed_matches_the_frozen_tower_and_keeps_the_tiles(dataset, specs):
    spec, _ = specs
    before = {p.name: list(iter_raw_samples(p)) for p in sorted((dataset / "tiles").glob("*.tar"))}
    manifest = pq.read_table(dataset / "manifest.parquet").to_pylist()
    summary = embed_dataset(dataset, spec, batch_size=16, workers=2, device="cpu", progress=False)
    assert summary["photos_embedded"] == len(manifest)
    # A partition can end with no tile (its tiles all crossed a split border, say): its shard is empty, skipped.
    non_empty = [name for name, samples in before.items() if samples]
    assert summary["shards_embedded"] == len(non_empty)
    assert summary["shards_skipped"] == len(before) - len(non_empty)

    bundle = load_clip(spec)
    checked = 0
    for shard in sorted({r["tile_shard"] for r in manifest}):
        direct = _direct_embeddings(bundle, dataset, shard)
        for tile in iter_tile_samples(dataset / shard, decode_tif=False):
            assert tile.emb.dtype == np.float16 and tile.emb.shape == (len(tile.record["photos"]), 64)
            emb, record = read_cached_embeddings(tile)
            assert emb.dtype == np.float32
            assert cache_spec_mismatch(record, spec_record(bundle)) is None and record == spec_record(bundle)
            assert tile.emb_json["photo_ids"] == [p["photo_id"] for p in tile.record["photos"]]
            np.testing.assert_allclose(emb, direct[tile.tile_id], atol=1e-2)
            checked += len(emb)
    assert checked == len(manifest)

    # the tile members themselves are untouched, and WebDataset still reads the rewritten shards
    for name, samples in before.items():
        after = list(iter_raw_samples(dataset / "tiles" / name))
        assert [{k: v for k, v in s.items() if not k.startswith("emb.")} for s in after] == samples
        wds_samples = list(wds.WebDataset(str(dataset / "tiles" / name), shardshuffle=False, empty_check=False))
        assert all({"tif", "json", "emb.npy", "emb.json"} <= set(s) for s in wds_samples)
        if not samples:
            continue
        raw = wds_samples[0]
        emb, _ = read_cached_embeddings(raw)  # raw WebDataset sample form
        assert emb.shape[0] == len(yaml.safe_load(raw["json"])["photos"])


def test_rerun_skips_and_foreign_spec_is_refused_unless_forced(dataset, specs, tmp_path, capsys):
    spec0, spec1 = specs
    embed_dataset(dataset, spec0, batch_size=32, device="cpu", progress=False)
    cached = _shard_bytes(dataset)

    again = embed_dataset(dataset, spec0, batch_size=32, device="cpu", progress=False)
    assert again["shards_skipped"] == len(cached) and again["photos_embedded"] == 0
    assert _shard_bytes(dataset) == cached

    with pytest.raises(EmbeddingCacheError, match="another CLIP spec") as err:
        embed_dataset(dataset, spec1, device="cpu", progress=False)
    assert "fingerprint" in str(err.value) and "--force" in str(err.value)
    assert _shard_bytes(dataset) == cached, "a refused run must not touch any shard"

    forced = embed_dataset(dataset, spec1, device="cpu", force=True, progress=False)
    assert forced["shards_embedded"] == summary_non_empty(dataset)
    shard = sorted({r["tile_shard"] for r in pq.read_table(dataset / "manifest.parquet").to_pylist()})[0]
    direct = _direct_embeddings(load_clip(spec1), dataset, shard)
    for tile in iter_tile_samples(dataset / shard, decode_tif=False):
        np.testing.assert_allclose(read_cached_embeddings(tile)[0], direct[tile.tile_id], atol=1e-2)

    # the CLI reads only the clip: section of a training YAML
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text(yaml.safe_dump({"clip": spec1.model_dump(), "train": {"anything": "ignored"}}))
    assert graft_main(["embed", str(dataset), "--config", str(train_yaml), "--device", "cpu"]) == 0
    assert "already cached" in capsys.readouterr().out
    code = graft_main(["embed", str(dataset), "--clip-model", "graft-tiny-vit", "--clip-pretrained",
                       spec0.pretrained, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("graft embed: error: ") and "another CLIP spec" in err


def test_missing_cache_and_misaligned_photo_shard(dataset, specs):
    tile = next(iter_tile_samples(sorted((dataset / "tiles").glob("*.tar"))[0], decode_tif=False))
    with pytest.raises(EmbeddingCacheError, match="graft embed"):
        read_cached_embeddings(tile)
    shards = sorted((dataset / "photos").glob("*.tar"))
    shutil.copyfile(shards[0], shards[1])  # photo shard 1 now holds shard 0's photos
    with pytest.raises(EmbeddingCacheError, match="not aligned"):
        embed_dataset(dataset, specs[0], device="cpu", progress=False)


def test_cached_rows_must_line_up_with_the_tile_photos(dataset, specs):
    embed_dataset(dataset, specs[0], device="cpu", progress=False)
    tile = next(iter_tile_samples(sorted((dataset / "tiles").glob("*.tar"))[0], decode_tif=False))
    tile.emb_json = {**tile.emb_json, "photo_ids": list(reversed(tile.emb_json["photo_ids"])) + ["extra"]}
    with pytest.raises(EmbeddingCacheError, match="do not match"):
        read_cached_embeddings(tile)


def test_one_spec_comparison_strict_and_portable():
    record = {"model": "m", "pretrained": "w.bin", "fingerprint": "abc", "preprocess": {"image_size": 64},
              "embed_dim": 64}
    assert cache_spec_mismatch(record, dict(record)) is None
    other_machine = {**record, "fingerprint": "def"}
    assert "fingerprint" in cache_spec_mismatch({"clip": record, "photo_ids": []}, other_machine)
    assert cache_spec_mismatch(record, other_machine, portable=True) is None
    assert "embed_dim" in cache_spec_mismatch(record, {**record, "embed_dim": 32}, portable=True)
    assert cache_spec_mismatch({}, record, portable=True) is None
