"""graft build: outputs, splits, resume, Ray == local, config validation, Flickr and filter paths."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from helpers_build import REGION, build_config, jpeg_with_gps, shared_dataset
from helpers_data import tiny_clip_spec
from PIL import Image

from graft.cli import main as graft_main
from graft.config import ConfigError, validate
from graft.dataset.members import KEY_RE
from graft.geometry import haversine_m
from graft.pipeline.build import BuildConfig, build_dataset, load_build_config, plan_build, run_partition
from graft.pipeline.indoor import IndoorFilter
from graft.pipeline.photos import prepare_photo
from graft.pipeline.region import Region, RegionConfig, read_polygon
from graft.pipeline.split import SplitConfig, assign_splits, split_counts
from graft.sources.base import ChipRejected, GroundPhoto
from graft.sources.geotiff import GeoTiffSource

MANIFEST_COLUMNS = {
    "photo_id": "string", "lat": "double", "lon": "double", "taken_at": "timestamp[us, tz=UTC]",
    "tile_id": "string", "row": "double", "col": "double", "split": "string", "source": "string",
    "license": "string", "owner": "string", "outdoor_score": "float", "tile_shard": "string",
    "photo_shard": "string", "tile_crs": "string", "tile_date": "date32[day]", "partition": "int32",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dataset(tmp_path_factory)


def _manifest(out_dir) -> list[dict]:
    return pq.read_table(f"{out_dir}/manifest.parquet").to_pylist()


def _write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---------------------------------------------------------------- outputs


def test_dataset_folder_has_every_documented_output(base):
    out = base.cfg.out_dir
    schema = pq.read_schema(f"{out}/manifest.parquet")
    assert {f.name: str(f.type) for f in schema} == MANIFEST_COLUMNS
    for name in ("map.png", "photos_per_tile.png"):
        with Image.open(f"{out}/{name}") as im:
            assert im.format == "PNG" and im.width > 100
    again = validate(BuildConfig, yaml.safe_load(open(f"{out}/build_config.yaml")))
    assert again.fingerprint() == base.cfg.fingerprint()

    stats = json.load(open(f"{out}/stats.json"))
    assert stats["photos"]["seen"] == base.world.n_valid + 4  # + no-GPS, outside, copy, not-an-image
    assert stats["photos"]["seen"] == stats["photos"]["kept"] + stats["photos"]["rejected"]
    counts = stats["rejections"]["counts"]
    assert counts["no_gps"] == 1 and counts["outside_region"] == 1 and counts["duplicate_content"] == 1
    assert counts["exif_unreadable"] == 1 and counts["over_tile_cap"] == base.world.n_cluster - 25
    assert all(e["reason"] and e["item"] for e in stats["rejections"]["examples"])
    assert stats["partitions"]["written"] == stats["partitions"]["planned"] > 3
    assert stats["timings"]["wall_s"] > 0 and not stats["failures"]


def test_band_statistics_beside_the_manifest_equal_a_pass_over_every_tile(base):
    """The build sums each partition's tiles while it holds their pixels; merged, that is a full pass exactly."""
    from graft.dataset.band_stats import dataset_band_stats, read_band_stats

    stats = read_band_stats(base.cfg.out_dir)
    assert stats == dataset_band_stats(base.cfg.out_dir)
    assert set(stats["splits"]) == {r["split"] for r in _manifest(base.cfg.out_dir)}
    assert all(b["count"] > 0 for s in stats["splits"].values() for b in s["bands"].values())


