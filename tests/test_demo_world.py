"""The demo's synthetic world: map, labels, geotagged photos with (deliberately) broken EXIF, clusters, determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from graft.demo.exif import TAG_DATETIME_ORIGINAL, TAG_EXIF_IFD, TAG_GPS_IFD
from graft.demo.world import (
    CLASSES,
    EXIF_FAULTS,
    OUTSIDE,
    WorldConfig,
    cut_tile,
    generate_world,
    load_world,
    sample_single_class_tiles,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world") / "w", WorldConfig.quick(seed=3))


def _exif(path: Path):
    with Image.open(path) as im:
        exif = im.getexif()
        return exif.get_ifd(TAG_GPS_IFD), exif.get_ifd(TAG_EXIF_IFD)


def _degrees(dms) -> float:
    d, m, s = (float(v) for v in dms)
    return d + m / 60 + s / 3600


def test_classes_form_contiguous_irregular_regions(world):
    assert world.classes_path.read_text().split("\n")[:-1] == list(CLASSES)
    assert len(CLASSES) >= 6
    labels = world.labels
    assert labels.shape == (world.config.size_px,) * 2
    area = np.bincount(labels.ravel(), minlength=len(CLASSES)) / labels.size
    assert area.min() > 0.04, f"some class barely exists: {dict(zip(CLASSES, area.round(3), strict=True))}"
    for k, name in enumerate(CLASSES):
        comps, n = ndimage.label(labels == k)
        sizes = np.bincount(comps.ravel())[1:]
        # A few large blobs, not salt-and-pepper: the biggest region holds a good share of the class ...
        assert n <= 40 and sizes.max() >= 0.25 * sizes.sum(), f"{name}: {n} pieces, largest {sizes.max()}"
        # ... and regions are not axis-aligned rectangles.
        sl = ndimage.find_objects((comps == np.argmax(sizes) + 1).astype(int))[0]
        box = (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)
        assert sizes.max() / box < 0.9, f"{name}'s largest region fills its bounding box: looks like a square"


def test_overhead_classes_are_distinguishable_by_colour(world):
    samples = sample_single_class_tiles(world, 32, per_class=20, seed=0)
    feats = np.array([cut_tile(world, s.row, s.col, 32)[0].reshape(-1, 3).mean(0) for s in samples])
    truth = np.array([s.class_index for s in samples])
    assert set(truth) == set(range(len(CLASSES)))
    centroids = np.array([feats[truth == k].mean(0) for k in range(len(CLASSES))])
    pred = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == truth).mean() >= 0.95
    d = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    assert d[~np.eye(len(CLASSES), dtype=bool)].min() > 25, "two classes have nearly the same mean colour"


def test_geotiffs_have_crs_transform_and_tiling(world):
    grid = world.config.grid
    with rasterio.open(world.map_path) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == grid.transform
        assert (src.count, src.dtypes[0], src.width, src.height) == (3, "uint8", grid.size, grid.size)
        assert src.profile.get("tiled") and src.compression.name.lower() == "deflate"
        assert src.res == (10.0, 10.0)
    with rasterio.open(world.labels_path) as src:
        assert src.crs.to_epsg() == 32633 and src.transform == grid.transform
        assert src.count == 1 and src.read(1).max() == len(CLASSES) - 1
    # A plausible place in UTM zone 33N (12-18 E) and a >= 10 km map for the quick config.
    lat, lon = grid.latlon_of(grid.size / 2, grid.size / 2)
    assert 12 <= float(lon) <= 18 and 0 < float(lat) < 84
    assert grid.size * grid.gsd >= 10_000


def test_full_config_is_at_least_20km_with_six_classes():
    cfg = WorldConfig()
    assert cfg.size_px * cfg.gsd >= 20_000 and cfg.crs.startswith("EPSG:326")
    assert 0.03 <= cfg.bad_exif_frac <= 0.05 and cfg.indoor_frac >= 0.10


def test_good_exif_round_trips_to_recorded_position_and_date(world):
    good = world.good_photos()
    assert len(good) >= 0.9 * len(world.photos)
    for p in good[:: max(len(good) // 40, 1)]:
        gps, exif = _exif(world.root / p.path)
        lat = _degrees(gps[2]) * (1 if gps[1] == "N" else -1)
        lon = _degrees(gps[4]) * (1 if gps[3] == "E" else -1)
        assert lat == pytest.approx(p.lat, abs=1e-7) and lon == pytest.approx(p.lon, abs=1e-7)
        assert exif[TAG_DATETIME_ORIGINAL] == p.taken_at.replace("-", ":").replace("T", " ")
        row, col = world.grid.pixel_of(lat, lon)
        assert (float(row), float(col)) == pytest.approx((p.row, p.col), abs=1e-3)
        assert world.label_at(lat, lon) == p.class_index
    years = {int(p.taken_at[:4]) for p in good}
    assert len(years) >= 5 and min(years) >= 2017 and max(years) <= 2023


def test_bad_exif_is_bad_in_the_recorded_way(world):
    by_fault = {f: [p for p in world.photos if p.exif_fault == f] for f in EXIF_FAULTS}
    n_bad = sum(len(v) for v in by_fault.values())
    assert 0.03 <= n_bad / len(world.photos) <= 0.05
    for fault, photos in by_fault.items():
        assert photos, f"no photo with fault {fault}"
        for p in photos:
            gps, exif = _exif(world.root / p.path)
            if fault == "no_gps":
                assert len(gps) == 0 and TAG_DATETIME_ORIGINAL in exif
            elif fault == "gps_no_ref":
                assert 2 in gps and 4 in gps and 1 not in gps and 3 not in gps
            elif fault == "lat_out_of_range":
                assert _degrees(gps[2]) > 90 and gps[1] in ("N", "S")
            elif fault == "no_date":
                assert TAG_DATETIME_ORIGINAL not in exif and p.taken_at is None
                assert _degrees(gps[2]) == pytest.approx(abs(p.lat), abs=1e-7)


def test_indoor_share_captions_and_filter_set(world):
    indoor = [p for p in world.photos if p.indoor]
    assert len(indoor) / len(world.photos) >= 0.10
    with open(world.captions_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [p.path for p in world.photos]
    captions = {r["path"]: r["caption"] for r in rows}
    for p in indoor:
        assert not any(c in captions[p.path] for c in CLASSES), captions[p.path]
    outdoor_caps = [captions[p.path] for p in world.photos if not p.indoor]
    for name in CLASSES:  # the zero-shot prompt itself occurs, plus other wordings
        assert f"a photo of a {name}." in outdoor_caps
    assert len(set(outdoor_caps)) >= 40
    for sub in ("indoor", "outdoor"):
        files = sorted((world.filter_train_dir / sub).glob("*.jpg"))
        assert len(files) == world.config.filter_train_per_class
        with Image.open(files[0]) as im:
            assert im.size == (world.config.photo_px,) * 2


def test_uneven_density_with_a_dense_cluster(world):
    xy = np.array([[p.row, p.col] for p in world.photos]) * world.config.gsd
    tree = cKDTree(xy)
    within_100m = np.array([len(n) for n in tree.query_ball_point(xy, r=100.0)])
    assert within_100m.max() > 25, "no cluster denser than the 25-per-tile cap"
    # Very uneven: 1 km cells range from empty to crowded.
    cells = np.bincount((xy[:, 0] // 1000).astype(int) * 100 + (xy[:, 1] // 1000).astype(int))
    occupied = cells[cells > 0]
    assert occupied.max() >= 10 * np.median(occupied)
    # Every class has photos to learn from.
    counts = np.bincount([p.class_index for p in world.photos if not p.indoor], minlength=len(CLASSES))
    assert counts.min() >= 20, dict(zip(CLASSES, counts, strict=True))


def test_cut_tile_label_at_and_reload(world):
    rgb, mask = cut_tile(world, 100, 200, 64)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and mask.shape == (64, 64)
    np.testing.assert_array_equal(mask, world.labels[68:132, 168:232])
    with pytest.raises(ValueError, match="does not fit"):
        cut_tile(world, 10, 500, 64)
    assert world.label_at(0.0, 0.0) == OUTSIDE
    lats = np.array([p.lat for p in world.photos[:50]])
    lons = np.array([p.lon for p in world.photos[:50]])
    np.testing.assert_array_equal(world.label_at(lats, lons), [p.class_index for p in world.photos[:50]])
    again = load_world(world.root)
    assert again.photos == world.photos and again.config == world.config and again.grid == world.grid
    np.testing.assert_array_equal(again.rgb, world.rgb)
    for s in sample_single_class_tiles(world, 48, per_class=3, seed=1):
        assert (cut_tile(world, s.row, s.col, 48)[1] == s.class_index).all()


def _digest(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    small = dict(size_px=512, region_px=128, n_photos=240, n_hotspots=1, hotspot_photos=40, n_towns=3,
                 filter_train_per_class=4)
    generate_world(tmp_path / "a", WorldConfig(seed=7, **small))
    generate_world(tmp_path / "b", WorldConfig(seed=7, **small))
    generate_world(tmp_path / "c", WorldConfig(seed=8, **small))
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) == 240 + 8 + 5  # photos, filter set, map + labels + classes + captions + world.json
    assert a["map.tif"] != c["map.tif"] and a["photos/p00000.jpg"] != c["photos/p00000.jpg"]


def test_bad_config_and_missing_world_are_explained(tmp_path):
    with pytest.raises(ValueError, match="indoor_frac"):
        WorldConfig(indoor_frac=0.9)
    with pytest.raises(ValueError, match="hotspot_photos"):
        WorldConfig(n_photos=100, n_hotspots=2, hotspot_photos=40)
    with pytest.raises(FileNotFoundError, match="generate_world"):
        load_world(tmp_path)


def test_lookalike_variant_differs_from_the_rgb_world_only_where_it_should(tmp_path):
    """`graft demo --multispectral`'s world: class b wears class a's overhead look in RGB, and NIR tells them apart;
    labels, photos and every other class's pixels are the RGB world's."""
    small = dict(seed=5, size_px=512, region_px=128, n_photos=240, n_hotspots=1, hotspot_photos=40, n_towns=3,
                 filter_train_per_class=4)
    plain = generate_world(tmp_path / "rgb", WorldConfig(**small))
    ms = generate_world(tmp_path / "ms", WorldConfig(**small, lookalike=("forest", "city")))
    forest, city = CLASSES.index("forest"), CLASSES.index("city")
    labels = ms.labels
    np.testing.assert_array_equal(labels, plain.labels)
    assert (labels == city).mean() > 0.02 and (labels == forest).mean() > 0.02
    assert _digest(tmp_path / "ms" / "photos") == _digest(tmp_path / "rgb" / "photos")
    other = (labels != city)
    np.testing.assert_array_equal(ms.rgb[other], plain.rgb[other])
    with pytest.raises(ValueError, match="no near-infrared band"):
        plain.nir  # noqa: B018

    def look(world, k):  # per-channel mean and spread of the class's pixels
        px = world.rgb[labels == k].astype(float)
        return np.concatenate([px.mean(axis=0), px.std(axis=0)])

    # In RGB the city now has the forest's colour and texture statistics, which its own look does not ...
    assert np.abs(look(ms, city) - look(ms, forest)).max() < 8
    assert np.abs(look(plain, city) - look(plain, forest)).max() > 15
    # ... and in NIR the two are far apart, further than the spread within either.
    nir = ms.nir.astype(float)
    gap = nir[labels == forest].mean() - nir[labels == city].mean()
    assert gap > 3 * max(nir[labels == forest].std(), nir[labels == city].std())
