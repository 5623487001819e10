"""Ground photos from a local folder: EXIF GPS, or a CSV/Parquet sidecar.

The folder contract: JPEG or PNG files with EXIF GPS and
``DateTimeOriginal``, or a sidecar table with columns ``path, lat, lon,
taken_at``. With a sidecar, a file listed in it takes its position and date
from the sidecar (the sidecar wins over EXIF); files under ``root`` that the
sidecar does not list fall back to their EXIF. Sidecar paths are relative to
``root`` or absolute.

Times. ``DateTimeOriginal`` is the camera's wall-clock time. With
``OffsetTimeOriginal`` (EXIF 2.31) it is converted to UTC exactly. Without
it the local time zone is unknown, and the wall-clock time is labelled UTC
as it is: the result is off by the photo's UTC offset (at most 14 hours),
which is far below the days-to-months windows used to pair photos with
satellite acquisitions. ``photo.extra["taken_at_tz"]`` records which case
applied (``"offset"``, ``"assumed_utc"``, ``"sidecar"``). A missing or
unparseable date is not a rejection here: ``taken_at`` is ``None`` and the
build decides (only temporal alignment needs it).

Rejection reasons (stable keys in the :class:`~graft.rejections.Rejections`
ledger): ``no_gps``, ``gps_missing_ref``, ``gps_bad_ref`` (a ref that is
not N/S or E/W), ``gps_nan``, ``gps_out_of_range``, ``gps_zero`` (exactly
0, 0: what receivers without a fix write), ``exif_unreadable``,
``truncated_image`` (the file ends inside its header), ``sidecar_bad_row``,
``file_missing``, and ``decompression_bomb`` for images too large for Pillow
to open at all.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image
from pydantic import Field, field_validator
from tqdm import tqdm

from graft.config import StrictModel
from graft.imagery import is_truncation
from graft.rejections import PhotoRejected, Rejections
from graft.sources.base import GroundPhoto

log = logging.getLogger(__name__)

SIDECAR_COLUMNS = ("path", "lat", "lon", "taken_at")
_ID_HEX = 20  # 80 bits of SHA-256: collision-free in practice for billions of paths

_GPS = ExifTags.GPS
_BASE = ExifTags.Base


class FolderConfig(StrictModel):
    """Where the photos are and how to read their positions.

    Attributes:
        root: folder holding the photos.
        sidecar: optional CSV or Parquet file (by extension) with columns ``path, lat, lon, taken_at``.
        extensions: file name endings to take (case-insensitive).
        recursive: also walk sub-folders.
        workers: threads reading EXIF headers in parallel (I/O bound).
    """

    root: str
    sidecar: str | None = None
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    recursive: bool = True
    workers: int = Field(default=8, ge=1)

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one extension is needed, e.g. ['.jpg', '.png']")
        return sorted({(e if e.startswith(".") else f".{e}").lower() for e in v})

    @field_validator("sidecar")
    @classmethod
    def _sidecar_format(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith((".csv", ".parquet", ".pq")):
            raise ValueError(f"sidecar {v!r} must be a .csv or .parquet file")
        return v


def photo_id_for(rel_path: str) -> str:
    """Stable, dot-free id of a photo from its path relative to the root (POSIX separators)."""
    return "folder-" + hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:_ID_HEX]


# ---------------------------------------------------------------- EXIF parsing


def _ref_letter(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value).strip().strip("\x00").strip().upper()


def _dms_to_degrees(value: Any, what: str) -> float:
    """EXIF GPS coordinate (degrees, minutes, seconds rationals; fewer parts allowed) -> degrees."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        raise PhotoRejected("gps_out_of_range", f"{what} has {len(parts)} components, expected 1-3")
    try:
        # IFDRational with a zero denominator converts to nan, which is what we want to catch.
        nums = [float(p) for p in parts]
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise PhotoRejected("gps_nan", f"{what}={value!r}: {e}") from None
    if any(math.isnan(x) or math.isinf(x) for x in nums):
        raise PhotoRejected("gps_nan", f"{what}={value!r}")
    if any(x < 0 for x in nums) or any(x > 60 for x in nums[1:]):
        # The sign lives in the ref. Exactly 60 is tolerated: writers that round seconds produce it.
        raise PhotoRejected("gps_out_of_range", f"{what}={nums}: expected non-negative parts, minutes/seconds <= 60")
    return sum(x / 60**i for i, x in enumerate(nums))