def test_shards_are_webdataset_readable_and_keys_have_no_dots(base):
    out = base.cfg.out_dir
    manifest = _manifest(out)
    n_tiles = n_photos = 0
    for shard in sorted({r["tile_shard"] for r in manifest}):
        for sample in wds.WebDataset(f"{out}/{shard}", shardshuffle=False, empty_check=False):
            assert KEY_RE.fullmatch(sample["__key__"]) and "." not in sample["__key__"]
            assert sample["__key__"].startswith("t-")
            meta = json.loads(sample["json"])
            assert set(meta) >= {"tile_id", "grid", "bands", "date", "source", "split", "photos"}
            assert meta["tile_id"] == sample["__key__"] and sample["tif"][:2] in (b"II", b"MM")
            n_tiles += 1
    for shard in sorted({r["photo_shard"] for r in manifest}):
        for sample in wds.WebDataset(f"{out}/{shard}", shardshuffle=False, empty_check=False):
            assert KEY_RE.fullmatch(sample["__key__"])
            with Image.open(io.BytesIO(sample["jpg"])) as im:
                assert im.format == "JPEG" and min(im.size) <= 64
            n_photos += 1
    assert n_tiles == len({r["tile_id"] for r in manifest}) and n_photos == len(manifest)


# ---------------------------------------------------------------- splits


