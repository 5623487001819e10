"""Issue 12: an indoor filter that rejects whole kinds of scene stops the build before any tile is fetched."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_build import REGION, CountingSource, World, build_config, jpeg_with_gps, write_mosaic
from PIL import Image

from graft.config import validate
from graft.pipeline.build import BuildConfig, build_dataset, resources
from graft.pipeline.build.filter_guard import FilterGuardError, kmeans
from graft.sources.folder import photo_id_for
from graft.sources.geotiff import GeoTiffSource

# Six outdoor scene kinds and the indoor shots, each a planted base colour.
SCENES = {"water": (30, 60, 200), "forest": (30, 140, 40), "field": (200, 190, 60), "city": (128, 128, 128),
          "beach": (235, 215, 170), "rock": (160, 90, 60)}
INDOOR = (70, 40, 90)
PER_SCENE, N_INDOOR = 15, 10  # 100 photos: 10% indoor, 30% water or forest
WRONGLY_REJECTED = ("water", "forest")


class PlantedFilter:
    """A stand-in filter that rejects the indoor shots and every water and forest photo (by planted colour)."""

    def __init__(self, rejected: tuple[str, ...] = (*WRONGLY_REJECTED, "indoor"), threshold: float = 0.5):
        self.rejected = rejected
        self.threshold = threshold
        self.names = [*SCENES, "indoor"]
        self.colours = np.array([*SCENES.values(), INDOOR], dtype=float)

    def kind_of(self, jpeg: bytes) -> str:
        with Image.open(io.BytesIO(jpeg)) as im:
            mean = np.asarray(im.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)
        return self.names[int(((self.colours - mean) ** 2).sum(axis=1).argmin())]

    def score(self, images: list[bytes]) -> np.ndarray:
        return np.array([0.05 if self.kind_of(b) in self.rejected else 0.95 for b in images])

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def describe(self) -> dict:
        return {"kind": "planted"}


def _world(root: Path) -> World:
    photos = root / "photos"
    photos.mkdir(parents=True)
    world = World(root=root, photos_dir=photos, mosaic=write_mosaic(root / "mosaic.tif"))
    rng = np.random.default_rng(0)
    kinds = [(k, c) for k, c in SCENES.items() for _ in range(PER_SCENE)] + [("indoor", INDOOR)] * N_INDOOR
    for i, (kind, colour) in enumerate(kinds):
        rgb = np.clip(np.array(colour) + rng.integers(-20, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        lat = rng.uniform(REGION[1] + 0.002, REGION[3] - 0.002)
        lon = rng.uniform(REGION[0] + 0.002, REGION[2] - 0.002)
        (photos / f"{kind}_{i:03d}.jpg").write_bytes(jpeg_with_gps(rgb, lat, lon, dt.datetime(2021, 5, 1, 12)))
    return world


@pytest.fixture()
def planted_filter(monkeypatch):
    flt = PlantedFilter()
    monkeypatch.setattr(resources, "indoor_filter", lambda cfg: flt)
    return flt


def test_a_filter_rejecting_two_scene_kinds_stops_the_build_before_any_fetch(tmp_path, planted_filter):
    world = _world(tmp_path / "world")
    data = build_config(world, tmp_path / "ds", filter={"kind": "clip"})
    cfg = validate(BuildConfig, data)
    source = CountingSource(GeoTiffSource(cfg.satellite.geotiff))
    with pytest.raises(FilterGuardError) as caught:
        build_dataset(cfg, satellite=source)
    message = str(caught.value)
    assert source.calls == [], "no tile may be fetched before the filter check"
    assert not list((tmp_path / "ds").glob("parts/part-*")) and not list((tmp_path / "ds").glob("tiles/*.tar"))
    assert "filter.kind clip" in message and "40 of 100" in message and "(40%)" in message, message
    assert "filter.max_reject_share" in message and "filter.kind: none" in message and "filter.prompts" in message
    # the clusters that carry the rejections come first, with the wrongly rejected scenes as examples
    verdict = json.loads((tmp_path / "ds" / "filter_check.json").read_text())
    top = [c for c in verdict["clusters"] if c["rejected_share"] == 1.0]
    assert sum(c["rejected"] for c in top) == 40
    assert {Path(e).name.split("_")[0] for c in top for e in c["examples"]} == {*WRONGLY_REJECTED, "indoor"}
    assert (tmp_path / "ds" / "filter_check.png").is_file()

    # With the limit raised the same build completes, and re-judges the saved sample.
    cfg = validate(BuildConfig, {**data, "filter": {"kind": "clip", "max_reject_share": 0.5}})
    assert cfg.fingerprint() == validate(BuildConfig, data).fingerprint()
    summary = build_dataset(cfg, satellite=source)
    kind_of = {photo_id_for(p.name): p.name.split("_")[0] for p in world.photos_dir.iterdir()}
    kept = {kind_of[r["photo_id"]] for r in pq.read_table(tmp_path / "ds" / "manifest.parquet").to_pylist()}
    assert kept == set(SCENES) - set(WRONGLY_REJECTED)
    f = summary.stats["filter"]
    assert f["scored"] == 100 and f["rejected"] == 40 and f["rejected_share"] == 0.4
    assert f["check"]["stopped"] is False and f["check"]["photos"] == 100
    assert (tmp_path / "ds" / "filter_scores.png").is_file() and "filter_scores.png" in summary.table()


def test_a_plausible_rejection_share_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "indoor_filter", lambda cfg: PlantedFilter(rejected=("indoor",)))
    world = _world(tmp_path / "world")
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds", filter={"kind": "clip"}))
    summary = build_dataset(cfg, satellite=GeoTiffSource(cfg.satellite.geotiff))
    assert summary.stats["filter"]["rejected_share"] == 0.1 and summary.stats["photos"]["kept"] > 0


def test_kmeans_separates_planted_blobs():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (4, 5))
    x = np.concatenate([c + 0.01 * rng.standard_normal((30, 5)) for c in centres])
    labels = kmeans(x, 4, seed=0)
    for b in range(4):
        assert len(set(labels[b * 30:(b + 1) * 30])) == 1
    assert len(set(labels)) == 4


def test_searched_photos_are_sampled_by_whole_partitions_and_the_sample_is_reused(tmp_path, monkeypatch):
    """Flickr-like plans list no photos: the guard takes whole partitions in a seeded order until its sample
    is full, and a re-run with the same config re-judges the saved sample without reading a photo again."""
    from collections import Counter

    from graft.pipeline.build import filter_guard
    from graft.pipeline.build.records import PartitionTask, PhotoRecord, Plan
    from graft.rejections import Rejections
    from graft.sources.base import GroundPhoto

    world = _world(tmp_path / "world")
    files = sorted(world.photos_dir.iterdir())
    gathered: list[int] = []

    class SearchedGround:  # four photos per partition, as a search would find them
        def gather(self, run, stack):
            gathered.append(run.partition)
            mine = files[4 * run.partition:4 * run.partition + 4]
            return [PhotoRecord(GroundPhoto(photo_id=f"p{run.partition}x{i}", lat=45.0, lon=9.0, taken_at=None,
                                            uri=str(f), source="test"), f.read_bytes) for i, f in enumerate(mine)]

    monkeypatch.setattr(filter_guard, "ground_kind", lambda cfg: SearchedGround())
    monkeypatch.setattr(resources, "indoor_filter", lambda cfg: PlantedFilter(rejected=("indoor",)))
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds", filter={"kind": "clip", "check_sample": 22}))
    plan = Plan([PartitionTask(partition=p, split="train") for p in range(25)], Rejections(), Counter(), {})
    verdict = filter_guard.check_filter(cfg, plan)
    assert len(gathered) == 6 and len(set(gathered)) == 6 and gathered != sorted(gathered)  # 6 x 4 >= 22
    assert verdict["photos"] == 24 and not verdict["stopped"]
    again = filter_guard.check_filter(cfg, plan)
    assert len(gathered) == 6 and again == verdict