def _parse_gps(gps: dict) -> tuple[float, float]:
    if _GPS.GPSLatitude not in gps or _GPS.GPSLongitude not in gps:
        raise PhotoRejected("no_gps", "no GPSLatitude/GPSLongitude in EXIF")
    if _GPS.GPSLatitudeRef not in gps or _GPS.GPSLongitudeRef not in gps:
        raise PhotoRejected("gps_missing_ref", "GPSLatitudeRef or GPSLongitudeRef missing: hemisphere unknown")
    lat_ref, lon_ref = _ref_letter(gps[_GPS.GPSLatitudeRef]), _ref_letter(gps[_GPS.GPSLongitudeRef])
    if lat_ref not in ("N", "S") or lon_ref not in ("E", "W"):
        raise PhotoRejected("gps_bad_ref", f"refs {lat_ref!r}/{lon_ref!r}, expected N|S and E|W")
    lat = _dms_to_degrees(gps[_GPS.GPSLatitude], "GPSLatitude")
    lon = _dms_to_degrees(gps[_GPS.GPSLongitude], "GPSLongitude")
    lat = -lat if lat_ref == "S" else lat
    lon = -lon if lon_ref == "W" else lon
    return check_lat_lon(lat, lon)


def check_lat_lon(lat: Any, lon: Any) -> tuple[float, float]:
    """Validate a WGS84 point; raises PhotoRejected (``gps_nan``, ``gps_out_of_range``, ``gps_zero``)."""
    try:
        lat, lon = float(lat), float(lon)
    except OverflowError:  # an integer beyond float range (a Parquet/Python sidecar value): no coordinate
        raise PhotoRejected("gps_out_of_range", "lat/lon too large for a float") from None
    except (TypeError, ValueError):
        raise PhotoRejected("gps_nan", f"lat/lon not numbers: {lat!r}, {lon!r}") from None
    if math.isnan(lat) or math.isnan(lon) or math.isinf(lat) or math.isinf(lon):
        raise PhotoRejected("gps_nan", f"lat={lat}, lon={lon}")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise PhotoRejected("gps_out_of_range", f"lat={lat}, lon={lon}: expected |lat|<=90, |lon|<=180")
    if lat == 0.0 and lon == 0.0:
        raise PhotoRejected("gps_zero", "exactly (0, 0): a receiver without a fix, not a place")
    return lat, lon


def _parse_exif_time(date_value: Any, offset_value: Any) -> tuple[dt.datetime | None, str]:
    if date_value is None:
        return None, "none"
    if isinstance(date_value, bytes):
        date_value = date_value.decode("ascii", errors="replace")
    text = str(date_value).strip().strip("\x00")
    try:
        naive = dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        # "0000:00:00 00:00:00", blanks and other placeholders cameras write.
        return None, "none"
    if offset_value is not None:
        off = str(offset_value).strip().strip("\x00")
        try:
            tz = dt.datetime.strptime(off, "%z").tzinfo
        except ValueError:
            tz = None
        if tz is not None:
            return naive.replace(tzinfo=tz).astimezone(dt.timezone.utc), "offset"
    return naive.replace(tzinfo=dt.timezone.utc), "assumed_utc"