def test_splits_are_drawn_per_block_and_never_shared(base):
    manifest = _manifest(base.cfg.out_dir)
    by_photo, by_tile, by_part = defaultdict(set), defaultdict(set), defaultdict(set)
    for r in manifest:
        by_photo[r["photo_id"]].add(r["split"])
        by_tile[r["tile_id"]].add(r["split"])
        by_part[r["partition"]].add(r["split"])
    assert all(len(s) == 1 for s in by_photo.values())
    assert all(len(s) == 1 for s in by_tile.values()), "a tile's photos must share its split"
    assert all(len(s) == 1 for s in by_part.values()), "a block's photos must share its split"
    assert {r["split"] for r in manifest} == {"train", "val", "test"}
    for shard in {r["tile_shard"] for r in manifest}:
        for sample in wds.WebDataset(f"{base.cfg.out_dir}/{shard}", shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            assert by_tile[meta["tile_id"]] == {meta["split"]}


@pytest.mark.parametrize(("n", "fractions", "expected"), [
    (5, (0.8, 0.1, 0.1), (3, 1, 1)),
    (3, (0.8, 0.1, 0.1), (1, 1, 1)),
    (2, (0.8, 0.1, 0.1), (2, 0, 0)),  # too few blocks for three splits: no forced empties
    (10, (0.8, 0.1, 0.1), (8, 1, 1)),
    (7, (1.0, 0.0, 0.0), (7, 0, 0)),
    (4, (0.5, 0.5, 0.0), (2, 2, 0)),
    (0, (0.8, 0.1, 0.1), (0, 0, 0)),
])
def test_split_counts(n, fractions, expected):
    assert split_counts(n, fractions) == expected


def test_assign_splits_is_deterministic_and_seeded():
    cfg = SplitConfig(train=0.6, val=0.2, test=0.2, seed=1)
    a = assign_splits([5, 3, 9, 1, 7], cfg)
    assert a == assign_splits([1, 3, 5, 7, 9], cfg)
    assert sorted(a.values()).count("train") == 3
    others = [assign_splits(list(range(20)), SplitConfig(seed=s)) for s in range(3)]
    assert others[0] != others[1] or others[1] != others[2]
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(train=0.5, val=0.1, test=0.1)


# ---------------------------------------------------------------- resume


class FlakySource:
    """The real GeoTIFF source, except that chips north of ``lat`` fail as an outage would."""

    name = "geotiff"

    def __init__(self, inner, lat: float):
        self.inner, self.lat, self.rejections = inner, lat, inner.rejections

    def fetch(self, grid, date):
        lat, _ = grid.latlon_of(grid.size / 2, grid.size / 2)
        if float(lat) > self.lat:
            raise ChipRejected("fetch_failed:timeout", "simulated outage")
        return self.inner.fetch(grid, date)


def test_failed_partitions_resume_to_the_uninterrupted_result(base, tmp_path, capsys):
    data = build_config(base.world, tmp_path / "ds")
    cfg = validate(BuildConfig, data)
    first = build_dataset(cfg, satellite=FlakySource(GeoTiffSource(cfg.satellite.geotiff), lat=45.045))
    failed = {f["partition"] for f in first.stats["failures"]}
    assert failed and first.stats["partitions"]["done"] == first.stats["partitions"]["planned"] - len(failed)
    assert all("fetch_failed" in f["error"] for f in first.stats["failures"])
    assert not {r["partition"] for r in _manifest(tmp_path / "ds")} & failed

    # What a kill leaves behind: an orphan (torn) shard of an unfinished partition, and a temp folder.
    orphan = tmp_path / "ds" / "tiles" / f"tiles-{min(failed):05d}.tar"
    orphan.write_bytes(b"torn shard from a killed run")
    (tmp_path / "ds" / "parts" / ".part-00099.abc.tmp").mkdir()

    code = graft_main(["build", _write_yaml(tmp_path / "build.yaml", data)])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"{len(failed)} built now" in printed and "photos kept" in printed and "manifest.parquet" in printed
    stats = json.load(open(tmp_path / "ds" / "stats.json"))
    assert stats["partitions"]["done"] == len(failed) and stats["partitions"]["failed"] == 0
    assert not (tmp_path / "ds" / "parts" / ".part-00099.abc.tmp").exists()

    assert pq.read_table(tmp_path / "ds" / "manifest.parquet").equals(
        pq.read_table(f"{base.cfg.out_dir}/manifest.parquet"))
    for kind in ("tiles", "photos"):
        for shard in sorted((tmp_path / "ds" / kind).glob("*.tar")):
            ref = f"{base.cfg.out_dir}/{kind}/{shard.name}"
            assert shard.read_bytes() == open(ref, "rb").read(), f"{shard.name} differs from the clean build"


def test_resume_refuses_parts_of_another_config(base, tmp_path):
    shutil.copytree(base.cfg.out_dir, tmp_path / "ds")
    data = build_config(base.world, tmp_path / "ds", **{"ground.max_per_tile": 10})
    with pytest.raises(ConfigError, match="different config"):
        build_dataset(validate(BuildConfig, data))


@pytest.mark.slow
def test_ray_build_equals_local_build(base, tmp_path):
    cfg = validate(BuildConfig, build_config(base.world, tmp_path / "ray"))
    summary = build_dataset(cfg, distributor="ray", workers=2)
    assert summary.stats["partitions"]["failed"] == 0
    assert pq.read_table(tmp_path / "ray" / "manifest.parquet").equals(
        pq.read_table(f"{base.cfg.out_dir}/manifest.parquet"))
    for shard in sorted((tmp_path / "ray" / "tiles").glob("*.tar")):
        assert shard.read_bytes() == open(f"{base.cfg.out_dir}/tiles/{shard.name}", "rb").read()


@pytest.mark.slow
def test_ray_workers_share_one_flickr_quota(base, tmp_path, monkeypatch):
    """4 Ray workers on one key: the REST requests of the whole build stay within ``queries_per_hour``."""
    from fakes.flickr_server import FakeFlickr as FlickrServer
    from fakes.flickr_server import make_catalogue

    monkeypatch.setenv("FLICKR_API_KEY", "quota-test-key")
    monkeypatch.setenv("FLICKR_API_SECRET", "quota-test-secret")
    catalogue = make_catalogue(300, lat=45.03, lon=9.04, spread_km=3.0, start=dt.date(2020, 1, 1),
                               end=dt.date(2020, 12, 31), seed=2)
    per_hour, burst = 7_200.0, 10  # 2 requests a second after the bucket's burst of 10
    with FlickrServer(catalogue) as server:
        cfg = validate(BuildConfig, build_config(base.world, tmp_path / "ds", **{
            "ground": {"kind": "flickr", "n_points": 30, "seed": 1, "short_side": 64,
                       "flickr": {"rest_url": server.rest_url, "min_taken": "2020-01-01",
                                  "max_taken": "2020-12-31", "radius_km": 0.5, "queries_per_hour": per_hour}},
        }))
        summary = build_dataset(cfg, distributor="ray", workers=4)
        times = sorted(r.t for r in server.requests if r.endpoint == "rest")
    assert summary.stats["partitions"]["failed"] == 0 and summary.stats["partitions"]["done"] >= 4
    assert len(times) >= 30
    rate = per_hour / 3600
    for i, t in enumerate(times):
        # Request i+1 may go no earlier than the bucket allows (one token of slack for clock jitter).
        assert i + 1 <= burst + 1 + rate * (t - times[0]), (i, t - times[0])
    measured = (len(times) - burst) / (times[-1] - times[0])
    print(f"flickr quota under ray: {len(times)} requests, {measured:.2f}/s after the burst (limit {rate:.2f}/s)")
    assert measured <= rate * 1.05


def test_every_photo_found_inside_the_region_is_kept_or_rejected_with_a_reason(base, tmp_path, monkeypatch):
    """2 query points, circles covering a region across 4 blocks: blocks without points lose nothing."""
    rng = np.random.default_rng(11)
    pool, images = [], {}
    for i in range(80):
        lat, lon = rng.uniform(44.998, 45.04), rng.uniform(9.035, 9.09)  # some outside the region
        pid = f"flickr-{2000 + i}"
        pool.append(GroundPhoto(photo_id=pid, lat=lat, lon=lon, taken_at=dt.datetime(2021, 5, 3, 10, 0),
                                source="flickr", uri=f"https://example.invalid/{pid}.jpg", license="CC BY 2.0"))
        images[pid] = jpeg_with_gps(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), None, None, None)
    monkeypatch.setattr(FakeFlickr, "pool", pool)
    monkeypatch.setattr(FakeFlickr, "images", images)
    monkeypatch.setattr(FakeFlickr, "broken", set())
    monkeypatch.setattr("graft.pipeline.build.ground_flickr.FlickrSource", FakeFlickr)
    # The region straddles the UTM 32N lines x = 505 km and y = 4985 km: four 5 km blocks.
    data = build_config(base.world, tmp_path / "ds", **{
        "region": {"bbox": [9.045, 45.005, 9.08, 45.032], "block_km": 5.0},
        "ground": {"kind": "flickr", "n_points": 2, "seed": 0, "short_side": 64,
                   "flickr": {"min_taken": "2020-01-01", "max_taken": "2022-12-31", "radius_km": 3.0}},
    })
    cfg = validate(BuildConfig, data)
    region = Region.from_config(cfg.region)
    assert len(region.block_ids) == 4
    plan = plan_build(cfg)
    points = [q for t in plan.tasks for q in t.query_points]
    assert len(points) == 2 and len({t.partition for t in plan.tasks if t.query_points}) < 4
    assert [t.partition for t in plan.tasks] == region.block_ids  # the circles reach every block

    summary = build_dataset(cfg)
    found = {p.photo_id for p in pool
             if min(haversine_m(la, lo, p.lat, p.lon) for la, lo in points) <= 3000.0}
    inside = {p.photo_id for p in pool if region.contains([p.lat], [p.lon])[0]}
    found_inside = found & inside
    kept = {r["photo_id"] for r in _manifest(tmp_path / "ds")}
    rejected = {e["item"]: e["reason"] for e in summary.stats["rejections"]["examples"]}
    assert len(found_inside) >= 30 and kept <= found_inside
    lost = found_inside - kept - set(rejected)
    assert not lost, f"{len(lost)} photos found inside the region were neither kept nor rejected"
    counts = summary.stats["rejections"]["counts"]
    assert len(kept) + sum(n for r, n in counts.items() if r != "outside_region") == len(found_inside)
    # A photo outside the region found from two blocks' own points is counted by each (left as is).
    assert counts.get("outside_region", 0) >= len(found - inside)
    table = summary.table()
    for reason in {rejected[i] for i in found_inside - kept}:
        assert reason in table


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(("override", "key", "message"), [
    ({"ground.max_per_tyle": 25}, "ground.max_per_tyle", "unknown key"),
    ({"fetch_workers": "many"}, "fetch_workers", "integer"),
    ({"ground.folder.root": "/no/such/folder"}, "ground.folder", "folder.root: /no/such/folder"),
    ({"region.bbox": [9.1, 45.0, 9.0, 45.1]}, "region.bbox", "min_lon < max_lon"),
    ({"satellite.kind": "landsat"}, "satellite.kind", "sentinel2"),
    ({"satellite.geotiff.size": 64}, "satellite", "contradicts geotiff.size"),
    ({"split.train": 0.9}, "split", "sum to 1"),
    ({"filter.kind": "resnet18-places365", "filter.decision": "top10_vote", "filter.threshold": 2},
     "filter.threshold", "less than or equal"),
])
def test_config_errors_name_the_key_before_any_work(base, tmp_path, capsys, override, key, message):
    data = build_config(base.world, tmp_path / "never", **override)
    with pytest.raises(ConfigError) as err:
        load_build_config(_write_yaml(tmp_path / "bad.yaml", data))
    assert f"- {key}" in str(err.value) and message in str(err.value)
    assert graft_main(["build", str(tmp_path / "bad.yaml")]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "never").exists(), "nothing may be written before the config is valid"


