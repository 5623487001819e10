"""A generated corpus of bad inputs, mixed with good photos in one folder, through the real ``graft build``.

:func:`make_corpus` writes every file from code (nothing binary is checked
in): broken, truncated, CMYK, 16-bit, alpha, bilevel, tiny and oversized
images; EXIF GPS that is missing, NaN, out of range, without a hemisphere or
with a wrong one; photos outside the region and outside the satellite
imagery, over an all-nodata GeoTIFF and on its edge; a byte-identical copy;
a broken symlink; bad sidecar rows; GeoTIFFs without a CRS, of the wrong
dtype or unreadable. It records, per file (or sidecar row, or GeoTIFF), the
reason the build must give. The build must reject each with exactly that
reason and keep every good photo.

Fully cloudy chips cannot come from a GeoTIFF (that source has no cloud
check), so the same folder is also built against Sentinel-2 through the fake
Earth Engine (tests/fakes/fake_ee.py) with clouds over part of the region.
Degenerate regions and duplicate class lists (evaluation) close the file.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.warp
from affine import Affine
from fakes.fake_ee import FakeEE, ms
from helpers_build import write_mosaic
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from graft.config import validate
from graft.demo.exif import gps_exif
from graft.evaluation.datasets import load_csv_multilabel, load_imagefolder, load_segmentation
from graft.geometry import crs_to_lonlat
from graft.pipeline.build import BuildConfig, build_dataset
from graft.pipeline.build.empty_build import EmptyBuildError
from graft.pipeline.region import Region, RegionConfig
from graft.sources.earthengine import Sentinel2Source
from graft.sources.folder import photo_id_for

GPS = ExifTags.GPS
# Wider than the mosaic (which ends near 9.09 E): the east holds the nodata GeoTIFF and no imagery at all.
REGION = [9.0, 45.0, 9.16, 45.06]
MAX_PIXELS = 100_000  # ground.max_pixels: a 400x400 photo is a "decompression bomb" here
CLOUDY_EAST_OF = 9.06  # Sentinel-2 fake: chips east of this longitude are fully cloudy
TAKEN = "2021:06:12 10:00:00"
S2 = "COPERNICUS/S2_SR_HARMONIZED"


# ---------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    root: Path
    photos: Path
    sidecar: Path
    tifs: list[str]
    good: dict[str, tuple[float, float]] = field(default_factory=dict)  # file -> (lat, lon)
    bad: dict[str, str] = field(default_factory=dict)  # file -> reason
    bad_rows: dict[int, str] = field(default_factory=dict)  # sidecar row (1-based) -> reason
    bad_tifs: dict[str, str] = field(default_factory=dict)  # GeoTIFF path or pattern -> reason

    @property
    def size(self) -> int:
        return len(self.bad) + len(self.bad_rows) + len(self.bad_tifs)


def _exif(lat: float | None, lon: float | None, **kw: object) -> Image.Exif:
    """EXIF with a capture date and whichever GPS fields are given (None: absent); see :func:`gps_exif`."""
    return gps_exif(lat, lon, TAKEN, make="graft-corpus", **kw)


def _encode(img: Image.Image, fmt: str, exif: Image.Exif | None, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"exif": exif} if exif is not None else {}), **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header claiming another size (the pixel data is not touched)."""
    b = bytearray(jpeg)
    i = b.find(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def _write_tif(path: Path, data: np.ndarray, crs: str | None, bounds: tuple[float, float, float, float],
               nodata: float | None = None) -> Path:
    count, h, w = data.shape
    west, south, east, north = bounds
    transform = Affine((east - west) / w, 0, west, 0, -(north - south) / h, north)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype.name,
                       crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


def make_corpus(root: Path, seed: int = 0) -> Corpus:
    """Write the corpus under ``root``: ``photos/`` (good and bad together), ``sidecar.csv``, GeoTIFFs."""
    rng = np.random.default_rng(seed)
    photos = root / "photos"
    photos.mkdir(parents=True)
    mosaic = write_mosaic(root / "mosaic.tif")
    with rasterio.open(mosaic) as src:
        west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    c = Corpus(root=root, photos=photos, sidecar=root / "sidecar.csv", tifs=[str(mosaic)])

    def pixels(h: int = 48, w: int = 64, channels: int = 3) -> np.ndarray:
        base = rng.integers(30, 220, channels)
        return np.clip(base + rng.integers(-25, 25, (h, w, channels)), 0, 255).astype(np.uint8)

    def rgb(h: int = 48, w: int = 64) -> Image.Image:
        return Image.fromarray(pixels(h, w))

    spot = iter([(45.005 + 0.0021 * (i % 23), 9.005 + 0.0031 * (i // 23)) for i in range(23 * 17)])

    def somewhere() -> tuple[float, float]:
        """A fresh point well inside the mosaic and west of the cloudy strip (for photos rejected before tiling)."""
        lat, lon = next(spot)
        assert lon < CLOUDY_EAST_OF - 0.004
        return lat, lon

    def put(name: str, data: bytes, reason: str | None = None, at: tuple[float, float] | None = None) -> None:
        (photos / name).write_bytes(data)
        if reason is None:
            c.good[name] = at
        else:
            c.bad[name] = reason

    def jpeg_at(lat: float, lon: float, **kw: object) -> bytes:
        return _encode(rgb(), "JPEG", _exif(lat, lon, **kw), quality=90)

    # -- good photos: a grid over the covered area (the east column lies under the Sentinel-2 clouds)
    for i, lat in enumerate((45.012, 45.027, 45.042, 45.054)):
        for j, lon in enumerate((9.012, 9.032, 9.052, 9.072)):
            put(f"good_{i}{j}.jpg", jpeg_at(lat, lon), at=(lat, lon))
    for name, img, fmt in (("good_png.png", rgb(), "PNG"), ("good_grey.jpg", rgb().convert("L"), "JPEG"),
                           ("good_palette.png", rgb().convert("P"), "PNG"),
                           ("good_large.jpg", rgb(240, 320), "JPEG")):
        lat, lon = somewhere()
        put(name, _encode(img, fmt, _exif(lat, lon)), at=(lat, lon))
    lat, lon = somewhere()
    put("good_rotated.jpg", jpeg_at(lat, lon, orientation=6), at=(lat, lon))
    lat, lon = somewhere()
    put("good_lowercase_refs.jpg", jpeg_at(lat, lon, lat_ref="n", lon_ref="e"), at=(lat, lon))
    lat, lon = somewhere()
    put("good_degrees_only.jpg", jpeg_at(lat, lon, lat_value=(IFDRational(round(lat * 1e6), 10**6),),
                                         lon_value=(IFDRational(round(lon * 1e6), 10**6),)), at=(lat, lon))
    lat, lon = somewhere()
    put("good_seconds_60.jpg", jpeg_at(lat, lon, lat_value=(IFDRational(45, 1), IFDRational(0, 1),
                                                            IFDRational(60, 1))), at=(45 + 1 / 60, lon))

    # -- EXIF / GPS
    lat, lon = somewhere()
    nan = (IFDRational(0, 0), IFDRational(0, 1), IFDRational(0, 1))
    put("gps_none.jpg", jpeg_at(None, None), "no_gps")
    put("gps_none.png", _encode(rgb(), "PNG", _exif(None, None)), "no_gps")
    put("gps_no_lat_ref.jpg", jpeg_at(lat, lon, lat_ref=None), "gps_missing_ref")
    put("gps_no_lon_ref.jpg", jpeg_at(lat, lon, lon_ref=None), "gps_missing_ref")
    put("gps_no_refs.png", _encode(rgb(), "PNG", _exif(lat, lon, lat_ref=None, lon_ref=None)), "gps_missing_ref")
    put("gps_lat_ref_x.jpg", jpeg_at(lat, lon, lat_ref="X"), "gps_bad_ref")
    put("gps_lon_ref_n.jpg", jpeg_at(lat, lon, lon_ref="N"), "gps_bad_ref")
    put("gps_nan_lat.jpg", jpeg_at(lat, lon, lat_value=nan), "gps_nan")
    put("gps_nan_lon.jpg", jpeg_at(lat, lon, lon_value=nan), "gps_nan")
    put("gps_inf_lat.jpg", jpeg_at(lat, lon, lat_value=(IFDRational(1, 0),)), "gps_nan")
    put("gps_lat_95.jpg", jpeg_at(95.0, lon), "gps_out_of_range")
    put("gps_lon_181.jpg", jpeg_at(lat, 181.0), "gps_out_of_range")
    put("gps_minutes_61.jpg", jpeg_at(lat, lon, lat_value=(IFDRational(45, 1), IFDRational(61, 1),
                                                           IFDRational(0, 1))), "gps_out_of_range")
    put("gps_four_parts.jpg", jpeg_at(lat, lon, lat_value=(IFDRational(45, 1),) * 4), "gps_out_of_range")
    put("gps_zero.jpg", jpeg_at(0.0, 0.0), "gps_zero")
    put("exif_random_bytes.jpg", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), "exif_unreadable")
    put("exif_empty_file.jpg", b"", "exif_unreadable")
    put("exif_text_file.png", b"<html>404 Not Found</html>\n" * 8, "exif_unreadable")
    os.symlink(photos / "no_such_target.jpg", photos / "broken_symlink.jpg")
    c.bad["broken_symlink.jpg"] = "file_missing"

    # -- where the photo is
    put("outside_region_north.jpg", jpeg_at(45.2, 9.05), "outside_region")
    put("outside_region_west.jpg", jpeg_at(45.03, 8.9), "outside_region")
    for i, lat in enumerate((45.015, 45.03, 45.045)):
        put(f"no_imagery_{i}.jpg", jpeg_at(lat, 9.145), "tile_outside_coverage")
    nodata_bounds = (9.10, 45.01, 9.125, 45.05)
    c.tifs.append(str(_write_tif(root / "all_nodata.tif", np.zeros((3, 40, 40), np.uint16), "EPSG:4326",
                                 nodata_bounds, nodata=0)))
    for i, lat in enumerate((45.02, 45.04)):
        put(f"nodata_{i}.jpg", jpeg_at(lat, 9.1125), "tile_nodata")
    put("imagery_edge.jpg", jpeg_at(45.03, east), "tile_nodata")  # half the tile lies beyond the mosaic

    # -- what the file holds (all located inside the imagery: only the pixels are wrong)
    good_jpeg = jpeg_at(*somewhere())
    put("truncated_scan.jpg", good_jpeg[: int(len(good_jpeg) * 0.7)], "truncated_image")
    put("truncated_header.jpg", jpeg_at(*somewhere())[:400], "truncated_image")
    png = _encode(rgb(), "PNG", _exif(*somewhere()))
    put("truncated.png", png[: int(len(png) * 0.7)], "truncated_image")
    broken = bytearray(jpeg_at(*somewhere()))
    sos = broken.find(b"\xff\xda")
    for i in range(sos + 20, len(broken) - 2, 3):
        broken[i] = 0xFF if broken[i] != 0xFF else 0x00  # markers all over the entropy-coded data
    put("corrupt_scan.jpg", bytes(broken), "corrupt_image")
    for name, start, junk in (("corrupt_idat.png", 8, b"\x00" * 32), ("corrupt_zlib_header.png", 4, b"\xff\xff")):
        png = bytearray(_encode(rgb(), "PNG", _exif(*somewhere())))
        at = png.find(b"IDAT") + start
        png[at:at + len(junk)] = junk
        put(name, bytes(png), "corrupt_image")
    put("cmyk.jpg", _encode(Image.new("CMYK", (64, 48), (10, 20, 30, 40)), "JPEG", _exif(*somewhere())),
        "cmyk_image")
    grey16 = Image.fromarray(rng.integers(0, 65535, (48, 64), dtype=np.uint16))
    assert grey16.mode.startswith("I;16")
    put("grey_16bit.png", _encode(grey16, "PNG", _exif(*somewhere())), "high_bit_depth")
    put("rgba.png", _encode(Image.fromarray(pixels(channels=4), "RGBA"), "PNG", _exif(*somewhere())), "alpha_channel")
    put("grey_alpha.png", _encode(Image.fromarray(pixels(channels=2), "LA"), "PNG", _exif(*somewhere())),
        "alpha_channel")
    put("palette_transparent.png", _encode(rgb().convert("P"), "PNG", _exif(*somewhere()), transparency=0),
        "alpha_channel")
    put("rgb_transparent.png", _encode(rgb(), "PNG", _exif(*somewhere()), transparency=(0, 0, 0)), "alpha_channel")
    put("bilevel.png", _encode(rgb().convert("1"), "PNG", _exif(*somewhere())), "unsupported_mode")
    put("tiny.jpg", _encode(rgb(20, 64), "JPEG", _exif(*somewhere())), "too_small")
    put("bomb_400x400.jpg", _encode(rgb(400, 400), "JPEG", _exif(*somewhere())), "decompression_bomb")
    put("bomb_header_12000.jpg", _with_sof_size(jpeg_at(*somewhere()), 12000, 12000), "decompression_bomb")
    put("bomb_header_65000.jpg", _with_sof_size(jpeg_at(*somewhere()), 65000, 65000), "decompression_bomb")
    put("bomb_ihdr.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""), "decompression_bomb")
    # the copy sorts after its original, so the copy is the one dropped
    put("zz_copy_of_good_00.jpg", (photos / "good_00.jpg").read_bytes(), "duplicate_content")

    # -- a sidecar: listed files take its position (a file it lists with a bad row is rejected for the row)
    lat, lon = somewhere()
    for name in ("sc_good.jpg", "sc_bad_1.jpg", "sc_bad_2.jpg", "sc_bad_3.jpg", "sc_bad_4.jpg", "sc_bad_5.jpg"):
        (photos / name).write_bytes(_encode(rgb(), "JPEG", _exif(None, None)))  # no GPS in EXIF
    c.good["sc_good.jpg"] = (lat, lon)
    rows = [
        ("sc_good.jpg", lat, lon, "2021-06-12T10:00:00", None),
        ("", lat, lon, "", "sidecar_bad_row"),  # empty path
        ("sc_bad_1.jpg", "north", lon, "", "sidecar_bad_row"),  # not a number
        ("sc_bad_2.jpg", "", lon, "", "sidecar_bad_row"),  # empty
        ("sc_bad_3.jpg", "nan", lon, "", "gps_nan"),
        ("sc_bad_4.jpg", 91.0, lon, "", "gps_out_of_range"),
        ("sc_bad_5.jpg", 0.0, 0.0, "", "gps_zero"),
        ("sc_not_there.jpg", lat, lon, "", "file_missing"),
        ("sc_good.jpg", lat, lon, "", "sidecar_bad_row"),  # listed twice
    ]
    lines = ["path,lat,lon,taken_at"] + [f"{p},{a},{o},{t}" for p, a, o, t, _ in rows]
    c.sidecar.write_text("\n".join(lines) + "\n")
    c.bad_rows = {i: r for i, (*_, r) in enumerate(rows, start=1) if r is not None}

    # -- satellite files the source must refuse (while the good ones keep working)
    bad_tifs = {
        str(_write_tif(root / "no_crs.tif", np.full((3, 16, 16), 500, np.uint16), None, (9.0, 45.0, 9.01, 45.01))):
            "geotiff_no_crs",
        str(_write_tif(root / "float.tif", np.full((3, 16, 16), 0.5, np.float32), "EPSG:4326",
                       (9.0, 45.0, 9.01, 45.01))): "geotiff_dtype",
        str(root / "not_a_tiff.tif"): "geotiff_unreadable",
        str(root / "missing" / "*.tif"): "geotiff_no_match",
    }
    (root / "not_a_tiff.tif").write_bytes(b"II*\x00 this is not a TIFF" * 4)
    c.tifs.extend(bad_tifs)
    c.bad_tifs = bad_tifs
    assert not set(c.good) & set(c.bad)
    return c


# ---------------------------------------------------------------- builds


def _config(corpus: Corpus, out: Path, region: list[float] = REGION, **satellite: object) -> BuildConfig:
    sat = satellite or {"kind": "geotiff", "geotiff": {"paths": corpus.tifs, "gsd": 10.0}, "tile_size": 32}
    return validate(BuildConfig, {
        "out_dir": str(out),
        "region": {"bbox": region, "block_km": 3.0},
        "ground": {"kind": "folder", "folder": {"root": str(corpus.photos), "sidecar": str(corpus.sidecar),
                                                "workers": 2},
                   "short_side": 64, "max_pixels": MAX_PIXELS},
        "filter": {"kind": "none"},
        "satellite": sat,
        # Every block trains: the corpus is about bad inputs, and a tile reaching into a block of
        # another split would be dropped as tile_crosses_split before its own verdict is reached.
        "split": {"train": 1.0, "val": 0.0, "test": 0.0},
        "fetch_workers": 2,
    })


def _ledger(stats: dict) -> dict[str, str]:
    """Rejected item -> reason, from stats.json (every reason once per item)."""
    out: dict[str, str] = {}
    for e in stats["rejections"]["examples"]:
        assert e["item"] not in out, f"{e['item']} rejected twice: {out[e['item']]} and {e['reason']}"
        out[e["item"]] = e["reason"]
    assert len(out) == stats["rejections"]["total"], "some rejections have no example: cannot check them all"
    return out


def _item_of(name: str) -> set[str]:
    # Scan-time rejections name the file; later stages name the photo id derived from it.
    return {name, photo_id_for(name)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> dict:
    cfg = _config(corpus, tmp_path_factory.mktemp("built") / "ds")
    summary = build_dataset(cfg)
    return {"cfg": cfg, "stats": summary.stats,
            "manifest": pq.read_table(Path(cfg.out_dir) / "manifest.parquet").to_pylist()}


def test_corpus_is_big_and_covers_every_kind(corpus):
    assert corpus.size >= 50
    reasons = set(corpus.bad.values()) | set(corpus.bad_rows.values()) | set(corpus.bad_tifs.values())
    assert reasons >= {
        "corrupt_image", "truncated_image", "cmyk_image", "high_bit_depth", "alpha_channel", "decompression_bomb",
        "no_gps", "gps_nan", "gps_out_of_range", "gps_missing_ref", "gps_bad_ref", "gps_zero", "exif_unreadable",
        "tile_outside_coverage", "tile_nodata", "geotiff_no_crs", "outside_region", "duplicate_content",
        "sidecar_bad_row", "file_missing", "unsupported_mode", "too_small",
    }


def test_every_bad_file_has_its_reason_and_every_good_photo_is_kept(corpus, built):
    stats, manifest = built["stats"], built["manifest"]
    assert stats["failures"] == [] and stats["partitions"]["failed"] == 0
    ledger = _ledger(stats)

    wrong = {}
    for name, reason in corpus.bad.items():
        got = {ledger[i] for i in _item_of(name) if i in ledger}
        if got != {reason}:
            wrong[name] = (reason, sorted(got))
    for row, reason in corpus.bad_rows.items():
        got = ledger.get(f"{corpus.sidecar}#row{row}")
        if got != reason:
            wrong[f"sidecar row {row}"] = (reason, got)
    assert not wrong, f"expected vs got: {wrong}"

    # Nothing else was rejected, and every good photo is in the manifest where it was taken.
    expected = Counter(corpus.bad.values()) + Counter(corpus.bad_rows.values())
    assert stats["rejections"]["counts"] == dict(expected)
    by_id = {r["photo_id"]: r for r in manifest}
    assert set(by_id) == {photo_id_for(n) for n in corpus.good}
    for name, (lat, lon) in corpus.good.items():
        row = by_id[photo_id_for(name)]
        assert abs(row["lat"] - lat) < 1e-6 and abs(row["lon"] - lon) < 1e-6, name
    assert stats["photos"]["kept"] == len(corpus.good)
    assert stats["photos"]["seen"] == stats["photos"]["kept"] + stats["photos"]["rejected"]

    # Tiles were refused for what the imagery holds, and the bad GeoTIFFs were refused at indexing.
    assert set(stats["tile_rejections"]) == {"outside_coverage", "nodata"}
    files = stats["satellite_file_rejections"]
    assert files["counts"] == dict(Counter(corpus.bad_tifs.values()))
    assert {e["item"]: e["reason"] for e in files["examples"]} == corpus.bad_tifs


class _CloudyScl:
    """The SCL band of the fake Sentinel-2 scene: cloud (9) on chips east of CLOUDY_EAST_OF, vegetation elsewhere."""

    def __call__(self, request: dict) -> np.ndarray:
        g = request["grid"]
        t, w, h = g["affineTransform"], g["dimensions"]["width"], g["dimensions"]["height"]
        x, y = t["translateX"] + t["scaleX"] * w / 2, t["translateY"] + t["scaleY"] * h / 2
        lon, _ = crs_to_lonlat(x, y, g["crsCode"])
        return np.full((h, w), 9 if float(lon) > CLOUDY_EAST_OF else 4, np.uint8)


def test_fully_cloudy_chips_drop_their_photos(corpus, built, tmp_path, monkeypatch):
    monkeypatch.delenv("EE_SERVICE_ACCOUNT_KEY_FILE", raising=False)
    fake = FakeEE()
    fake.add_image(S2, "20210610T101559_20210610T102043_T32TNR", ms("2021-06-10"),
                   properties={"CLOUDY_PIXEL_PERCENTAGE": 0.5},
                   bands={"B4": 1200, "B3": 900, "B2": 600, "SCL": _CloudyScl()})
    cfg = _config(corpus, tmp_path / "s2", kind="sentinel2", tile_size=32, gsd=10.0,
                  earthengine={"project": "test-project", "retry": {"max_attempts": 2, "initial_s": 0.001}})
    summary = build_dataset(cfg, satellite=Sentinel2Source(cfg.satellite.sentinel2, cfg.satellite.earthengine,
                                                           ee_module=fake))
    stats = summary.stats
    ledger = _ledger(stats)
    kept = {r["photo_id"] for r in pq.read_table(tmp_path / "s2" / "manifest.parquet").to_pylist()}

    cloudy = {n for n, (_, lon) in corpus.good.items() if lon > CLOUDY_EAST_OF}
    assert len(cloudy) >= 4 and len(cloudy) < len(corpus.good)
    for name in cloudy:
        assert ledger[photo_id_for(name)] == "tile_cloudy_chip", name
    assert kept == {photo_id_for(n) for n in corpus.good if n not in cloudy}
    assert stats["tile_rejections"]["cloudy_chip"] >= 1
    # The file-level verdicts do not depend on the satellite source.
    file_level = {i: r for i, r in _ledger(built["stats"]).items() if not r.startswith("tile_")}
    assert {i: r for i, r in ledger.items() if not r.startswith("tile_")} == file_level
    assert fake.compute_requests, "the fake Earth Engine was never asked for pixels"


# ---------------------------------------------------------------- degenerate regions


def test_a_region_without_photos_builds_an_empty_dataset(corpus, built, tmp_path):
    # An empty build is an error (issue 12), raised after its stats and manifest are written.
    with pytest.raises(EmptyBuildError, match="outside_region") as caught:
        build_dataset(_config(corpus, tmp_path / "empty", region=[10.0, 46.0, 10.05, 46.04]))
    stats = caught.value.summary.stats
    assert pq.read_table(tmp_path / "empty" / "manifest.parquet").num_rows == 0
    assert stats["photos"]["kept"] == 0 and stats["tiles"] == 0 and stats["failures"] == []
    assert stats["partitions"]["planned"] == 0
    # Every photo with a position is outside the region; the others keep their scan-time reason.
    located = built["stats"]["counts"]["located"]
    assert located >= len(corpus.good) and stats["counts"]["located"] == located
    assert stats["rejections"]["counts"]["outside_region"] == located
    scan_level = {r for r in corpus.bad.values() if r.startswith(("gps_", "no_gps", "exif_", "file_"))}
    for reason in scan_level:
        assert stats["rejections"]["counts"][reason] == built["stats"]["rejections"]["counts"][reason]
    for name in ("map.png", "photos_per_tile.png", "build_config.yaml", "stats.json"):
        assert (tmp_path / "empty" / name).is_file()


@pytest.mark.parametrize("geojson, message", [
    ({"type": "FeatureCollection", "features": []}, "holds no Polygon"),
    ({"type": "Polygon", "coordinates": [[[9.0, 45.0], [9.05, 45.0], [9.08, 45.0], [9.0, 45.0]]]}, "zero area"),
    ({"type": "Polygon", "coordinates": [[[9.0, 45.0], [9.0, 45.0], [9.0, 45.0], [9.0, 45.0]]]}, "zero area"),
])
def test_an_empty_region_polygon_is_refused_before_any_work(tmp_path, geojson, message):
    path = tmp_path / "region.geojson"
    path.write_text(json.dumps(geojson))
    with pytest.raises(ValueError, match=message):
        Region.from_config(RegionConfig(polygon=str(path), block_km=2.0))


# ---------------------------------------------------------------- evaluation class lists


def _imagefolder(root: Path, classes: list[str]) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (len(c) * 20 % 255, 80, 120)).save(root / c / "a.png")
    return root


@pytest.mark.parametrize("names", [
    ["forest", "river", "forest"],
    ["Forest", "river", "forest "],  # the CLIP tokenizer lowercases and strips: the same prompt
])
def test_duplicate_classnames_are_refused(tmp_path, names):
    root = _imagefolder(tmp_path / "ds", ["a_forest", "b_river", "c_woods"])
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(ValueError, match="duplicate class name"):
        load_imagefolder(root)
    with pytest.raises(ValueError, match="duplicate class name"):
        load_imagefolder(_imagefolder(tmp_path / "ds2", ["x", "y", "z"]), classnames=names)
    (root / "classnames.txt").write_text("forest\nriver\nwoods\n")
    assert load_imagefolder(root).classnames == ["forest", "river", "woods"]


def test_folder_names_that_prettify_to_the_same_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="duplicate class name"):
        load_imagefolder(_imagefolder(tmp_path / "ds", ["AnnualCrop", "annual_crop"]))


def test_duplicate_classes_txt_is_refused_for_csv_and_segmentation(tmp_path):
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    Image.new("RGB", (8, 8)).save(csv_root / "a.png")
    (csv_root / "labels.csv").write_text("path,labels\na.png,forest;river\n")
    (csv_root / "classes.txt").write_text("forest\nriver\nforest\n")
    with pytest.raises(ValueError, match=r"duplicate class\(es\) 'forest' \(entries 1 and 3\)"):
        load_csv_multilabel(csv_root)

    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(seg / "images" / "t.png")
    Image.new("L", (8, 8)).save(seg / "masks" / "t.png")
    (seg / "classes.txt").write_text("water\nroad\nwater\n")
    with pytest.raises(ValueError, match="duplicate class"):
        load_segmentation(seg)
    (seg / "classes.txt").write_text("water\nroad\n")
    assert load_segmentation(seg).classes == ["water", "road"]


def test_corpus_is_generated_not_checked_in():
    here = Path(__file__).parent
    binaries = [p for p in here.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")]
    assert binaries == []
