"""Writing photos with EXIF GPS and capture dates, as cameras do: the demo world's photos and the tests' fixtures.

One writer for every generated photo, so the folder source is always tested against the same EXIF
layout the demo feeds it: GPSLatitude/GPSLongitude as (degrees, minutes, seconds) rationals with
their N/S and E/W refs in the GPS IFD, DateTimeOriginal in the EXIF IFD.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

# EXIF tag numbers (EXIF 2.32 / TIFF 6.0).
TAG_MAKE, TAG_MODEL, TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
TAG_EXIF_IFD, TAG_GPS_IFD = 0x8769, 0x8825
TAG_DATETIME_ORIGINAL, TAG_OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
GPS_VERSION, GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 0, 1, 2, 3, 4
EXIF_DATE_FORMAT = "%Y:%m:%d %H:%M:%S"

AUTO = "auto"
"""A hemisphere ref derived from the sign of the coordinate (``N``/``S``, ``E``/``W``)."""


def dms(value: float, second_digits: int = 4) -> tuple[IFDRational, IFDRational, IFDRational]:
    """|value| degrees -> EXIF (degrees, minutes, seconds) rationals, seconds to ``second_digits`` decimals.

    Four decimals of a second are a few millimetres on the ground. Seconds may round up to 60,
    which EXIF readers (and :mod:`graft.sources.folder`) accept.
    """
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    scale = 10 ** second_digits
    sec = round(((value - deg) * 60 - minutes) * 60 * scale)
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(sec, scale)


def gps_exif(lat: float | None, lon: float | None, taken: dt.datetime | str | None = None, *,
             lat_ref: str | bytes | None = AUTO, lon_ref: str | bytes | None = AUTO,
             lat_value: Sequence[IFDRational] | None = None, lon_value: Sequence[IFDRational] | None = None,
             offset: str | None = None, make: str = "graft", model: str | None = None,
             gps_version: bytes | None = None, orientation: int | None = None,
             second_digits: int = 4) -> Image.Exif:
    """EXIF with whichever GPS and date fields are given (None: the field is absent).

    Args:
        lat, lon: position in WGS84 degrees; written as :func:`dms` of their absolute values.
        taken: DateTimeOriginal, a datetime or an EXIF date string as written.
        lat_ref, lon_ref: hemisphere refs; :data:`AUTO` derives them from the signs, None leaves them out.
        lat_value, lon_value: rationals to write instead of ``dms(lat)``/``dms(lon)`` (odd or broken forms).
        offset: OffsetTimeOriginal (``+02:00``).
        make, model: camera make and model. Pillow drops a PNG's EXIF when its base IFD is empty,
            so ``make`` is always written.
        gps_version: GPSVersionID bytes.
        orientation: the EXIF Orientation tag (1-8).
        second_digits: decimals of the seconds in :func:`dms`.
    """
    exif = Image.Exif()
    exif[TAG_MAKE] = make
    if model is not None:
        exif[TAG_MODEL] = model
    if orientation is not None:
        exif[TAG_ORIENTATION] = orientation
    if taken is not None:
        sub = exif.get_ifd(TAG_EXIF_IFD)
        sub[TAG_DATETIME_ORIGINAL] = taken if isinstance(taken, str) else taken.strftime(EXIF_DATE_FORMAT)
        if offset is not None:
            sub[TAG_OFFSET_TIME_ORIGINAL] = offset
    if lat_value is not None or lat is not None:
        gps = exif.get_ifd(TAG_GPS_IFD)
        if gps_version is not None:
            gps[GPS_VERSION] = gps_version
        gps[GPS_LAT] = tuple(lat_value) if lat_value is not None else dms(lat, second_digits)
        gps[GPS_LON] = tuple(lon_value) if lon_value is not None else dms(lon, second_digits)
        if lat_ref is not None:
            gps[GPS_LAT_REF] = ("S" if (lat or 0) < 0 else "N") if lat_ref == AUTO else lat_ref
        if lon_ref is not None:
            gps[GPS_LON_REF] = ("W" if (lon or 0) < 0 else "E") if lon_ref == AUTO else lon_ref
    return exif


def world_photo_exif(lat: float, lon: float, taken: dt.datetime, fault: str | None) -> bytes:
    """The EXIF of a demo world photo, broken in the way ``fault`` names (see ``graft.demo.world.EXIF_FAULTS``)."""
    has_gps = fault != "no_gps"
    return gps_exif(
        lat if has_gps else None, lon if has_gps else None, None if fault == "no_date" else taken,
        lat_value=dms(lat + 90.0) if fault == "lat_out_of_range" else None,  # e.g. 120 N: no such place
        lat_ref=None if fault == "gps_no_ref" else AUTO, lon_ref=None if fault == "gps_no_ref" else AUTO,
        make="graft", model="synthetic world camera", gps_version=b"\x02\x03\x00\x00",
    ).tobytes()


def encode_photo(img: np.ndarray, exif: Image.Exif | bytes | None = None, fmt: str = "JPEG",
                 quality: int = 90) -> bytes:
    """(H, W, 3) uint8 pixels -> image bytes (JPEG at ``quality``, or ``fmt``), with ``exif`` when given."""
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    if fmt == "JPEG":
        kw["quality"] = quality
    Image.fromarray(img).save(buf, fmt, **kw)
    return buf.getvalue()