def test_override_and_missing_sections(base, tmp_path):
    data = build_config(base.world, tmp_path / "x")
    cfg = load_build_config(_write_yaml(tmp_path / "ok.yaml", data), ["satellite.tile_size=48", "seed=7"])
    assert cfg.satellite.tile_size == 48 and cfg.satellite.geotiff.size == 48 and cfg.seed == 7
    del data["ground"]["folder"]
    with pytest.raises(ConfigError, match="'folder' section"):
        validate(BuildConfig, data)
    with pytest.raises(ConfigError, match="exactly one of region.bbox"):
        validate(RegionConfig, {"bbox": REGION, "polygon": str(tmp_path / "ok.yaml")})


# ---------------------------------------------------------------- region


def test_region_blocks_and_sampling(tmp_path):
    region = Region.from_config(RegionConfig(bbox=REGION, block_km=2.0))
    assert region.crs == "EPSG:32632" and len(region.block_ids) >= 12
    rng = np.random.default_rng(0)
    lat, lon = region.sample_points(500, rng)
    assert region.contains(lat, lon).all()
    blocks = region.block_of(lat, lon)
    assert set(blocks.tolist()) <= set(region.block_ids)
    b = region.block(int(blocks[0]))
    from graft.geometry import lonlat_to_crs

    x, y = lonlat_to_crs(lon[0], lat[0], region.crs)
    assert b.bounds[0] <= x < b.bounds[2] and b.bounds[1] <= y < b.bounds[3]
    assert region.block_of(np.array([50.0]), np.array([20.0]))[0] == -1


