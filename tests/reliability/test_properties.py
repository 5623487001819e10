"""Property tests: EXIF/GPS parsing, coordinate validation, and lat/lon <-> tile pixel round trips.

Complements tests/test_folder_source.py (whose property test round-trips
auto-signed DMS coordinates through JPEG): here the hemisphere comes from the
ref tag alone, in any spelling Pillow writes (case, padding, bytes), the
coordinate in any of the three EXIF forms (D, DM, DMS), in JPEG and PNG; and
garbage of every shape (odd GPS values, mutated EXIF bytes, random files,
Flickr records, sidecar cells) must end in the documented rejection and
nothing else. tests/test_patch_index.py covers pixel -> patch indexing; the
geometry properties here (graft.geometry) cover lat/lon -> pixel -> lat/lon
on tile grids in every UTM zone, both hemispheres, at zone boundaries and the
antimeridian.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational
from pyproj import Geod

from graft.geometry import lonlat_to_crs, tile_grid_around, utm_epsg
from graft.pipeline.photos import prepare_photo
from graft.rejections import PhotoRejected, Rejections
from graft.sources.flickr import FlickrConfig, FlickrSource, _Region
from graft.sources.folder import FolderSource, check_lat_lon

GPS = ExifTags.GPS
# Every reason FolderSource.parse_exif may give (src/graft/sources/folder.py).
EXIF_REASONS = {"no_gps", "gps_missing_ref", "gps_bad_ref", "gps_nan", "gps_out_of_range", "gps_zero",
                "exif_unreadable", "truncated_image", "decompression_bomb", "file_missing"}
# Every reason prepare_photo may give (src/graft/pipeline/photos.py).
PHOTO_REASONS = {"corrupt_image", "truncated_image", "decompression_bomb", "cmyk_image", "high_bit_depth",
                 "alpha_channel", "unsupported_mode", "too_small"}
FLICKR_REASONS = {"bad_geo", "low_geo_accuracy", "license_not_allowed", "no_download_url"}
WGS84 = Geod(ellps="WGS84")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _image(fmt: str, exif: Image.Exif, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(buf, fmt, exif=exif)
    return buf.getvalue()


def _exif(gps_tags: dict) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "graft-property"  # Pillow drops a PNG's EXIF when the base IFD is empty
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    for tag, value in gps_tags.items():
        gps[tag] = value
    return exif


def _accepted(lat: float, lon: float) -> None:
    """What an accepted position must satisfy."""
    assert math.isfinite(lat) and math.isfinite(lon)
    assert -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0)


# ---------------------------------------------------------------- EXIF GPS: valid input round-trips


def _encode_coordinate(value: float, form: str) -> tuple[tuple[IFDRational, ...], Fraction]:
    """|value| as EXIF rationals in ``form`` (d, dm, dms), and the exact value those rationals hold."""
    x = Fraction(abs(value))
    if form == "d":
        deg = Fraction(round(x * 10**7), 10**7)
        return (IFDRational(deg.numerator, deg.denominator),), deg
    whole = int(x)
    if form == "dm":
        minutes = Fraction(round((x - whole) * 60 * 10**6), 10**6)
        return (IFDRational(whole, 1), IFDRational(minutes.numerator, minutes.denominator)), whole + minutes / 60
    minutes = int((x - whole) * 60)
    sec = Fraction(round((x - whole - Fraction(minutes, 60)) * 3600 * 10**4), 10**4)  # may round up to 60: allowed
    parts = (IFDRational(whole, 1), IFDRational(minutes, 1), IFDRational(sec.numerator, sec.denominator))
    return parts, whole + Fraction(minutes, 60) + sec / 3600


def _ref(letter: str) -> st.SearchStrategy:
    """Spellings of a hemisphere ref that cameras and tools write."""
    return st.sampled_from([letter, letter.lower(), f"{letter} ", f"{letter}\x00", letter.encode(),
                            f"{letter}\x00".encode()])


@FAST
@given(
    abs_lat=st.floats(0, 90), abs_lon=st.floats(0, 180),
    north=st.booleans(), east=st.booleans(), data=st.data(),
    form=st.sampled_from(["d", "dm", "dms"]), fmt=st.sampled_from(["JPEG", "PNG"]),
)
def test_exif_gps_round_trips_for_any_hemisphere_form_and_ref_spelling(abs_lat, abs_lon, north, east, data,
                                                                       form, fmt):
    lat_parts, lat_exact = _encode_coordinate(abs_lat, form)
    lon_parts, lon_exact = _encode_coordinate(abs_lon, form)
    lat_ref = data.draw(_ref("N" if north else "S"))
    lon_ref = data.draw(_ref("E" if east else "W"))
    photo = _image(fmt, _exif({GPS.GPSLatitudeRef: lat_ref, GPS.GPSLatitude: lat_parts,
                               GPS.GPSLongitudeRef: lon_ref, GPS.GPSLongitude: lon_parts}))
    want_lat = float(lat_exact) * (1 if north else -1)
    want_lon = float(lon_exact) * (1 if east else -1)
    if lat_exact == 0 and lon_exact == 0:
        with pytest.raises(PhotoRejected) as info:
            FolderSource.parse_exif(photo)
        assert info.value.reason == "gps_zero"
        return
    lat, lon, _ = FolderSource.parse_exif(photo)
    assert lat == pytest.approx(want_lat, abs=1e-12) and lon == pytest.approx(want_lon, abs=1e-12)
    # and within the stored precision of what the camera meant (D: 1e-7 deg, DM: 1e-6 min, DMS: 1e-4 s)
    assert abs(abs(lat) - abs_lat) <= 6e-8 and abs(abs(lon) - abs_lon) <= 6e-8
    assert (lat >= 0) == north or lat == 0
    assert (lon >= 0) == east or lon == 0


# ---------------------------------------------------------------- EXIF GPS: garbage is rejected, never raised

_rational = st.builds(IFDRational, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
_gps_value = st.one_of(
    st.tuples(), st.lists(_rational, min_size=1, max_size=5).map(tuple),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4).map(tuple),
    st.integers(0, 2**40), st.floats(min_value=0, allow_nan=False), st.just(float("inf")),
)
_ref_value = st.one_of(st.text(max_size=4), st.binary(max_size=4), st.integers(0, 255),
                       st.sampled_from(["N", "S", "E", "W"]))


@FAST
@given(
    tags=st.fixed_dictionaries({}, optional={GPS.GPSLatitude: _gps_value, GPS.GPSLongitude: _gps_value,
                                             GPS.GPSLatitudeRef: _ref_value, GPS.GPSLongitudeRef: _ref_value}),
    fmt=st.sampled_from(["JPEG", "PNG"]),
)
def test_any_gps_tag_values_give_a_position_or_a_documented_reason(tags, fmt):
    try:
        photo = _image(fmt, _exif(tags))
    except Exception:  # noqa: BLE001 - Pillow cannot write this value at all; not a parser input
        assume(False)
    try:
        lat, lon, _ = FolderSource.parse_exif(photo)
    except PhotoRejected as e:
        assert e.reason in EXIF_REASONS, e.reason
        return
    _accepted(lat, lon)


_GOOD = _image("JPEG", _exif({GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: _encode_coordinate(33.8567844, "dms")[0],
                              GPS.GPSLongitudeRef: "E", GPS.GPSLongitude: _encode_coordinate(151.2152966, "dms")[0]}),
               size=48)
_APP1 = (_GOOD.find(b"\xff\xe1"), _GOOD.find(b"\xff\xdb"))  # the EXIF segment: from APP1 to the first table


@FAST
@given(edits=st.lists(st.tuples(st.integers(*_APP1), st.integers(0, 255)), min_size=1, max_size=12),
       cut=st.one_of(st.none(), st.integers(0, len(_GOOD))))
def test_mutated_exif_bytes_give_a_position_or_a_documented_reason(edits, cut):
    data = bytearray(_GOOD)
    for at, byte in edits:
        data[at] = byte
    data = bytes(data[:cut] if cut is not None else data)
    try:
        lat, lon, _ = FolderSource.parse_exif(data)
    except PhotoRejected as e:
        assert e.reason in EXIF_REASONS, e.reason
    else:
        _accepted(lat, lon)
    try:
        prepare_photo(data, short_side=32, max_pixels=10_000)
    except PhotoRejected as e:
        assert e.reason in PHOTO_REASONS, e.reason


@FAST
@given(st.one_of(st.binary(max_size=400),
                 st.binary(max_size=200).map(lambda b: b"\xff\xd8\xff\xe1" + b),  # a JPEG with a junk EXIF
                 st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                 st.binary(max_size=200).map(lambda b: b"II*\x00" + b),  # TIFF, which Pillow also opens
                 st.binary(max_size=200).map(lambda b: b"GIF89a" + b)))
def test_random_files_are_rejected_with_a_documented_reason(data):
    with pytest.raises(PhotoRejected) as info:
        FolderSource.parse_exif(data)
    assert info.value.reason in EXIF_REASONS
    try:
        prepare_photo(data)
    except PhotoRejected as e:
        assert e.reason in PHOTO_REASONS, e.reason


# ---------------------------------------------------------------- coordinates from sidecars and Flickr

_number_like = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.integers(-10**400, 10**400),
    st.text(max_size=12), st.sampled_from(["nan", "inf", "-inf", "1e400", " 45.5 ", "0x10", "", "1_000"]),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                    st.integers(), max_size=1),
)


@FAST
@given(lat=_number_like, lon=_number_like)
def test_check_lat_lon_accepts_a_point_or_gives_a_documented_reason(lat, lon):
    try:
        got = check_lat_lon(lat, lon)
    except PhotoRejected as e:
        assert e.reason in {"gps_nan", "gps_out_of_range", "gps_zero"}, e.reason
    else:
        _accepted(*got)


@pytest.fixture(scope="module")
def flickr_source():
    mp = pytest.MonkeyPatch()
    mp.setenv("FLICKR_API_KEY", "property-test-key")
    mp.setenv("FLICKR_API_SECRET", "property-test-secret")
    try:
        yield FlickrSource(FlickrConfig(min_taken="2015-01-01", max_taken="2016-12-31"), Rejections())
    finally:
        mp.undo()


@FAST
@given(raw=st.fixed_dictionaries({}, optional={
    "latitude": _number_like, "longitude": _number_like, "accuracy": _number_like, "license": _number_like,
    "url_z": st.one_of(st.none(), st.text(max_size=8)), "datetaken": st.one_of(st.none(), st.text(max_size=20)),
    "datetakenunknown": _number_like, "width_z": _number_like, "height_z": _number_like,
}))
def test_any_flickr_record_gives_a_photo_or_a_documented_reason(flickr_source, raw):
    """A record of a search reply, as JSON can deliver it (numbers may be huge ints, infinities...)."""
    ledger = Rejections()
    flickr_source.rejections = ledger
    flickr_source._rejected.clear()
    photo = flickr_source._to_photo("123", raw, _Region(circle=(45.0, 9.0, 1.0)))
    if photo is None:
        assert set(ledger.counts) <= FLICKR_REASONS and ledger.total == 1, ledger.counts
    else:
        _accepted(photo.lat, photo.lon)
        assert photo.accuracy >= 15 and photo.uri and ledger.total == 0


# ---------------------------------------------------------------- lat/lon <-> tile pixels

# UTM is defined from 80 S to 84 N; the grids are north-up in the point's zone.
_lat = st.floats(-80, 84)
_lon = st.floats(-180, 180)
_zone_edge = st.tuples(st.integers(-30, 30), st.floats(-0.02, 0.02)).map(lambda t: min(180.0, max(-180.0, t[0] * 6 + t[1])))
_size = st.sampled_from([8, 32, 64, 448])
_gsd = st.sampled_from([0.6, 1.0, 10.0, 30.0])
_frac = st.floats(0, 1, exclude_max=True)


@FAST
@given(lat=_lat, lon=st.one_of(_lon, _zone_edge), size=_size, gsd=_gsd, fr=_frac, fc=_frac)
def test_any_point_of_a_tile_maps_to_its_pixel_and_back(lat, lon, size, gsd, fr, fc):
    grid = tile_grid_around(lat, lon, size, gsd)
    assert grid.crs == f"EPSG:{utm_epsg(lat, lon)}" and grid.crs[5:8] == ("326" if lat >= 0 else "327")
    row, col = fr * size, fc * size
    plat, plon = grid.latlon_of(row, col)
    back_row, back_col = grid.pixel_of(plat, plon)
    assert abs(back_row - row) < 1e-6 and abs(back_col - col) < 1e-6
    # and the other way: the point the tile was cut around sits at its centre (origin snapped to the lattice)
    crow, ccol = grid.pixel_of(lat, lon)
    assert abs(crow - size / 2) <= 1 and abs(ccol - size / 2) <= 1


@FAST
@given(lat=_lat, lon=_lon, size=_size, gsd=_gsd, fr=st.floats(0, 0.9), fc=st.floats(0, 0.9))
def test_tile_pixels_are_north_up_squares_of_the_ground_sampling_distance(lat, lon, size, gsd, fr, fc):
    grid = tile_grid_around(lat, lon, size, gsd)
    row, col = fr * size, fc * size
    lat0, lon0 = (float(v) for v in grid.latlon_of(row, col))
    lat_e, lon_e = (float(v) for v in grid.latlon_of(row, col + 1))
    lat_s, lon_s = (float(v) for v in grid.latlon_of(row + 1, col))
    az_e, _, d_e = WGS84.inv(lon0, lat0, lon_e, lat_e)
    az_s, _, d_s = WGS84.inv(lon0, lat0, lon_s, lat_s)
    # One pixel is gsd metres on the map; on the ground that is gsd / k, with UTM's scale factor
    # k = 0.9996 on the central meridian up to ~1.001 at the zone edge.
    for d in (d_e, d_s):
        assert gsd / 1.0012 <= d <= gsd / 0.9995
    # Columns run east and rows south, up to the meridian convergence (< 3.5 deg inside a zone's reach).
    assert abs(((az_e - 90 + 180) % 360) - 180) < 3.5
    assert abs(((abs(az_s) - 180 + 180) % 360) - 180) < 3.5


@FAST
@given(lat=st.one_of(st.floats(-79.9, 83.9), st.floats(-0.01, 0.01)), boundary=st.integers(-29, 29),
       west=st.floats(1e-6, 0.01), east=st.floats(1e-6, 0.01), dlat=st.floats(-0.01, 0.01))
def test_points_across_a_zone_boundary_or_the_equator_round_trip_on_the_tile_grid(lat, boundary, west, east, dlat):
    """A tile keeps its centre's zone and hemisphere; a photo on it across the boundary is placed in that CRS."""
    grid = tile_grid_around(lat, boundary * 6 - west, 448, 10.0)
    plat, plon = lat + dlat, boundary * 6 + east
    assert utm_epsg(plat, plon) != int(grid.crs[5:])  # the photo's own zone (or hemisphere) is another one
    row, col = grid.pixel_of(plat, plon)
    assert bool(grid.contains(row, col))  # 448 px x 10 m reach further than 0.02 deg at any latitude here
    back_lat, back_lon = grid.latlon_of(row, col)
    assert abs(float(back_lat) - plat) < 1e-9 and abs(float(back_lon) - plon) < 1e-9


