"""Satellite chips from Google Earth Engine: Sentinel-2 L2A and NAIP.

Both sources cut a chip on an explicit :class:`~graft.geometry.TileGrid` with
``ee.data.computePixels`` (one request per chip, no export tasks), so the
chip's pixel lattice is exactly the one :mod:`graft.geometry` computed for the
tile and the manifest's ``row``/``col`` stay valid.

How a chip is chosen:

- **Sentinel-2** (:class:`Sentinel2Source`): scenes intersecting the chip
  footprint, within ``window_days`` of the tile date and with
  ``CLOUDY_PIXEL_PERCENTAGE < max_cloud``, are listed with one ``getInfo``; the
  one nearest in time is picked on the client, and every granule of the same
  datatake (same sensing start, adjacent MGRS tiles) is mosaicked with it so a
  chip on a granule edge is not half empty. The chip's own cloud fraction is
  then checked on the Scene Classification Layer (or the s2cloudless
  probability), since a scene-level percentage says little about 4.5 km².
- **NAIP** (:class:`NaipSource`): the most recent year with an image
  intersecting the footprint (or the year nearest the photo date), mosaicked.

Earth Engine is initialised lazily, once per process, with a service-account
key (path in ``$EE_SERVICE_ACCOUNT_KEY_FILE``) or application-default
credentials. Requests go through a bounded semaphore (the API allows 40
concurrent requests per project) and are retried on quota errors, timeouts and
5xx replies. The ``ee`` module is injectable so tests fake the layer below
this adapter.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from graft.config import StrictModel
from graft.credentials import CredentialError, redact, register_secret, warn_if_world_readable
from graft.geometry import TileGrid
from graft.sources.base import ChipRejected, SatelliteChip
from graft.sources.retry import RetryConfig, TransientError, call_with_retry

log = logging.getLogger(__name__)
T = TypeVar("T")

# Documented high-volume endpoint: more concurrent requests, less caching; meant
# for exactly this workload (many small computePixels calls on stored images).
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
PROJECT_ENV = "EE_PROJECT"

# Sentinel-2 Scene Classification Layer classes counted as cloud on the chip:
# 3 cloud shadow, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.
SCL_CLOUD_CLASSES = (3, 8, 9, 10)
SCL_NO_DATA = 0
# A Sentinel-2 system:index starts with the datatake sensing time, e.g.
# 20230615T101559_20230615T102043_T32TQM; granules sharing it were imaged in one pass.
_DATATAKE = re.compile(r"^(\d{8}T\d{6})_")
# Native resolution (metres) of each Sentinel-2 MSI band. Every band is delivered on the chip's own grid
# (computePixels reprojects each band onto the request grid), so 20 m and 60 m bands arrive on the 10 m grid.
S2_BAND_GSD: dict[str, int] = {"B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10,
                               "B8A": 20, "B9": 60, "B10": 60, "B11": 20, "B12": 20}
# B10 (cirrus, 1375 nm) says nothing about the surface and is dropped from the L2A (surface reflectance) products.
_L2A_WITHOUT = ("B10",)


class EarthEngineConfig(StrictModel):
    """How to reach Earth Engine. Secrets are never stored here, only where to find them.

    Attributes:
        project: Google Cloud project registered for Earth Engine; falls back to
            ``$EE_PROJECT``, then to the service-account key's ``project_id``.
        service_account: service-account e-mail; optional with a JSON key (it holds it).
        key_file_env: environment variable holding the path of the JSON key. If it
            is unset, application-default credentials are used
            (``earthengine authenticate`` or ``gcloud auth application-default login``).
        high_volume: use the high-volume endpoint (recommended for builds).
        max_in_flight: concurrent requests per source; the default stays under the
            40-concurrent-request quota of a standard project.
        retry: backoff for quota errors, timeouts and 5xx replies.
    """

    project: str | None = None
    service_account: str | None = None
    key_file_env: str = "EE_SERVICE_ACCOUNT_KEY_FILE"
    high_volume: bool = False
    max_in_flight: int = Field(32, ge=1)
    retry: RetryConfig = Field(default_factory=RetryConfig)


class Sentinel2Config(StrictModel):
    """Sentinel-2 L2A chip selection.

    Attributes:
        collection: Earth Engine collection id (surface reflectance, DN = reflectance x 1e4).
        max_cloud: keep scenes with ``CLOUDY_PIXEL_PERCENTAGE < max_cloud`` (percent).
        window_days: search ``[date - window_days, date + window_days]`` around the tile date.
        default_date: tile date to use when the caller has none; today if unset.
        bands: bands of the output chip, in order: any of B1-B12 and B8A (Level-2A has no
            B10), stored as uint16 reflectance x 1e4, unstretched. Every band is delivered on
            the chip grid (``gsd``), so the 20 m and 60 m bands arrive resampled onto it.
        chip_cloud_band: ``"SCL"`` counts Scene Classification classes 3, 8, 9, 10 on the
            chip; ``"probability"`` thresholds the s2cloudless ``probability`` band of
            ``cloud_probability_collection`` (joined by ``system:index``).
        cloud_probability_collection: s2cloudless collection, used with ``chip_cloud_band="probability"``.
        cloud_probability_threshold: percent probability at and above which a pixel is cloud.
        max_chip_cloud_fraction: reject a chip whose cloudy share of valid pixels exceeds this.
        min_valid_fraction: reject a chip with a smaller share of pixels holding data.
        max_images_tried: how many datatakes, nearest first, to try before giving up on a
            cloudy or empty chip (1 = the nearest only).
        resampling: how bands coarser than the chip grid (20 m, 60 m onto 10 m) are resampled;
            ``nearest`` is Earth Engine's default. Applies to reflectance bands only: the Scene
            Classification Layer is a class map and is always read nearest.
        size: chip side in pixels (the build passes it to ``tile_grid_around``).
        gsd: metres per pixel.
    """

    collection: str = "COPERNICUS/S2_SR_HARMONIZED"
    max_cloud: float = Field(1.0, gt=0, le=100)
    window_days: int = Field(45, ge=0)
    default_date: dt.date | None = None
    bands: list[str] = Field(default_factory=lambda: ["B4", "B3", "B2"], min_length=1)
    chip_cloud_band: Literal["SCL", "probability"] = "SCL"
    cloud_probability_collection: str = "COPERNICUS/S2_CLOUD_PROBABILITY"
    cloud_probability_threshold: float = Field(40.0, ge=0, le=100)
    max_chip_cloud_fraction: float = Field(0.05, ge=0, le=1)
    min_valid_fraction: float = Field(0.9, ge=0, le=1)
    max_images_tried: int = Field(1, ge=1)
    resampling: Literal["nearest", "bilinear", "bicubic"] = "nearest"
    size: int = Field(448, gt=0)
    gsd: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _known_bands(self) -> Sentinel2Config:
        unknown = [b for b in self.bands if b not in S2_BAND_GSD]
        if unknown:
            raise ValueError(f"sentinel2.bands {unknown} are not Sentinel-2 MSI bands; expected any of "
                             f"{list(S2_BAND_GSD)} (e.g. [B4, B3, B2, B8])")
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"sentinel2.bands lists a band twice: {self.bands}")
        if "S2_SR" in self.collection and any(b in _L2A_WITHOUT for b in self.bands):
            raise ValueError(f"{self.collection} (Level-2A) has no band B10; drop it, or use the Level-1C "
                             f"collection COPERNICUS/S2_HARMONIZED")
        return self


class NaipConfig(StrictModel):
    """NAIP chip selection (USDA aerial imagery, contiguous US).

    Attributes:
        collection: Earth Engine collection id.
        bands: ``R``, ``G``, ``B`` and optionally ``N`` (near infrared; missing in some early years).
        year: pin the NAIP year instead of choosing one per chip.
        year_policy: ``"latest"`` takes the most recent year covering the chip;
            ``"nearest"`` the year nearest the tile date (ties: the later year).
        resampling: how the 0.6-1 m source pixels are resampled onto the chip grid.
        min_valid_fraction: reject a chip with a smaller share of pixels holding data.
        size: chip side in pixels.
        gsd: metres per pixel.
    """

    collection: str = "USDA/NAIP/DOQQ"
    bands: list[Literal["R", "G", "B", "N"]] = Field(default_factory=lambda: ["R", "G", "B"], min_length=1)
    year: int | None = None
    year_policy: Literal["latest", "nearest"] = "latest"
    resampling: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    min_valid_fraction: float = Field(0.9, ge=0, le=1)
    size: int = Field(448, gt=0)
    gsd: float = Field(1.0, gt=0)


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class ServiceAccountKey:
    """The non-secret parts of a service-account JSON key (the private key stays in the file)."""

    path: Path
    client_email: str
    project_id: str | None


def read_service_account_key(cfg: EarthEngineConfig) -> ServiceAccountKey | None:
    """Load the key named by ``$<cfg.key_file_env>``; None when that variable is unset.

    The private key is registered for redaction, so it can never reach a log or
    an error message.

    Raises:
        CredentialError: the variable points to a missing file or to something
            that is not a service-account JSON key.
    """
    raw = os.environ.get(cfg.key_file_env)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise CredentialError(
            f"{cfg.key_file_env} points to {path}, which does not exist; set it to the path of the "
            "service-account JSON key (IAM > Service accounts > Keys), or unset it to use "
            "application-default credentials"
        )
    warn_if_world_readable(path)
    try:
        key = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        # Never echo the content: it is a private key.
        raise CredentialError(
            f"{path} (from {cfg.key_file_env}) is not readable JSON ({type(e).__name__}); "
            "expected a service-account key file downloaded from the Google Cloud console"
        ) from None
    if not isinstance(key, dict):
        raise CredentialError(f"{path} (from {cfg.key_file_env}) is not a JSON object; expected a service-account key")
    _register_key_secrets(key)
    missing = [k for k in ("type", "client_email", "private_key") if not key.get(k)]
    if missing or key.get("type") != "service_account":
        raise CredentialError(
            f"{path} (from {cfg.key_file_env}) is not a service-account key: "
            f"{'missing ' + ', '.join(missing) if missing else 'type is ' + repr(key.get('type'))}; "
            "expected the JSON key of a service account registered for Earth Engine"
        )
    return ServiceAccountKey(path=path, client_email=str(key["client_email"]), project_id=key.get("project_id"))


def _register_key_secrets(key: dict) -> None:
    """Mask the key material wherever it may surface: whole, stripped, and line by line of the PEM body."""
    if isinstance(key.get("private_key_id"), str):
        register_secret(key["private_key_id"])
    pem = key.get("private_key")
    if isinstance(pem, str):
        register_secret(pem)
        register_secret(pem.strip())
        for line in pem.splitlines():
            if len(line.strip()) >= 16 and not line.startswith("-----"):
                register_secret(line.strip())


def resolve_project(cfg: EarthEngineConfig, key: ServiceAccountKey | None = None) -> str | None:
    """The Cloud project for Earth Engine calls: config, then ``$EE_PROJECT``, then the key's project."""
    return cfg.project or os.environ.get(PROJECT_ENV) or (key.project_id if key else None)