def test_polygon_files(tmp_path):
    gj = tmp_path / "r.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [[[9, 45], [9.06, 45], [9, 45.06], [9, 45]]]}}]}))
    poly = read_polygon(gj)
    assert poly.area == pytest.approx(0.06 * 0.06 / 2)
    shp = tmp_path / "r.shp"
    shp.write_bytes(b"not really a shapefile")
    try:
        import pyogrio  # noqa: F401
    except ImportError:
        try:
            import fiona  # noqa: F401
        except ImportError:
            with pytest.raises(ValueError, match="pyogrio"):
                read_polygon(shp)


# ---------------------------------------------------------------- polygon region + CLIP filter + cloudy chips


class CloudySource:
    """Real chips, except that tiles east of ``lon`` come back cloudy."""

    name = "geotiff"

    def __init__(self, inner, lon: float):
        self.inner, self.lon, self.rejections, self.rejected = inner, lon, inner.rejections, 0

    def fetch(self, grid, date):
        _, lon = grid.latlon_of(grid.size / 2, grid.size / 2)
        if float(lon) > self.lon:
            self.rejected += 1
            raise ChipRejected("cloudy_chip", "simulated clouds")
        return self.inner.fetch(grid, date)


def test_polygon_region_clip_filter_and_rejected_chips(base, tmp_path):
    gj = tmp_path / "triangle.geojson"
    gj.write_text(json.dumps({"type": "Polygon", "coordinates": [[[9, 45], [9.08, 45], [9, 45.06], [9, 45]]]}))
    spec = tiny_clip_spec(tmp_path / "clip")
    data = build_config(base.world, tmp_path / "ds", **{
        "region": {"polygon": str(gj), "block_km": 2.0},
        "filter": {"kind": "clip", "clip": spec.model_dump(), "decision": "threshold", "batch_size": 16},
    })
    cfg = validate(BuildConfig, data)
    # Threshold at the median score of the photos inside the triangle, so about half are "indoor"
    # (above the filter guard's default limit, which this test is not about: raised).
    region = Region.from_config(cfg.region)
    inside = [n for n, (la, lo) in base.world.photos.items() if region.contains([la], [lo])[0]]
    jpegs = [prepare_photo((base.world.photos_dir / n).read_bytes(), 64).jpeg for n in inside]
    flt = IndoorFilter(cfg.filter)
    threshold = float(np.median(flt.score(jpegs)))
    cfg = validate(BuildConfig, {**data, "filter": {**data["filter"], "threshold": threshold,
                                                    "max_reject_share": 0.8}})

    source = CloudySource(GeoTiffSource(cfg.satellite.geotiff), lon=9.03)
    summary = build_dataset(cfg, satellite=source)
    manifest = _manifest(tmp_path / "ds")
    counts = summary.stats["rejections"]["counts"]

    assert manifest and all(region.contains([r["lat"]], [r["lon"]])[0] for r in manifest)
    assert counts["outside_region"] == len(base.world.photos) - len(inside)
    assert counts["indoor"] > 0 and all(r["outdoor_score"] >= np.float32(threshold) for r in manifest)
    # the stored score is the filter's score of the stored (prepared) JPEG
    by_id = {r["photo_id"]: r for r in manifest}
    some = sorted(by_id)[:8]
    shard_imgs = {}
    for shard in {by_id[p]["photo_shard"] for p in some}:
        for s in wds.WebDataset(f"{tmp_path / 'ds'}/{shard}", shardshuffle=False, empty_check=False):
            shard_imgs[s["__key__"]] = s["jpg"]
    direct = flt.score([shard_imgs[p] for p in some])
    assert np.allclose(direct, [by_id[p]["outdoor_score"] for p in some], atol=1e-5)

    assert source.rejected > 0 and summary.stats["tile_rejections"] == {"cloudy_chip": source.rejected}
    assert counts["tile_cloudy_chip"] >= source.rejected
    assert all(r["lon"] < 9.035 for r in manifest), "photos of cloudy tiles must be dropped"