@FAST
@given(lat=_lat, lon=_lon, dlat=st.floats(-0.01, 0.01), dlon=st.floats(-0.01, 0.01), gsd=_gsd)
def test_neighbouring_tiles_share_one_pixel_lattice(lat, lon, dlat, dlon, gsd):
    a = tile_grid_around(lat, lon, 32, gsd)
    assume(-80 <= lat + dlat <= 84 and -180 <= lon + dlon <= 180)
    b = tile_grid_around(lat + dlat, lon + dlon, 32, gsd, crs=a.crs)
    for v in ((a.transform.c - b.transform.c) / gsd, (a.transform.f - b.transform.f) / gsd):
        assert abs(v - round(v)) < 1e-6


@FAST
@given(lat=_lat, lon=_lon)
def test_utm_zone_is_the_one_whose_central_meridian_is_nearest(lat, lon):
    epsg = utm_epsg(lat, lon)
    zone = epsg % 100
    assert epsg // 100 == (326 if lat >= 0 else 327) and 1 <= zone <= 60
    central = -183 + 6 * zone
    assert abs(((lon - central + 180) % 360) - 180) <= 3 + 1e-9
    x, y = lonlat_to_crs(lon, lat, f"EPSG:{epsg}")
    assert 100_000 < x < 900_000 and 0 <= y <= 10_000_000  # false easting/northing: never negative


@FAST
@given(lat=_lat, lon=_lon, points=st.lists(st.tuples(_frac, _frac), min_size=1, max_size=20))
def test_vectorised_pixel_positions_equal_the_scalar_ones(lat, lon, points):
    grid = tile_grid_around(lat, lon, 64, 10.0)
    rows = np.array([p[0] * 64 for p in points])
    cols = np.array([p[1] * 64 for p in points])
    plat, plon = grid.latlon_of(rows, cols)
    vr, vc = grid.pixel_of(plat, plon)
    for i in range(len(points)):
        sr, sc = grid.pixel_of(float(plat[i]), float(plon[i]))
        assert float(sr) == pytest.approx(float(vr[i]), abs=1e-9) and float(sc) == pytest.approx(float(vc[i]), abs=1e-9)
