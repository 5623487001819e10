"""Greedy tile cover: one fetch per tile, one tile per photo, at most 25 photos per tile."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_build import CLUSTER, shared_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from graft.dataset.shards import iter_tile_samples
from graft.geometry import tile_grid_around
from graft.pipeline.cover import greedy_cover, median_date, time_bins


def _cover(lat, lon, dates=None, size=32, gsd=10.0, cap=25, months=None, seed=0):
    dates = dates if dates is not None else [None] * len(lat)
    return greedy_cover(np.asarray(lat), np.asarray(lon), dates, tile_size=size, gsd=gsd, max_per_tile=cap,
                        time_bin_months=months, rng=np.random.default_rng(seed))


def _check_invariants(res, lat, lon, size, gsd, cap):
    members = [j for t in res.tiles for j in t.members]
    assert len(members) == len(set(members)), "a photo joined two tiles"
    assert not set(members) & set(res.over_cap), "a dropped photo is also in a tile"
    assert set(members) | set(res.over_cap) == set(range(len(lat))), "a photo was lost"
    for t in res.tiles:
        assert 1 <= len(t.members) <= cap
        assert t.grid == tile_grid_around(lat[t.centre], lon[t.centre], size, gsd)
        rows, cols = t.grid.pixel_of(np.asarray(lat)[t.members], np.asarray(lon)[t.members])
        assert np.all(t.grid.contains(rows, cols)), "a member lies outside its tile"
        assert np.allclose(rows, t.rows) and np.allclose(cols, t.cols)
    grids = [(t.grid.crs, tuple(t.grid.transform)) for t in res.tiles]
    # Distinct centres may snap to the same lattice only if the second was not covered by the first:
    # impossible, since the first tile takes every uncovered photo of its footprint.
    assert len(grids) == len(set(grids)), "the same tile was planned twice"


def test_dense_cluster_is_capped_and_fetched_once():
    rng = np.random.default_rng(1)
    lat = 45.03 + rng.uniform(-2e-4, 2e-4, 40)
    lon = 9.04 + rng.uniform(-2e-4, 2e-4, 40)
    res = _cover(lat, lon)
    assert len(res.tiles) == 1 and len(res.tiles[0].members) == 25 and len(res.over_cap) == 15
    _check_invariants(res, lat, lon, 32, 10.0, 25)


def test_cover_is_deterministic_and_seed_dependent():
    rng = np.random.default_rng(2)
    lat, lon = 45 + rng.uniform(0, 0.02, 200), 9 + rng.uniform(0, 0.02, 200)
    a, b, c = _cover(lat, lon, seed=3), _cover(lat, lon, seed=3), _cover(lat, lon, seed=4)
    assert [t.members for t in a.tiles] == [t.members for t in b.tiles]
    assert [t.members for t in a.tiles] != [t.members for t in c.tiles]


def test_time_bins_separate_seasons_and_median_date():
    lat, lon = np.full(4, 45.03), np.full(4, 9.04)
    dates = [dt.datetime(2021, 1, 5), dt.datetime(2021, 2, 5), dt.datetime(2021, 7, 5), None]
    res = _cover(lat, lon, dates, months=3)
    groups = sorted(sorted(t.members) for t in res.tiles)
    assert groups == [[0, 1], [2], [3]], "Jan+Feb share a 3-month bin; July and the undated photo do not"
    assert {tuple(sorted(t.members)): t.date for t in res.tiles}[(0, 1)] == dt.date(2021, 1, 5)
    assert list(time_bins(dates[:3], None)) == [0, 0, 0]
    assert median_date([dt.datetime(2020, 1, 3), None, dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2)]) \
        == dt.date(2020, 1, 2)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(45.0, 45.01), st.floats(8.995, 9.005)), min_size=1, max_size=60),
       st.integers(1, 6), st.integers(0, 3))
def test_cover_invariants_hold_for_random_points(points, cap, seed):
    lat = np.array([p[0] for p in points])
    lon = np.array([p[1] for p in points])
    # 8.995-9.005 straddles the UTM 31/32 border at 9 E: tiles of both zones must work
    res = _cover(lat, lon, size=16, gsd=20.0, cap=cap, seed=seed)
    _check_invariants(res, lat, lon, 16, 20.0, cap)


@pytest.fixture(scope="module")
def counted_build(tmp_path_factory):
    b = shared_dataset(tmp_path_factory)
    return b.world, b.cfg, b.source, b.summary


def test_each_tile_fetched_once_and_every_photo_in_one_tile(counted_build):
    world, cfg, source, summary = counted_build
    manifest = pq.read_table(cfg.out_dir + "/manifest.parquet").to_pylist()
    assert len(source.calls) == len(set(source.calls)), "a tile was fetched twice"
    # Every planned tile is fetched once, except those the split guard dropped (with their photos)
    # before any fetch: a tile reaching into a block of another split.
    counts, rejected = summary.stats["counts"], summary.stats["rejections"]["counts"]
    crossing = counts.get("tiles_crossing_split", 0)
    assert len(source.calls) == counts["tiles_planned"] - crossing == summary.stats["tiles"]

    photo_ids = [r["photo_id"] for r in manifest]
    assert len(photo_ids) == len(set(photo_ids)), "a photo is in two tiles"
    per_tile = Counter(r["tile_id"] for r in manifest)
    assert max(per_tile.values()) == 25, "the dense cluster should fill one tile to the cap"
    assert rejected["over_tile_cap"] == world.n_cluster - 25
    assert (crossing > 0) == (rejected.get("tile_crosses_split", 0) > 0)
    assert len(manifest) == world.n_valid - (world.n_cluster - 25) - rejected.get("tile_crosses_split", 0)

    # the shards agree with the manifest: each tile lists exactly its manifest photos
    listed = Counter()
    for shard in sorted({r["tile_shard"] for r in manifest}):
        for tile in iter_tile_samples(f"{cfg.out_dir}/{shard}", decode_tif=False):
            ids = [p["photo_id"] for p in tile.record["photos"]]
            assert len(ids) <= 25
            listed.update(ids)
            assert sorted(ids) == sorted(r["photo_id"] for r in manifest if r["tile_id"] == tile.tile_id)
    assert set(listed.values()) == {1} and set(listed) == set(photo_ids)

    cluster_tile = max(per_tile, key=per_tile.get)
    lat = np.mean([r["lat"] for r in manifest if r["tile_id"] == cluster_tile])
    assert abs(lat - CLUSTER[0]) < 1e-3