def test_a_partition_caps_gdals_block_cache_and_the_cap_is_operational(base, tmp_path):
    from rasterio.env import get_gdal_config

    cfg = base.cfg.model_copy(update={"out_dir": str(tmp_path / "ds"), "gdal_cache_mb": 24})
    assert cfg.fingerprint() == base.cfg.fingerprint()  # a resumed build may use another cap
    task = next(t for t in plan_build(cfg).tasks if t.photos)
    stats = run_partition(cfg, task)
    assert stats["counts"]["input"] == len(task.photos)
    assert int(get_gdal_config("GDAL_CACHEMAX")) == 24 * 1024 * 1024


# ---------------------------------------------------------------- Flickr path (with a stand-in client)


class FakeFlickr:
    """Stands in for FlickrSource (no network): serves a fixed pool of photos by distance."""

    pool: list[GroundPhoto] = []
    images: dict[str, bytes] = {}
    broken: set[str] = set()

    def __init__(self, cfg, rejections, bucket=None):
        self.cfg, self.rejections = cfg, rejections
        self.counters = Counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def search(self, lat, lon, radius_km=None, start=None, end=None):
        r = (radius_km or self.cfg.radius_km) * 1000
        return [dataclasses.replace(p) for p in self.pool if haversine_m(lat, lon, p.lat, p.lon) <= r]

    def download(self, photo):
        if photo.photo_id in self.broken:
            self.rejections.add("download_failed:http_404", photo.photo_id, "gone")
            return None
        photo.image = self.images[photo.photo_id]
        self.counters["downloads"] += 1
        return photo