def import_ee() -> Any:
    """Import the earthengine-api module (kept out of import time of this module)."""
    try:
        import ee
    except ImportError as e:  # pragma: no cover - earthengine-api is a core dependency
        raise ImportError("earthengine-api is not installed: pip install earthengine-api") from e
    return ee


def initialize_earth_engine(cfg: EarthEngineConfig, ee: Any) -> str:
    """Call ``ee.Initialize`` with the configured credentials; return a one-line description.

    Raises:
        CredentialError: no project could be determined, or initialisation failed
            (the message is redacted and says what to fix).
    """
    key = read_service_account_key(cfg)
    project = resolve_project(cfg, key)
    kwargs: dict[str, Any] = {}
    if project:
        kwargs["project"] = project
    if cfg.high_volume:
        kwargs["opt_url"] = HIGH_VOLUME_URL
    if key is not None:
        how = f"service account {cfg.service_account or key.client_email} (key {key.path})"
    elif project:
        how = "application-default credentials"
    else:
        raise CredentialError(
            f"no Earth Engine project: set {PROJECT_ENV}=<cloud-project-id> or earthengine.project in the "
            f"config (a Google Cloud project registered for Earth Engine), or set {cfg.key_file_env} to a "
            "service-account key"
        )
    try:
        if key is not None:
            kwargs["credentials"] = ee.ServiceAccountCredentials(cfg.service_account or key.client_email,
                                                                 str(key.path))
        ee.Initialize(**kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here is a setup problem for the user to fix
        raise CredentialError(
            f"Earth Engine initialisation with {how}, project {project!r} failed: "
            f"{redact(f'{type(e).__name__}: {e}').rstrip('.')}. Check the credentials with 'graft doctor'; for "
            "application-default credentials run 'earthengine authenticate'"
        ) from None
    endpoint = "high-volume endpoint" if cfg.high_volume else "standard endpoint"
    return f"{how}, project {project!r}, {endpoint}"


# --------------------------------------------------------------------------- errors and retries

_QUOTA = ("too many concurrent", "quota exceeded", "rate limit", "resource_exhausted", "too many requests")
_TIMEOUT = ("timed out", "deadline exceeded", "deadline_exceeded", "timeout")
_SERVER = ("internal error", "service unavailable", "currently unavailable", "backend error", "server error",
           "bad gateway")
# An HTTP status only counts when it is labelled as one ("HttpError 503", "status: 429"), not "Found 500 pixels".
_STATUS = re.compile(r"(?:http\s*error|status(?:\s*code)?|error\s*code)\W{0,3}(429|50[0234])\b")


# Failures that belong to one chip's request and recur on every retry, by the reason the tile is dropped
# with (``tile_ee_<reason>``). computePixels refuses requests over 48 MB, 32K pixels a side or 1024 bands
# with a 400 (REST reference); a band missing from one NAIP year or scene, a vanished asset and a
# computation over the per-request memory cap fail the same way each time.
_PERMANENT = (
    ("missing_band", ("did not match any bands", "band not found")),
    ("asset_not_found", ("not found (does not exist", "asset not found", "does not exist or caller does not have")),
    ("memory_limit", ("user memory limit exceeded",)),
    ("request_too_large", ("request payload size exceeds", "total request size", "must be less than or equal to",
                           "too many pixels")),
)


def permanent_ee_reason(exc: BaseException) -> str | None:
    """The reason a chip can never be fetched (``missing_band``, ``asset_not_found``, ``memory_limit``,
    ``request_too_large``), or None when the failure is not a known per-chip one."""
    msg = str(exc).lower()
    if "image asset" in msg and "not found" in msg:
        return "asset_not_found"
    for reason, needles in _PERMANENT:
        if any(n in msg for n in needles):
            return reason
    return None


def classify_ee_error(exc: BaseException) -> str | None:
    """The transient kind of an Earth Engine failure (``quota``, ``timeout``, ``server``,
    ``network``, ``bad_reply``), or None if retrying cannot help.

    ``ee`` turns HTTP errors into ``EEException`` carrying only the server's
    message (no status code), so the kind is read from the message text.
    """
    if isinstance(exc, TransientError):
        return exc.reason
    if permanent_ee_reason(exc) is not None:
        return None
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, TimeoutError) or any("Timeout" in n for n in names):
        return "timeout"
    msg = str(exc).lower()
    if any(s in msg for s in _QUOTA):
        return "quota"
    if any(s in msg for s in _TIMEOUT):
        return "timeout"
    status = _STATUS.search(msg)
    if status:
        return "quota" if status.group(1) == "429" else "server"
    if any(s in msg for s in _SERVER):
        return "server"
    # requests' ConnectionError and friends derive from OSError; httplib2's errors do not.
    if isinstance(exc, (ConnectionError, OSError)) or type(exc).__module__.startswith("httplib2"):
        return "network"
    return None


