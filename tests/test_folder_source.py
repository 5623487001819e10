"""graft.sources.folder: EXIF GPS/date parsing, sidecars, and a reason for every rejected file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import ExifTags
from PIL.TiffImagePlugin import IFDRational

from graft.config import ConfigError, validate
from graft.demo.exif import AUTO, encode_photo, gps_exif
from graft.rejections import PhotoRejected, Rejections
from graft.sources.folder import FolderConfig, FolderSource, photo_id_for

GPS = ExifTags.GPS
UTC = dt.timezone.utc


def photo_bytes(
    lat: float | None = None,
    lon: float | None = None,
    *,
    taken: str | None = None,
    offset: str | None = None,
    fmt: str = "JPEG",
    lat_ref: str | None = AUTO,
    lon_ref: str | None = AUTO,
    lat_value=None,
    lon_value=None,
    size: int = 16,
) -> bytes:
    """A small photo with whatever EXIF GPS/date fields are given (None = field absent)."""
    exif = gps_exif(lat, lon, taken, offset=offset, lat_ref=lat_ref, lon_ref=lon_ref, lat_value=lat_value,
                    lon_value=lon_value, make="graft-test", second_digits=6)
    return encode_photo(np.full((size, size, 3), 128, np.uint8), exif, fmt=fmt)


def _write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- EXIF parsing


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(48.8583701, 2.2944813), (-33.8567844, 151.2152966), (40.6892494, -74.0445004), (-22.951916, -43.2104872)],
)
def test_exif_round_trip_all_hemispheres(lat, lon):
    got_lat, got_lon, taken = FolderSource.parse_exif(photo_bytes(lat, lon))
    assert abs(got_lat - lat) < 1e-6 and abs(got_lon - lon) < 1e-6
    assert taken is None


def test_exif_png_round_trip():
    got = FolderSource.parse_exif(photo_bytes(12.5, -7.25, fmt="PNG", taken="2020:01:02 03:04:05"))
    assert got == (12.5, -7.25, dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC))


def test_dms_minutes_seconds_are_used():
    # 10 deg 30 min 36 s = 10.51 deg exactly.
    value = (IFDRational(10, 1), IFDRational(30, 1), IFDRational(36, 1))
    lat, lon, _ = FolderSource.parse_exif(photo_bytes(lat_value=value, lon_value=value, lat_ref="S", lon_ref="E"))
    assert lat == pytest.approx(-10.51, abs=1e-12) and lon == pytest.approx(10.51, abs=1e-12)


def test_date_with_offset_converted_to_utc():
    _, _, taken = FolderSource.parse_exif(photo_bytes(1, 1, taken="2021:05:06 07:08:09", offset="+02:00"))
    assert taken == dt.datetime(2021, 5, 6, 5, 8, 9, tzinfo=UTC)
    _, _, taken = FolderSource.parse_exif(photo_bytes(1, 1, taken="2021:12:31 23:30:00", offset="-05:00"))
    assert taken == dt.datetime(2022, 1, 1, 4, 30, 0, tzinfo=UTC)


def test_date_without_offset_is_wall_clock_labelled_utc():
    _, _, taken = FolderSource.parse_exif(photo_bytes(1, 1, taken="2021:05:06 07:08:09"))
    assert taken == dt.datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["0000:00:00 00:00:00", "    :  :     :  :  ", "yesterday"])
def test_unparseable_date_is_none_not_rejected(bad):
    lat, lon, taken = FolderSource.parse_exif(photo_bytes(5, 6, taken=bad))
    assert (lat, lon, taken) == (pytest.approx(5), pytest.approx(6), None)


def _reason(data: bytes) -> str:
    with pytest.raises(PhotoRejected) as info:
        FolderSource.parse_exif(data)
    return info.value.reason


def test_each_bad_exif_kind_has_its_reason():
    nan = (IFDRational(0, 0), IFDRational(0, 1), IFDRational(0, 1))
    assert _reason(photo_bytes()) == "no_gps"
    assert _reason(photo_bytes(10, 20, lat_ref=None)) == "gps_missing_ref"
    assert _reason(photo_bytes(10, 20, lon_ref=None)) == "gps_missing_ref"
    assert _reason(photo_bytes(10, 20, lat_ref="X")) == "gps_bad_ref"
    assert _reason(photo_bytes(lat_value=nan, lon=20, lat_ref="N")) == "gps_nan"
    assert _reason(photo_bytes(95, 20)) == "gps_out_of_range"
    assert _reason(photo_bytes(10, 181)) == "gps_out_of_range"
    assert _reason(photo_bytes(0, 0)) == "gps_zero"
    assert _reason(b"\xff\xd8 definitely not a jpeg") == "exif_unreadable"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lat=st.one_of(st.sampled_from([-90.0, 90.0, -1e-7, 1e-7, 89.9999999]),
                  st.floats(-90, 90, allow_nan=False)),
    lon=st.one_of(st.sampled_from([-180.0, 180.0, -1e-7, 1e-7, 179.9999999]),
                  st.floats(-180, 180, allow_nan=False)),
)
def test_property_exif_round_trip(lat, lon):
    # A point that rounds to exactly (0, 0) in EXIF is indistinguishable from "no fix" (gps_zero).
    assume(abs(lat) > 1e-9 or abs(lon) > 1e-9)
    got_lat, got_lon, _ = FolderSource.parse_exif(photo_bytes(lat, lon))
    # Seconds are stored to 1e-6 s = 2.8e-10 deg; allow float noise on top.
    assert abs(got_lat - lat) < 1e-9
    assert abs(got_lon - lon) < 1e-9


# ---------------------------------------------------------------- scanning a folder


@pytest.fixture
def photo_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _write(root, "b/paris.jpg", photo_bytes(48.8583701, 2.2944813, taken="2019:07:14 12:00:00", offset="+02:00"))
    _write(root, "a/sydney.JPG", photo_bytes(-33.8567844, 151.2152966))
    _write(root, "c/rio.png", photo_bytes(-22.951916, -43.2104872, fmt="PNG"))
    _write(root, "top.jpeg", photo_bytes(40.6892494, -74.0445004, taken="garbage"))
    _write(root, "bad/nogps.jpg", photo_bytes())
    _write(root, "bad/noref.jpg", photo_bytes(10, 20, lat_ref=None))
    _write(root, "bad/nan.jpg", photo_bytes(lat_value=(IFDRational(0, 0),), lon=20, lat_ref="N"))
    _write(root, "bad/range.jpg", photo_bytes(91, 20))
    _write(root, "bad/garbage.jpg", b"not an image")
    _write(root, "notes.txt", b"ignored: not a photo extension")
    return root


def test_scan_keeps_good_rejects_bad_with_reasons(photo_tree: Path):
    ledger = Rejections()
    src = FolderSource(FolderConfig(root=str(photo_tree), workers=3), ledger)
    photos = list(src.scan())
    rels = [p.extra["rel_path"] for p in photos]
    assert rels == ["a/sydney.JPG", "b/paris.jpg", "c/rio.png", "top.jpeg"]  # sorted, deterministic
    assert dict(ledger.counts) == {"no_gps": 1, "gps_missing_ref": 1, "gps_nan": 1, "gps_out_of_range": 1,
                                   "exif_unreadable": 1}
    assert {e["item"] for e in ledger.examples} == {
        "bad/nogps.jpg", "bad/noref.jpg", "bad/nan.jpg", "bad/range.jpg", "bad/garbage.jpg"}

    by_rel = dict(zip(rels, photos, strict=True))
    paris = by_rel["b/paris.jpg"]
    assert paris.lat == pytest.approx(48.8583701, abs=1e-6) and paris.lon == pytest.approx(2.2944813, abs=1e-6)
    assert paris.taken_at == dt.datetime(2019, 7, 14, 10, 0, 0, tzinfo=UTC)
    assert paris.extra["taken_at_tz"] == "offset"
    assert by_rel["top.jpeg"].taken_at is None
    for p in photos:
        assert p.source == "folder"
        assert "." not in p.photo_id and p.photo_id.startswith("folder-")
        assert Path(p.uri).is_absolute()
        assert src.load(p) == Path(p.uri).read_bytes()
    assert len({p.photo_id for p in photos}) == len(photos)
    # Ids depend only on the relative path: a second scan gives the same ones.
    again = [p.photo_id for p in FolderSource(FolderConfig(root=str(photo_tree))).scan()]
    assert again == [p.photo_id for p in photos]
    assert paris.photo_id == photo_id_for("b/paris.jpg")


def test_non_recursive_and_extensions(photo_tree: Path):
    src = FolderSource(FolderConfig(root=str(photo_tree), recursive=False))
    assert [p.extra["rel_path"] for p in src.scan()] == ["top.jpeg"]
    src = FolderSource(FolderConfig(root=str(photo_tree), extensions=["png"]))
    assert [p.extra["rel_path"] for p in src.scan()] == ["c/rio.png"]


def test_missing_root_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="folder.root"):
        FolderSource(FolderConfig(root=str(tmp_path / "nope")))


def test_config_rejects_unknown_keys_and_bad_sidecar_type():
    with pytest.raises(ConfigError, match="recursve"):
        validate(FolderConfig, {"root": "x", "recursve": True})
    with pytest.raises(ConfigError, match="sidecar"):
        validate(FolderConfig, {"root": "x", "sidecar": "positions.xlsx"})


# ---------------------------------------------------------------- sidecars


def _sidecar_tree(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "photos"
    # EXIF says Paris, the sidecar says somewhere else: the sidecar must win.
    _write(root, "x/with_exif.jpg", photo_bytes(48.85, 2.29, taken="2019:07:14 12:00:00"))
    _write(root, "x/plain.jpg", photo_bytes())
    _write(root, "x/bad_lat.jpg", photo_bytes())
    _write(root, "x/nan.jpg", photo_bytes())
    _write(root, "x/range.jpg", photo_bytes())
    _write(root, "x/empty.jpg", photo_bytes())
    _write(root, "unlisted_exif.jpg", photo_bytes(-1.5, 36.8))  # not in the sidecar: falls back to EXIF
    outside = _write(tmp_path / "elsewhere", "abs.jpg", photo_bytes())
    rows = [
        ("x/with_exif.jpg", "10.5", "-20.25", "2020-03-04T05:06:07Z"),
        ("x/plain.jpg", "-45.0", "170.0", ""),
        (str(outside), "1.0", "2.0", "2021-01-01 10:00:00+01:00"),
        ("x/missing.jpg", "1.0", "2.0", ""),
        ("x/bad_lat.jpg", "north", "2.0", ""),
        ("x/nan.jpg", "nan", "2.0", ""),
        ("x/range.jpg", "-91", "2.0", ""),
        ("x/empty.jpg", "", "2.0", ""),
        ("x/plain.jpg", "3.0", "4.0", ""),  # duplicate row
        ("", "3.0", "4.0", ""),
    ]
    return root, outside, rows


EXPECTED_SIDECAR_REJECTIONS = {"file_missing": 1, "sidecar_bad_row": 4, "gps_nan": 1, "gps_out_of_range": 1}


def _check_sidecar_scan(root: Path, outside: Path, sidecar: Path, dates: bool = True):
    ledger = Rejections()
    photos = list(FolderSource(FolderConfig(root=str(root), sidecar=str(sidecar)), ledger).scan())
    by_rel = {p.extra["rel_path"]: p for p in photos}
    assert sorted(by_rel) == sorted([outside.as_posix(), "unlisted_exif.jpg", "x/plain.jpg", "x/with_exif.jpg"])
    assert dict(ledger.counts) == EXPECTED_SIDECAR_REJECTIONS
    w = by_rel["x/with_exif.jpg"]
    assert (w.lat, w.lon) == (10.5, -20.25)
    assert w.taken_at == dt.datetime(2020, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert w.extra["taken_at_tz"] == "sidecar"
    assert (by_rel["x/plain.jpg"].lat, by_rel["x/plain.jpg"].lon) == (-45.0, 170.0)
    assert by_rel["x/plain.jpg"].taken_at is None
    a = by_rel[outside.as_posix()]
    assert a.uri == str(outside) and (a.lat, a.lon) == (1.0, 2.0)
    assert a.taken_at == dt.datetime(2021, 1, 1, 9, 0, 0, tzinfo=UTC)
    u = by_rel["unlisted_exif.jpg"]
    assert (round(u.lat, 6), round(u.lon, 6)) == (-1.5, 36.8)
    assert len({p.photo_id for p in photos}) == 4


def test_sidecar_csv(tmp_path: Path):
    root, outside, rows = _sidecar_tree(tmp_path)
    csv = tmp_path / "positions.csv"
    csv.write_text("path,lat,lon,taken_at\n" + "".join(",".join(r) + "\n" for r in rows))
    _check_sidecar_scan(root, outside, csv)


def test_sidecar_parquet(tmp_path: Path):
    root, outside, rows = _sidecar_tree(tmp_path)

    def num(s: str) -> float | None:
        try:
            return float(s) if s else None
        except ValueError:
            return None

    # Parquet carries real types: lat/lon floats (the non-numeric row becomes null) and UTC timestamps.
    def ts(s: str) -> dt.datetime | None:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC) if s else None

    table = pa.table({
        "path": [r[0] for r in rows],
        "lat": pa.array([num(r[1]) for r in rows], pa.float64()),
        "lon": pa.array([num(r[2]) for r in rows], pa.float64()),
        "taken_at": pa.array([ts(r[3]) for r in rows], pa.timestamp("us", tz="UTC")),
    })
    path = tmp_path / "positions.parquet"
    pq.write_table(table, path)
    _check_sidecar_scan(root, outside, path)


def test_sidecar_missing_column_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "photos"
    root.mkdir()
    csv = tmp_path / "s.csv"
    csv.write_text("path,lat,lon\na.jpg,1,2\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['taken_at'\]"):
        list(FolderSource(FolderConfig(root=str(root), sidecar=str(csv))).scan())