def test_flickr_query_points_search_and_partition_ownership(base, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    pool, images = [], {}
    for i in range(40):
        lat, lon = rng.uniform(45.0, 45.06), rng.uniform(9.0, 9.08)
        if i == 0:
            lat, lon = 45.061, 9.04  # just north of the region
        pid = f"flickr-{1000 + i}"
        taken = None if i % 9 == 4 else dt.datetime(2021, 1 + i % 12, 3, 10, 0)
        pool.append(GroundPhoto(photo_id=pid, lat=lat, lon=lon, taken_at=taken, source="flickr",
                                uri=f"https://example.invalid/{pid}.jpg", license="CC BY 2.0", owner=f"user{i}"))
        images[pid] = jpeg_with_gps(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), None, None, None)
    # A re-upload: same place, same bytes, another id. Only the first (by id) is kept.
    pool[30] = dataclasses.replace(pool[30], lat=pool[29].lat, lon=pool[29].lon)
    images["flickr-1030"] = images["flickr-1029"]
    monkeypatch.setattr(FakeFlickr, "pool", pool)
    monkeypatch.setattr(FakeFlickr, "images", images)
    monkeypatch.setattr(FakeFlickr, "broken", {"flickr-1007"})
    monkeypatch.setattr("graft.pipeline.build.ground_flickr.FlickrSource", FakeFlickr)

    data = build_config(base.world, tmp_path / "ds", **{
        "ground": {"kind": "flickr", "n_points": 30, "seed": 3, "require_date": True, "short_side": 64,
                   "flickr": {"min_taken": "2020-01-01", "max_taken": "2022-12-31", "radius_km": 2.0}},
    })
    cfg = validate(BuildConfig, data)
    plan = plan_build(cfg)
    assert [t.query_points for t in plan.tasks] == [t.query_points for t in plan_build(cfg).tasks]
    region = Region.from_config(cfg.region)
    points = np.array([q for t in plan.tasks for q in t.query_points])
    assert len(points) == 30 and region.contains(points[:, 0], points[:, 1]).all()
    for t in plan.tasks:
        if t.query_points:
            assert set(region.block_of(*np.array(t.query_points).T).tolist()) == {t.partition}

    summary = build_dataset(cfg)
    manifest = _manifest(tmp_path / "ds")
    ids = [r["photo_id"] for r in manifest]
    assert manifest and len(ids) == len(set(ids)) and set(ids) <= {p.photo_id for p in pool}
    assert all(r["taken_at"] is not None and r["license"] == "CC BY 2.0" for r in manifest)
    for r in manifest:
        assert region.block_of([r["lat"]], [r["lon"]])[0] == r["partition"]
    counts = summary.stats["rejections"]["counts"]
    assert counts.get("no_date", 0) >= 1 and "flickr-1000" not in ids
    assert summary.stats["counts"]["search_results"] >= len(manifest) + counts.get("no_date", 0)
    assert summary.stats["counts"]["query_points"] == 30
    assert summary.stats["counts"]["flickr_downloads"] == summary.stats["counts"]["loaded"]
    assert counts["duplicate_content"] == 1 and "flickr-1029" in ids and "flickr-1030" not in ids


def test_filter_weights_retrained_into_the_same_file_change_the_fingerprint(base, tmp_path):
    """Why: the fingerprint held the weights' path only, so a build resumed after the filter was retrained into
    the same file kept partitions filtered by the old filter beside ones filtered by the new."""
    from safetensors.numpy import save_file

    weights = tmp_path / "filter.safetensors"
    w = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.zeros(2, np.float32)}

    def fingerprint():
        cfg = validate(BuildConfig, build_config(base.world, tmp_path / "ds", **{
            "filter.kind": "resnet18-binary", "filter.weights": str(weights)}))
        return cfg.fingerprint()

    save_file(w, str(weights), metadata={"arch": "resnet18", "image_size": "64"})
    first = fingerprint()
    # A deterministic retrain: the same tensors, but safetensors may order its header's keys differently.
    save_file(dict(reversed(w.items())), str(weights), metadata={"image_size": "64", "arch": "resnet18"})
    assert fingerprint() == first
    save_file({**w, "fc.bias": np.ones(2, np.float32)}, str(weights), metadata={"arch": "resnet18", "image_size": "64"})
    assert fingerprint() != first