class EarthEngineSession:
    """Lazy one-time ``ee.Initialize``, the in-flight semaphore and the retry policy of one source.

    Thread-safe; picklable (for Ray), re-initialising in the new process on first use.
    """

    def __init__(self, cfg: EarthEngineConfig, ee_module: Any | None = None):
        self.cfg = cfg
        self._ee = ee_module
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(cfg.max_in_flight)
        self._initialized = False
        self.description = ""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_lock", "_slots"):
            del state[k]
        state["_initialized"] = False
        if isinstance(state["_ee"], types.ModuleType):  # modules do not pickle; re-import on the other side
            state["_ee"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.cfg.max_in_flight)

    @property
    def ee(self) -> Any:
        """The ``ee`` module, initialised."""
        self.ensure_initialized()
        return self._ee

    def ensure_initialized(self) -> None:
        if self._initialized:
            return
        with self._lock:
            if self._initialized:
                return
            if self._ee is None:
                self._ee = import_ee()
            self.description = initialize_earth_engine(self.cfg, self._ee)
            log.info("Earth Engine initialised: %s", self.description)
            self._initialized = True

    def call(self, fn: Callable[[], T]) -> T:
        """Run one remote call under the semaphore, retrying transient failures.

        Raises:
            ChipRejected: ``fetch_failed:<kind>`` once transient failures exhaust the retries, or on
                an Earth Engine error of unknown kind (``fetch_failed:ee_error``): the build retries
                the partition. ``ee_<reason>`` (see :func:`permanent_ee_reason`) at once on an error
                that is a property of this chip's request: the build drops the tile with that reason.
                The detail is redacted.
        """
        ee = self.ee

        def attempt() -> T:
            with self._slots:  # held per attempt only: backoff sleeps must not block other threads
                return fn()

        try:
            return call_with_retry(attempt, self.cfg.retry, is_transient=lambda e: classify_ee_error(e) is not None)
        except Exception as e:
            kind = classify_ee_error(e)
            if kind is None and not isinstance(e, ee.EEException):
                raise  # a bug in this adapter, not a property of the chip: fail loudly
            permanent = permanent_ee_reason(e) if kind is None else None
            if permanent is not None:
                raise ChipRejected(f"ee_{permanent}", redact(f"{type(e).__name__}: {e}")) from None
            raise ChipRejected(f"fetch_failed:{kind or 'ee_error'}", redact(f"{type(e).__name__}: {e}")) from None