def _read_exif(source: str | os.PathLike | bytes) -> tuple[float, float, dt.datetime | None, str]:
    try:
        with warnings.catch_warnings():
            # Truncated or odd EXIF blocks raise warnings in Pillow; we judge by what parses.
            warnings.simplefilter("ignore")
            fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            # Image.open reads only the header; getexif() then parses the APP1/eXIf block
            # without decoding pixels (for JPEG; PNG may need to scan to its eXIf chunk).
            with Image.open(fp) as img:
                exif = img.getexif()
                gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
                sub = exif.get_ifd(ExifTags.IFD.Exif)
                date_value = sub.get(_BASE.DateTimeOriginal)
                offset_value = sub.get(_BASE.OffsetTimeOriginal)
    except FileNotFoundError:
        raise PhotoRejected("file_missing", str(source)) from None
    except Image.DecompressionBombError as e:
        # Pillow refuses to even open images above 2x MAX_IMAGE_PIXELS; same reason as prepare_photo.
        raise PhotoRejected("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad header/EXIF
        # A file cut off inside its header (a download stopped in the EXIF thumbnail, say) is the
        # same defect prepare_photo reports for a file cut in its pixel data: same reason, whichever
        # stage notices it first.
        reason = "truncated_image" if is_truncation(e) else "exif_unreadable"
        raise PhotoRejected(reason, f"{type(e).__name__}: {e}") from None
    lat, lon = _parse_gps(gps)
    taken_at, tz_kind = _parse_exif_time(date_value, offset_value)
    return lat, lon, taken_at, tz_kind


# ---------------------------------------------------------------- sidecar


def _parse_sidecar_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    text = str(value).strip()
    if not text:
        return None
    for parse in (dt.datetime.fromisoformat, lambda s: dt.datetime.strptime(s[:19], "%Y:%m:%d %H:%M:%S")):
        try:
            return _parse_sidecar_time(parse(text.replace("Z", "+00:00")))
        except ValueError:
            continue
    return None


def read_sidecar(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a CSV or Parquet sidecar into a list of row dicts (columns path, lat, lon, taken_at).

    Raises:
        FileNotFoundError: the sidecar does not exist.
        ValueError: a required column is missing.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folder.sidecar: file not found: {path}")
    if path.suffix.lower() == ".csv":
        # Read every column as text: a bad cell then becomes a bad row, not a failed file.
        table = pacsv.read_csv(
            path,
            # Only empty cells are null: a literal "nan" must reach the lat/lon check as gps_nan.
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in SIDECAR_COLUMNS},
                                                 strings_can_be_null=True, null_values=[""]),
        )
    else:
        table = pq.read_table(path)
    missing = [c for c in SIDECAR_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"folder.sidecar {path}: missing column(s) {missing}; expected columns {list(SIDECAR_COLUMNS)} "
            f"(got {table.column_names})"
        )
    return table.select(list(SIDECAR_COLUMNS)).to_pylist()


# ---------------------------------------------------------------- the source