# --------------------------------------------------------------------------- shared request helpers


def pixel_grid_request(grid: TileGrid) -> dict[str, Any]:
    """The ``grid`` of a computePixels request: exactly ``grid``'s CRS, transform and size."""
    t = grid.transform
    out: dict[str, Any] = {
        "dimensions": {"width": grid.size, "height": grid.size},
        "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c,
                            "shearY": t.d, "scaleY": t.e, "translateY": t.f},
    }
    if grid.crs.upper().startswith("EPSG:"):
        out["crsCode"] = grid.crs
    else:
        out["crsWkt"] = grid.crs
    return out


def footprint(ee: Any, grid: TileGrid) -> Any:
    """The chip footprint as an ``ee.Geometry`` rectangle in the grid's own CRS (planar edges)."""
    left, bottom, right, top = grid.bounds
    return ee.Geometry.Rectangle(coords=[left, bottom, right, top], proj=grid.crs, geodesic=False)


def _fetch_pixels(session: EarthEngineSession, image: Any, band_ids: list[str], grid: TileGrid) -> np.ndarray:
    """computePixels on ``grid``; returns the structured (H, W) array, checked for shape and fields."""
    ee = session.ee
    request = {
        "expression": image.select(band_ids),
        "fileFormat": "NUMPY_NDARRAY",
        "bandIds": band_ids,
        "grid": pixel_grid_request(grid),
    }

    def run() -> np.ndarray:
        data = ee.data.computePixels(request)
        names = getattr(getattr(data, "dtype", None), "names", None) or ()
        if getattr(data, "shape", None) != (grid.size, grid.size) or any(b not in names for b in band_ids):
            raise TransientError("bad_reply", f"expected a ({grid.size}, {grid.size}) array with bands "
                                              f"{band_ids}, got shape {getattr(data, 'shape', None)}, "
                                              f"fields {list(names)}")
        return data

    return session.call(run)


def _stack(data: np.ndarray, bands: list[str], dtype: type[np.integer]) -> np.ndarray:
    """Structured (H, W) array -> (bands, H, W) of ``dtype`` (rounded, clipped to its range)."""
    info = np.iinfo(dtype)
    arr = np.stack([np.asarray(data[b]) for b in bands])
    if arr.dtype.kind == "f":
        arr = np.rint(np.nan_to_num(arr, nan=0.0))
    return np.clip(arr, info.min, info.max).astype(dtype)


def _utc_date(ms: float) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.timezone.utc).date()


def _noon_ms(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc).timestamp() * 1000.0


# --------------------------------------------------------------------------- Sentinel-2


@dataclass(frozen=True)
class _Scene:
    time_start: int
    index: str
    cloudy_pct: float | None

    @property
    def datatake(self) -> str:
        m = _DATATAKE.match(self.index)
        return m.group(1) if m else self.index


class Sentinel2Source:
    """Sentinel-2 L2A chips from Earth Engine: uint16 (bands, size, size), DN = reflectance x 1e4.

    Args:
        cfg: chip selection.
        ee_cfg: how to reach Earth Engine.
        ee_module: the ``ee`` module to use (default: ``import ee`` on first fetch).
    """

    name = "sentinel2"

    def __init__(self, cfg: Sentinel2Config, ee_cfg: EarthEngineConfig, ee_module: Any | None = None):
        self.cfg = cfg
        self.session = EarthEngineSession(ee_cfg, ee_module)

    @property
    def _cloud_band(self) -> str:
        return "SCL" if self.cfg.chip_cloud_band == "SCL" else "probability"

    def candidates(self, grid: TileGrid, day: dt.date) -> list[_Scene]:
        """Scenes intersecting ``grid`` within the window around ``day`` that pass the scene cloud filter."""
        ee, cfg = self.session.ee, self.cfg
        start = day - dt.timedelta(days=cfg.window_days)
        end = day + dt.timedelta(days=cfg.window_days + 1)  # filterDate's end is exclusive
        col = (
            ee.ImageCollection(cfg.collection)
            .filterBounds(footprint(ee, grid))
            .filterDate(start.isoformat(), end.isoformat())
            .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", cfg.max_cloud))
        )
        query = ee.List([col.aggregate_array("system:time_start"), col.aggregate_array("system:index"),
                         col.aggregate_array("CLOUDY_PIXEL_PERCENTAGE")])

        def run() -> list:
            reply = query.getInfo()
            if not (isinstance(reply, list) and len(reply) == 3 and len(reply[0]) == len(reply[1])):
                raise TransientError("bad_reply", f"candidate listing is malformed: {str(reply)[:200]}")
            return reply

        times, indices, clouds = self.session.call(run)
        if len(clouds) != len(times):  # aggregate_array skips missing properties; then do without them
            clouds = [None] * len(times)
        return [_Scene(int(t), str(i), None if c is None else float(c))
                for t, i, c in zip(times, indices, clouds, strict=True)]

    @staticmethod
    def rank_datatakes(scenes: list[_Scene], day: dt.date) -> list[list[_Scene]]:
        """Group scenes by datatake, nearest in time to ``day`` (noon UTC) first; ties: earlier first."""
        target = _noon_ms(day)
        groups: dict[str, list[_Scene]] = {}
        for s in scenes:
            groups.setdefault(s.datatake, []).append(s)
        ordered = sorted(groups.values(), key=lambda g: (min(abs(s.time_start - target) for s in g),
                                                         min(s.time_start for s in g), g[0].index))
        return [sorted(g, key=lambda s: (abs(s.time_start - target), s.index)) for g in ordered]

    def _image(self, scenes: list[_Scene]) -> Any:
        ee, cfg = self.session.ee, self.cfg
        images = []
        for s in scenes:
            img = ee.Image(f"{cfg.collection}/{s.index}")
            if cfg.resampling != "nearest":
                # On the reflectance bands only: resampling would blend Scene Classification classes.
                refl = img.select(list(cfg.bands)).resample(cfg.resampling)
                img = refl.addBands(img.select(["SCL"])) if cfg.chip_cloud_band == "SCL" else refl
            if cfg.chip_cloud_band == "probability":
                img = img.addBands(ee.Image(f"{cfg.cloud_probability_collection}/{s.index}").select("probability"))
            images.append(img)
        # Nearest granule last: ee's mosaic puts the last image on top.
        return images[0] if len(images) == 1 else ee.ImageCollection(images[::-1]).mosaic()

    def fetch(self, grid: TileGrid, date: dt.date | None) -> SatelliteChip:
        """Fetch the chip on ``grid`` from the scene nearest in time to ``date``.

        Raises:
            ChipRejected: ``no_image_in_window``, ``cloudy_chip``, ``nodata`` or ``fetch_failed:<kind>``.
        """
        cfg = self.cfg
        day = date or cfg.default_date or dt.date.today()
        scenes = self.candidates(grid, day)
        if not scenes:
            raise ChipRejected(
                "no_image_in_window",
                f"no {cfg.collection} scene with CLOUDY_PIXEL_PERCENTAGE < {cfg.max_cloud} within "
                f"{cfg.window_days} days of {day}",
            )
        band_ids = [*cfg.bands, self._cloud_band]
        last: ChipRejected | None = None
        for group in self.rank_datatakes(scenes, day)[: cfg.max_images_tried]:
            data = _fetch_pixels(self.session, self._image(group), band_ids, grid)
            try:
                return self._to_chip(data, grid, group, day, len(scenes))
            except ChipRejected as e:
                last = e
        assert last is not None
        raise last

    def _to_chip(self, data: np.ndarray, grid: TileGrid, group: list[_Scene], day: dt.date,
                 n_candidates: int) -> SatelliteChip:
        cfg = self.cfg
        arr = _stack(data, cfg.bands, np.uint16)
        cloud = np.asarray(data[self._cloud_band])
        valid = np.any(arr != 0, axis=0)  # masked pixels come back as 0 in every band
        if cfg.chip_cloud_band == "SCL":
            valid &= cloud != SCL_NO_DATA
            cloudy = np.isin(cloud, SCL_CLOUD_CLASSES) & valid
        else:
            cloudy = (cloud >= cfg.cloud_probability_threshold) & valid
        ids = [s.index for s in group]
        valid_fraction = float(valid.mean())
        if valid_fraction < max(cfg.min_valid_fraction, 1e-9):
            raise ChipRejected("nodata", f"{valid_fraction:.1%} of the chip holds data in {ids} "
                                         f"(need {cfg.min_valid_fraction:.0%})")
        cloud_fraction = float(cloudy.sum() / valid.sum())
        if cloud_fraction > cfg.max_chip_cloud_fraction:
            raise ChipRejected("cloudy_chip", f"{cloud_fraction:.1%} of the chip is cloud/shadow/cirrus in {ids} "
                                              f"(max {cfg.max_chip_cloud_fraction:.0%})")
        nearest = group[0]
        return SatelliteChip(
            array=arr,
            grid=grid,
            bands=list(cfg.bands),
            date=_utc_date(nearest.time_start),
            source=self.name,
            meta={
                "image_ids": [f"{cfg.collection}/{i}" for i in ids],
                "requested_date": day.isoformat(),
                "days_from_request": abs((_utc_date(nearest.time_start) - day).days),
                "candidates": n_candidates,
                "cloudy_pixel_percentage": nearest.cloudy_pct,
                "chip_cloud_fraction": cloud_fraction,
                "valid_fraction": valid_fraction,
            },
        )