class FolderSource:
    """Geotagged photos from a local folder.

    ``scan()`` yields one :class:`GroundPhoto` per usable file, in sorted path
    order, and records every unusable one in ``rejections``. ``load(photo)``
    returns the file's bytes.

    Args:
        cfg: the folder config.
        rejections: ledger to count dropped files in (a new one if omitted).
    """

    name = "folder"

    def __init__(self, cfg: FolderConfig, rejections: Rejections | None = None):
        self.cfg = cfg
        self.root = Path(cfg.root).expanduser().resolve()
        self.rejections = rejections if rejections is not None else Rejections()
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder.root: not a folder: {cfg.root}")

    @staticmethod
    def parse_exif(path_or_bytes: str | os.PathLike | bytes) -> tuple[float, float, dt.datetime | None]:
        """Read position and capture time from a photo's EXIF.

        Args:
            path_or_bytes: a file path, or the encoded photo.

        Returns:
            ``(lat, lon, taken_at)``: WGS84 degrees, and a UTC datetime or None
            (see the module docstring for how a missing offset is handled).

        Raises:
            PhotoRejected: ``no_gps``, ``gps_missing_ref``, ``gps_bad_ref``, ``gps_nan``,
                ``gps_out_of_range``, ``gps_zero``, ``exif_unreadable``, ``truncated_image``,
                ``decompression_bomb`` or ``file_missing``.
        """
        lat, lon, taken_at, _ = _read_exif(path_or_bytes)
        return lat, lon, taken_at

    def load(self, photo: GroundPhoto) -> bytes:
        """The photo's file bytes. Raises FileNotFoundError if it vanished since the scan."""
        return Path(photo.uri).read_bytes()

    # -------------------------------------------------------------- scanning

    def _list_files(self) -> list[str]:
        """Relative POSIX paths of every photo file under root, sorted."""
        exts = tuple(self.cfg.extensions)
        found: list[str] = []
        if self.cfg.recursive:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                base = Path(dirpath).relative_to(self.root)
                found.extend((base / f).as_posix() for f in filenames if f.lower().endswith(exts))
        else:
            found = [p.name for p in self.root.iterdir() if p.is_file() and p.name.lower().endswith(exts)]
        return sorted(found)

    def _rel(self, path: Path) -> str:
        """Path relative to root if inside it, else the absolute path (POSIX)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _photo(self, rel: str, lat: float, lon: float, taken_at: dt.datetime | None, tz_kind: str) -> GroundPhoto:
        path = self.root / rel if not Path(rel).is_absolute() else Path(rel)
        extra = {"rel_path": rel}
        if taken_at is not None:
            extra["taken_at_tz"] = tz_kind
        return GroundPhoto(photo_id=photo_id_for(rel), lat=lat, lon=lon, taken_at=taken_at,
                           source=self.name, uri=str(path), extra=extra)

    def _sidecar_entries(self) -> tuple[dict[str, tuple[float, float, dt.datetime | None]], set[str]]:
        """Good sidecar rows as rel path -> (lat, lon, taken_at), and every path the sidecar lists.

        Bad rows go to the ledger. A file whose row is bad is still "listed": it is
        rejected once, for its row, and does not fall back to EXIF.
        """
        assert self.cfg.sidecar is not None
        rows = read_sidecar(self.cfg.sidecar)
        entries: dict[str, tuple[float, float, dt.datetime | None]] = {}
        listed: set[str] = set()
        for i, row in enumerate(rows):
            item = f"{self.cfg.sidecar}#row{i + 1}"
            raw_path = row.get("path")
            if raw_path is None or not str(raw_path).strip():
                self.rejections.add("sidecar_bad_row", item, "empty path")
                continue
            p = Path(os.path.normpath(str(raw_path).strip()))
            full = p if p.is_absolute() else self.root / p
            rel = self._rel(Path(os.path.normpath(full)))
            if rel in listed:
                self.rejections.add("sidecar_bad_row", item, f"duplicate path {raw_path!r}")
                continue
            listed.add(rel)
            if row.get("lat") is None or row.get("lon") is None:
                self.rejections.add("sidecar_bad_row", item, f"{raw_path}: lat/lon empty")
                continue
            try:
                lat, lon = float(row["lat"]), float(row["lon"])
            except (TypeError, ValueError):
                self.rejections.add("sidecar_bad_row", item, f"{raw_path}: lat/lon not numbers: {row['lat']!r}, {row['lon']!r}")
                continue
            try:
                lat, lon = check_lat_lon(lat, lon)
            except PhotoRejected as e:
                self.rejections.add(e.reason, item, f"{raw_path}: {e.detail}")
                continue
            if not full.is_file():
                self.rejections.add("file_missing", item, f"{full} listed in the sidecar does not exist")
                continue
            entries[rel] = (lat, lon, _parse_sidecar_time(row.get("taken_at")))
        return entries, listed

    def _exif_one(self, rel: str) -> GroundPhoto | PhotoRejected:
        try:
            lat, lon, taken_at, tz_kind = _read_exif(self.root / rel)
        except PhotoRejected as e:
            return e
        return self._photo(rel, lat, lon, taken_at, tz_kind)

    def scan(self) -> Iterator[GroundPhoto]:
        """Yield every usable photo in sorted path order; count every unusable one in ``rejections``.

        Files the sidecar lists (when one is configured) and files only EXIF can
        locate are merged into one order, sorted by path. EXIF headers are read by
        ``cfg.workers`` threads, in bounded chunks, so memory stays flat for
        millions of files.
        """
        sidecar, listed = self._sidecar_entries() if self.cfg.sidecar else ({}, set())
        files = self._list_files()
        exif_files = [f for f in files if f not in listed]
        order = sorted(set(sidecar) | set(exif_files))
        log.info("folder %s: %d files, %d located by sidecar", self.root, len(files), len(sidecar))

        chunk = max(64, 16 * self.cfg.workers)
        with ThreadPoolExecutor(max_workers=self.cfg.workers, thread_name_prefix="exif") as pool, \
                tqdm(total=len(order), desc="folder: reading EXIF", unit="photo", mininterval=1.0) as bar:
            for start in range(0, len(order), chunk):
                block = order[start:start + chunk]
                todo = [rel for rel in block if rel not in sidecar]
                parsed = dict(zip(todo, pool.map(self._exif_one, todo), strict=True))
                for rel in block:
                    bar.update(1)
                    if rel in sidecar:
                        lat, lon, taken_at = sidecar[rel]
                        yield self._photo(rel, lat, lon, taken_at, "sidecar")
                        continue
                    result = parsed[rel]
                    if isinstance(result, PhotoRejected):
                        self.rejections.add(result.reason, rel, result.detail)
                    else:
                        yield result