# --------------------------------------------------------------------------- NAIP


class NaipSource:
    """NAIP chips from Earth Engine: uint8 (bands, size, size), one year's mosaic.

    Args:
        cfg: chip selection.
        ee_cfg: how to reach Earth Engine.
        ee_module: the ``ee`` module to use (default: ``import ee`` on first fetch).
    """

    name = "naip"

    def __init__(self, cfg: NaipConfig, ee_cfg: EarthEngineConfig, ee_module: Any | None = None):
        self.cfg = cfg
        self.session = EarthEngineSession(ee_cfg, ee_module)

    def choose_year(self, years: list[int], date: dt.date | None) -> int:
        """The NAIP year to use among ``years`` (all non-empty) under the configured policy."""
        if self.cfg.year_policy == "nearest" and date is not None:
            return min(years, key=lambda y: (abs(y - date.year), -y))
        return max(years)

    def fetch(self, grid: TileGrid, date: dt.date | None) -> SatelliteChip:
        """Fetch the chip on ``grid`` from the chosen NAIP year's mosaic.

        Raises:
            ChipRejected: ``outside_coverage``, ``no_image_in_window`` (pinned year
                missing here), ``nodata`` or ``fetch_failed:<kind>``.
        """
        ee, cfg = self.session.ee, self.cfg
        col = ee.ImageCollection(cfg.collection).filterBounds(footprint(ee, grid))
        query = ee.List([col.aggregate_array("system:time_start"), col.aggregate_array("system:index")])

        def run() -> list:
            reply = query.getInfo()
            if not (isinstance(reply, list) and len(reply) == 2 and len(reply[0]) == len(reply[1])):
                raise TransientError("bad_reply", f"NAIP listing is malformed: {str(reply)[:200]}")
            return reply

        times, indices = self.session.call(run)
        if not times:
            raise ChipRejected("outside_coverage", f"no {cfg.collection} image intersects the chip "
                                                   f"(NAIP covers the contiguous US only)")
        by_year: dict[int, list[tuple[int, str]]] = {}
        for t, i in zip(times, indices, strict=True):
            by_year.setdefault(_utc_date(int(t)).year, []).append((int(t), str(i)))
        if cfg.year is not None:
            if cfg.year not in by_year:
                raise ChipRejected("no_image_in_window", f"no {cfg.collection} image from {cfg.year} intersects "
                                                         f"the chip; years here: {sorted(by_year)}")
            year = cfg.year
        else:
            year = self.choose_year(sorted(by_year), date)
        year_col = col.filterDate(f"{year}-01-01", f"{year + 1}-01-01")
        if cfg.resampling != "nearest":
            # resample() must act on each source image: a mosaic has no native projection to resample from.
            mode = cfg.resampling
            year_col = year_col.map(lambda img: img.resample(mode))
        bands = list(cfg.bands)
        data = _fetch_pixels(self.session, year_col.mosaic(), bands, grid)
        arr = _stack(data, bands, np.uint8)
        valid_fraction = float(np.any(arr != 0, axis=0).mean())
        if valid_fraction < max(cfg.min_valid_fraction, 1e-9):
            raise ChipRejected("nodata", f"{valid_fraction:.1%} of the chip holds data in the NAIP {year} mosaic "
                                         f"(need {cfg.min_valid_fraction:.0%})")
        items = sorted(by_year[year])
        return SatelliteChip(
            array=arr,
            grid=grid,
            bands=bands,
            date=_utc_date(items[-1][0]),
            source=self.name,
            meta={
                "year": year,
                "years_available": sorted(by_year),
                "image_ids": [f"{cfg.collection}/{i}" for _, i in items],
                "valid_fraction": valid_fraction,
            },
        )
