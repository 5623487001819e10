"""``graft build``: ground photos -> indoor filter -> greedy tile cover -> satellite chips -> shards + manifest.

The region is cut into geographic blocks (:mod:`graft.pipeline.region`); each
block is one *partition*, processed by one task from start to end:

1. photos: the folder source's photos assigned to the block (the folder is
   scanned and de-duplicated once, up front), or Flickr searches at query
   points sampled inside the block;
2. each photo is read (folder) or downloaded (Flickr) and
   :func:`graft.pipeline.photos.prepare_photo` validates and shrinks it, on
   one pool thread, so a photo is decoded once and only its small JPEG is
   kept; exact duplicates within the partition go (``duplicate_content``);
3. the indoor filter drops indoor shots (``indoor``), keeping the score;
4. :func:`graft.pipeline.cover.greedy_cover` groups photos into tiles (at most
   ``max_per_tile`` each), and each tile's chip is fetched exactly once, on a
   thread pool; a rejected chip drops its photos as ``tile_<reason>``;
5. the partition's shards ``tiles/tiles-PPPPP.tar`` and
   ``photos/photos-PPPPP.tar`` are written atomically, then its folder
   ``parts/part-PPPPP/`` (manifest part, tile table, stats) appears
   atomically: the folder is the completion marker. A re-run skips partitions
   whose folder exists; shards orphaned by a killed run are overwritten.

Every random choice is seeded from the config seed and the partition id, so
a build killed at any point and resumed, a build with several local workers,
and a Ray build all produce the same manifest. Finalising (always re-run, it
is cheap) concatenates the parts into ``manifest.parquet`` and writes
``stats.json``, ``map.png``, ``photos_per_tile.png`` and ``build_config.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from affine import Affine
from pydantic import Field, field_validator, model_validator
from rasterio.env import set_gdal_config
from tqdm import tqdm

from graft.config import ConfigError, StrictModel, dump_config, load_config
from graft.credentials import redact
from graft.geometry import TileGrid
from graft.imagery import encode_geotiff
from graft.pipeline.cover import PlannedTile, greedy_cover
from graft.pipeline.indoor import IndoorFilter, IndoorFilterConfig
from graft.pipeline.photos import PhotoRejected, PreparedPhoto, content_hash, prepare_photo
from graft.pipeline.plots import plot_map, plot_photos_per_tile
from graft.pipeline.region import Region, RegionConfig
from graft.pipeline.shards import KEY_RE, json_bytes, shard_names, write_samples
from graft.pipeline.split import SPLITS, SplitConfig, assign_splits
from graft.sources.base import ChipRejected, GroundPhoto, Rejections, SatelliteChip, SatelliteSource
from graft.sources.earthengine import (
    EarthEngineConfig,
    NaipConfig,
    NaipSource,
    Sentinel2Config,
    Sentinel2Source,
)
from graft.sources.flickr import FlickrConfig, FlickrSource
from graft.sources.folder import FolderConfig, FolderSource
from graft.sources.geotiff import GeoTiffConfig, GeoTiffSource
from graft.storage import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, clean_stale_temps

log = logging.getLogger(__name__)

# Rejection reasons that count queries, not photos (Flickr's failed/truncated searches).
QUERY_LEVEL_PREFIXES = ("query_",)
PART_EXAMPLES = 50  # rejection examples kept per partition (stats.json keeps up to 1000 overall)

# ---------------------------------------------------------------- config


class GroundConfig(StrictModel):
    """Where the ground photos come from and how many a tile keeps.

    Attributes:
        kind: ``folder`` (local files with EXIF GPS or a sidecar) or ``flickr``.
        folder: the folder source (``kind: folder``).
        flickr: the Flickr source (``kind: flickr``).
        points_per_km2: Flickr query points per km² of region, sampled uniformly per block.
        n_points: alternatively, the total number of Flickr query points in the region.
        seed: seed of the query-point sampling.
        max_per_tile: cap of photos per tile (GRAFT: 25); extra photos are dropped as ``over_tile_cap``.
        require_date: drop photos without a capture date (``no_date``); needed for temporal
            alignment with Sentinel-2.
        short_side: stored photos are resized to this shorter side (never enlarged).
        max_pixels: photos with more pixels are rejected as ``decompression_bomb``.
    """

    kind: Literal["folder", "flickr"]
    folder: FolderConfig | None = None
    flickr: FlickrConfig | None = None
    points_per_km2: float | None = Field(None, gt=0)
    n_points: int | None = Field(None, ge=1)
    seed: int = 0
    max_per_tile: int = Field(25, ge=1)
    require_date: bool = False
    short_side: int = Field(256, ge=16)
    max_pixels: int = Field(50_000_000, ge=1)

    @field_validator("folder")
    @classmethod
    def _folder_exists(cls, v: FolderConfig | None) -> FolderConfig | None:
        if v is not None:
            if not Path(v.root).expanduser().is_dir():
                raise ValueError(f"folder.root: {v.root} is not an existing folder")
            if v.sidecar is not None and not Path(v.sidecar).expanduser().is_file():
                raise ValueError(f"folder.sidecar: {v.sidecar} does not exist")
        return v

    @model_validator(mode="after")
    def _kind_section(self) -> GroundConfig:
        if self.kind == "folder" and self.folder is None:
            raise ValueError("kind is 'folder' but the 'folder' section (root: PATH) is missing")
        if self.kind == "flickr":
            if self.flickr is None:
                raise ValueError("kind is 'flickr' but the 'flickr' section (min_taken, max_taken, ...) is missing")
            if (self.points_per_km2 is None) == (self.n_points is None):
                raise ValueError("kind 'flickr' needs exactly one of points_per_km2 and n_points "
                                 "(how many search points to sample in the region)")
        return self


class SatelliteConfig(StrictModel):
    """Which satellite imagery each tile gets.

    ``tile_size`` and ``gsd`` default to the sub-config's ``size``/``gsd``
    (Sentinel-2: 448 px at 10 m, NAIP: 448 px at 1 m, GeoTIFF: as configured);
    setting them here sets both. ``time_bin_months`` groups photos into one
    tile only when taken in the same bin of months (Sentinel-2 only: the
    tile's chip is the scene nearest the tile's median photo date).

    A chip the source rejects for what the data is (``outside_coverage``,
    ``cloudy_chip``, ``nodata``...) drops its photos as ``tile_<reason>``. A
    chip that could not be fetched after the source's retries
    (``fetch_failed:*``, an outage) fails the partition by default
    (``on_fetch_failure: retry_partition``) so that the next run retries it
    instead of baking the outage into the dataset; ``drop_tile`` treats it like
    any other rejection.

    Attributes:
        kind: ``sentinel2``, ``naip`` (Earth Engine) or ``geotiff`` (local files).
        sentinel2: the Sentinel-2 source settings (``kind: sentinel2``).
        naip: the NAIP source settings (``kind: naip``).
        geotiff: the local GeoTIFF/COG source settings (``kind: geotiff``).
        earthengine: credentials and endpoint of the Earth Engine sources.
        tile_size: tile side in pixels (default: the source's).
        gsd: ground sample distance in metres (default: the source's).
        time_bin_months: photos share a tile only if taken in the same bin of months.
        on_fetch_failure: ``retry_partition`` (fail the partition; a re-run retries it) or ``drop_tile``.
    """

    kind: Literal["sentinel2", "naip", "geotiff"]
    sentinel2: Sentinel2Config | None = None
    naip: NaipConfig | None = None
    geotiff: GeoTiffConfig | None = None
    earthengine: EarthEngineConfig = Field(default_factory=EarthEngineConfig)
    tile_size: int | None = Field(None, ge=8)
    gsd: float | None = Field(None, gt=0)
    time_bin_months: int | None = Field(3, ge=1, le=120)
    on_fetch_failure: Literal["retry_partition", "drop_tile"] = "retry_partition"

    @model_validator(mode="after")
    def _resolve(self) -> SatelliteConfig:
        sub = getattr(self, self.kind)
        if sub is None:
            if self.kind == "geotiff":
                raise ValueError("kind is 'geotiff' but the 'geotiff' section (paths: [...]) is missing")
            sub = {"sentinel2": Sentinel2Config, "naip": NaipConfig}[self.kind]()
        updates = {}
        for mine, theirs in (("tile_size", "size"), ("gsd", "gsd")):
            value = getattr(self, mine)
            if value is None:
                object.__setattr__(self, mine, getattr(sub, theirs))
            elif theirs in sub.model_fields_set and getattr(sub, theirs) != value:
                raise ValueError(f"{mine}={value} contradicts {self.kind}.{theirs}={getattr(sub, theirs)}; "
                                 "set only one of them")
            else:
                updates[theirs] = value
        if updates:
            sub = sub.model_copy(update=updates)
        object.__setattr__(self, self.kind, sub)
        return self

    @property
    def source_config(self) -> StrictModel:
        return getattr(self, self.kind)

    @property
    def bin_months(self) -> int | None:
        """Months per time bin of the cover, or None (only Sentinel-2 chips depend on the date)."""
        return self.time_bin_months if self.kind == "sentinel2" else None


class BuildConfig(StrictModel):
    """The whole dataset build; see data_pipeline/*.yaml for annotated examples.

    Relative paths are relative to the working directory.

    Attributes:
        out_dir: the dataset folder (shards, manifest.parquet, stats.json); re-running resumes it.
        region: the area covered and its geographic blocks (partitions and split units).
        ground: where the ground photos come from and how they are sampled.
        filter: the indoor filter (photos scored as indoors are rejected).
        satellite: which satellite imagery each tile gets.
        split: fractions of blocks per train/val/test split.
        fetch_workers: I/O threads per process (searches, downloads, chip fetches).
        seed: seed of every random choice of the build.
    """

    out_dir: str
    region: RegionConfig
    ground: GroundConfig
    filter: IndoorFilterConfig = Field(default_factory=IndoorFilterConfig)
    satellite: SatelliteConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    fetch_workers: int = Field(16, ge=1)
    gdal_cache_mb: int = Field(
        128, ge=8, description="GDAL's raster block cache per build process (MB). GDAL's default is 5% of RAM, "
        "and every fetch thread's handle on a GeoTIFF caches its own copy of the blocks it reads, so the cache "
        "grows with the area a process covers until that cap")
    seed: int = 0

    def fingerprint(self) -> str:
        """Hash of every setting that changes the dataset's content.

        Operational settings (out_dir, parallelism, devices, rate limits,
        retries, endpoints, credential variable names) are left out, so a
        build may be resumed on another machine or with other limits.
        """
        data = self.model_dump(mode="json", exclude={"out_dir", "fetch_workers", "gdal_cache_mb"})
        data["filter"].pop("device", None)
        data["filter"].pop("cache_dir", None)
        data["satellite"].pop("earthengine", None)
        for section, keys in (("folder", ("workers",)),
                              ("flickr", ("api_key_env", "api_secret_env", "rest_url", "queries_per_hour",
                                          "timeout_s", "retry"))):
            if isinstance(data["ground"].get(section), dict):
                for k in keys:
                    data["ground"][section].pop(k, None)
        if isinstance(data["satellite"].get("geotiff"), dict):
            data["satellite"]["geotiff"].pop("max_open_per_thread", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- per-process caches

_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def _cached(kind: str, key: str, make: Callable[[], Any]) -> Any:
    """One instance per process and config: models and sources are loaded once, not once per partition."""
    with _CACHE_LOCK:
        if (kind, key) not in _CACHE:
            _CACHE[(kind, key)] = make()
        return _CACHE[(kind, key)]


def _io_pool(workers: int) -> ThreadPoolExecutor:
    """The process's I/O thread pool (fetches, downloads, decoding), shared by every partition it runs.

    Threads are reused, never made per partition: GDAL keeps per-thread state that is not freed when
    a thread exits (~0.6 MB a thread measured here), so a pool per partition made the build's memory
    grow with the number of partitions. Keyed by pid too: a forked child must not inherit the
    parent's pool, whose threads do not exist in it.
    """
    return _cached("io_pool", f"{os.getpid()}:{workers}",
                   lambda: ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-io"))


def _limit_gdal_cache(mb: int) -> None:
    """Cap GDAL's block cache for this process (GDAL applies a new cap at once, also to other threads).

    Set on every partition, not once: it is one cheap call, and a process that runs builds with
    different caps then always has the running build's.
    """
    set_gdal_config("GDAL_CACHEMAX", mb * 1024 * 1024)


def _release_free_heap() -> None:
    """Hand the heap's free pages back to the OS once a partition is done (glibc; elsewhere a no-op).

    Each I/O thread allocates from its own glibc arena, and a partition's photos, chips and shards
    leave those arenas fragmented: without a trim the build's resident memory crept up by ~1 MB per
    partition (bench ``build_rss``), so with the region instead of with the largest partition.
    """
    trim = _cached("malloc_trim", "", _find_malloc_trim)
    if trim is not None:
        trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (macOS, musl): nothing to trim with


def _region(cfg: BuildConfig) -> Region:
    return _cached("region", cfg.region.model_dump_json(), lambda: Region.from_config(cfg.region))


def _indoor_filter(cfg: IndoorFilterConfig) -> IndoorFilter:
    return _cached("filter", cfg.model_dump_json(), lambda: _LockedFilter(IndoorFilter(cfg)))


class _LockedFilter:
    """Serialises scoring: partitions on threads share one model (torch already uses every core)."""

    def __init__(self, inner: IndoorFilter):
        self.inner = inner
        self._lock = threading.Lock()

    def score(self, images: list[bytes]) -> np.ndarray:
        with self._lock:
            return self.inner.score(images)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return self.inner.keep(scores)

    def describe(self) -> dict:
        return self.inner.describe()


def make_satellite_source(cfg: SatelliteConfig) -> SatelliteSource:
    """The configured satellite source (not cached)."""
    if cfg.kind == "sentinel2":
        return Sentinel2Source(cfg.sentinel2, cfg.earthengine)
    if cfg.kind == "naip":
        return NaipSource(cfg.naip, cfg.earthengine)
    return GeoTiffSource(cfg.geotiff, Rejections())


def _satellite(cfg: SatelliteConfig) -> SatelliteSource:
    return _cached("satellite", cfg.model_dump_json(), lambda: make_satellite_source(cfg))


# ---------------------------------------------------------------- partition tasks


@dataclass
class PartitionTask:
    """Everything one partition needs besides the config (picklable, for Ray)."""

    partition: int
    split: str
    photos: list[GroundPhoto] = field(default_factory=list)  # folder source: photos of this block
    query_points: list[tuple[float, float]] = field(default_factory=list)  # flickr: (lat, lon) per search


def part_dir(out_dir: str | os.PathLike, partition: int) -> Path:
    """``OUT/parts/part-PPPPP``: the partition's manifest part, tile table and stats (its completion marker)."""
    return Path(out_dir) / "parts" / f"part-{partition:05d}"


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    """Naive capture times (EXIF without offset, Flickr) are labelled UTC as they are."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _seed(cfg: BuildConfig, partition: int, stage: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, partition, stage]))


class _Stage:
    """Times a stage into ``timings`` (seconds)."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 4)


# A photo to prepare, and how to get its bytes (None: unreadable, already in the ledger). Loading inside
# the preparation task keeps only the small prepared JPEGs in memory, never a partition's originals.
Loader = Callable[[], "bytes | None"]


def _gather_folder(cfg: BuildConfig, task: PartitionTask, ledger: Rejections) -> list[tuple[GroundPhoto, Loader]]:
    src = FolderSource(cfg.ground.folder, ledger)

    def loader(p: GroundPhoto) -> Loader:
        def load() -> bytes | None:
            try:
                return src.load(p)
            except OSError as e:
                ledger.add("file_missing", p.photo_id, f"{p.uri}: {e}")
                return None
        return load

    return [(p, loader(p)) for p in task.photos]


def _gather_flickr(cfg: BuildConfig, task: PartitionTask, src: FlickrSource, ledger: Rejections,
                   counts: Counter) -> list[tuple[GroundPhoto, Loader]]:
    region = _region(cfg)
    pool = _io_pool(cfg.fetch_workers)
    results = list(pool.map(lambda q: src.search(q[0], q[1]), task.query_points))
    counts["query_points"] += len(task.query_points)
    found: dict[str, GroundPhoto] = {}
    for photos in results:  # query circles overlap: the same photo comes back from several points
        for p in photos:
            found.setdefault(p.photo_id, p)
    counts["search_results"] += len(found)
    ordered = [found[k] for k in sorted(found)]
    lat = np.array([p.lat for p in ordered], dtype=float)
    lon = np.array([p.lon for p in ordered], dtype=float)
    inside = region.contains(lat, lon) if ordered else np.zeros(0, dtype=bool)
    blocks = region.block_of(lat, lon) if ordered else np.zeros(0, dtype=np.int64)
    mine: list[GroundPhoto] = []
    for i, p in enumerate(ordered):
        if not inside[i]:
            ledger.add("outside_region", p.photo_id, f"({p.lat:.5f}, {p.lon:.5f})")
        elif blocks[i] != task.partition:
            # A search circle near the block edge reaches into the neighbour; that block's
            # own partition keeps the photo, so it is handed off here, not rejected.
            counts["found_in_other_block"] += 1
        elif cfg.ground.require_date and p.taken_at is None:
            ledger.add("no_date", p.photo_id, "no capture date and ground.require_date is set")
        else:
            mine.append(p)
    counts["input"] += len(mine)

    def loader(p: GroundPhoto) -> Loader:
        # The download happens inside the preparation task, so a photo is fetched, decoded once and
        # shrunk on one thread, and only its small prepared JPEG outlives the task.
        def load() -> bytes | None:
            got = src.download(p)  # a failure is already in the ledger
            if got is None:
                return None
            data, got.image = got.image, None
            return data
        return load

    return [(p, loader(p)) for p in mine]


def _prepare(cfg: BuildConfig, items: list[tuple[GroundPhoto, Loader]], ledger: Rejections,
             pool: ThreadPoolExecutor, counts: Counter) -> list[tuple[GroundPhoto, PreparedPhoto]]:
    """Load, validate and shrink each photo on the pool; drop exact duplicates within the partition.

    The folder source is de-duplicated once over the whole folder before partitioning, so duplicates
    here are Flickr re-uploads; across partitions they stay (see README). Items are in photo-id
    order and ``pool.map`` keeps it, so the first of a set of duplicates is kept, on every run.
    """
    def one(item: tuple[GroundPhoto, Loader]) -> PreparedPhoto | PhotoRejected | None:
        data = item[1]()
        if data is None:
            return None
        try:
            return prepare_photo(data, cfg.ground.short_side, cfg.ground.max_pixels)
        except PhotoRejected as e:
            return e

    out = []
    seen: dict[str, str] = {}
    for (photo, _), res in zip(items, pool.map(one, items), strict=True):
        if res is None:
            continue
        counts["loaded"] += 1
        if isinstance(res, PhotoRejected):
            ledger.add(res.reason, photo.photo_id, res.detail)
        elif res.sha256 in seen:
            ledger.add("duplicate_content", photo.photo_id, f"same bytes as {seen[res.sha256]}")
        else:
            seen[res.sha256] = photo.photo_id
            out.append((photo, res))
    return out


def _plain(obj: Any) -> Any:
    """JSON-ready copy: dates as ISO strings, numpy scalars/arrays as Python numbers/lists."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _check_chip(chip: SatelliteChip, grid: TileGrid, tile_id: str) -> None:
    """The chip must sit on the requested grid, or the photos' pixel positions would be wrong."""
    same = (chip.grid.crs == grid.crs and chip.grid.size == grid.size
            and chip.grid.transform.almost_equals(grid.transform, precision=1e-6))
    if not same:
        raise RuntimeError(f"tile {tile_id}: the satellite source returned a chip on {chip.grid}, not on the "
                           f"requested grid {grid}; sources must resample onto the given grid")
    if chip.array.ndim != 3 or chip.array.shape[1:] != (grid.size, grid.size):
        raise RuntimeError(f"tile {tile_id}: chip array has shape {chip.array.shape}, expected "
                           f"(bands, {grid.size}, {grid.size})")


@dataclass
class _Fetched:
    """A fetched chip, already encoded as GeoTIFF bytes."""

    grid: TileGrid
    bands: list[str]
    date: dt.date | None
    source: str
    meta: dict
    tif: bytes


def run_partition(cfg: BuildConfig, task: PartitionTask, satellite: SatelliteSource | None = None,
                  progress: bool = False) -> dict:
    """Process one partition end to end and write its outputs atomically; returns its stats.

    Args:
        cfg: the validated build config.
        task: the partition's id, split and input (photos or query points).
        satellite: a satellite source to use instead of the configured one (custom sources, tests).
        progress: show a bar over this partition's tile fetches.
    """
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    pid = task.partition
    ledger = Rejections(keep_examples=PART_EXAMPLES)
    counts: Counter[str] = Counter()
    timings: dict[str, float] = {}
    _limit_gdal_cache(cfg.gdal_cache_mb)
    source = satellite if satellite is not None else _satellite(cfg.satellite)

    pool = _io_pool(cfg.fetch_workers)
    with contextlib.ExitStack() as stack:
        # 1. the partition's photos: folder files or Flickr search results (their bytes are read in step 2)
        with _Stage(timings, "gather_s"):
            if cfg.ground.kind == "folder":
                counts["input"] += len(task.photos)
                items = _gather_folder(cfg, task, ledger)
            else:
                flickr = stack.enter_context(FlickrSource(cfg.ground.flickr, ledger))
                items = _gather_flickr(cfg, task, flickr, ledger, counts)
        for p, _ in items:
            if not KEY_RE.fullmatch(p.photo_id):
                raise RuntimeError(f"ground source produced photo id {p.photo_id!r}, which is not a valid "
                                   f"shard key ({KEY_RE.pattern})")

        # 2. read or download, validate and shrink
        with _Stage(timings, "prepare_s"):
            prepared = _prepare(cfg, items, ledger, pool, counts)
        del items
        if cfg.ground.kind == "flickr":
            # The source's request counters (attempts included) go into stats.json: without them a build
            # that retried a third of its requests looks exactly like a healthy one.
            counts.update({f"flickr_{k}": v for k, v in flickr.counters.items()})
    counts["prepared"] += len(prepared)

    # 3. indoor filter
    with _Stage(timings, "filter_s"):
        if prepared:
            flt = _indoor_filter(cfg.filter)
            scores = np.asarray(flt.score([pp.jpeg for _, pp in prepared]), dtype=np.float64)
            keep = np.asarray(flt.keep(scores), dtype=bool)
        else:
            scores, keep = np.zeros(0), np.zeros(0, dtype=bool)
    outdoor: list[tuple[GroundPhoto, PreparedPhoto, float]] = []
    for (photo, pp), s, k in zip(prepared, scores, keep, strict=True):
        if k:
            outdoor.append((photo, pp, float(s)))
        else:
            ledger.add("indoor", photo.photo_id, f"outdoor score {s:.3f} < {cfg.filter.threshold}")
    del prepared
    counts["outdoor"] += len(outdoor)
    outdoor.sort(key=lambda x: x[0].photo_id)

    # 4. greedy cover
    with _Stage(timings, "cover_s"):
        cover = greedy_cover(
            np.array([p.lat for p, _, _ in outdoor]), np.array([p.lon for p, _, _ in outdoor]),
            [_utc(p.taken_at) for p, _, _ in outdoor],
            tile_size=cfg.satellite.tile_size, gsd=cfg.satellite.gsd, max_per_tile=cfg.ground.max_per_tile,
            time_bin_months=cfg.satellite.bin_months, rng=_seed(cfg, pid, 1),
        )
    for j in cover.over_cap:
        ledger.add("over_tile_cap", outdoor[j][0].photo_id, f"tile already has {cfg.ground.max_per_tile} photos")
    counts["tiles_planned"] += len(cover.tiles)
    counts["covered"] += sum(len(t.members) for t in cover.tiles)

    # 5. one fetch per tile; the chip is encoded at once so a partition never holds its raw arrays
    def fetch(tile: PlannedTile) -> _Fetched | ChipRejected:
        try:
            chip = source.fetch(tile.grid, tile.date)
        except ChipRejected as e:
            return e
        _check_chip(chip, tile.grid, f"t-{pid:05d}-{tile.index:05d}")
        return _Fetched(grid=chip.grid, bands=list(chip.bands), date=chip.date,
                        source=chip.source or getattr(source, "name", ""), meta=_plain(chip.meta),
                        tif=encode_geotiff(chip.array, chip.grid))

    with _Stage(timings, "fetch_s"):
        futures = {pool.submit(fetch, t): t.index for t in cover.tiles}
        chips: dict[int, _Fetched | ChipRejected] = {}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"part {pid:05d} tiles", unit="tile",
                        disable=not progress, leave=False):
            chips[futures[fut]] = fut.result()
    counts["fetch_calls"] += len(chips)

    # 6. assemble and write
    with _Stage(timings, "write_s"):
        tile_rel, photo_rel = shard_names(pid)
        tile_samples: list[dict] = []
        photo_samples: list[dict] = []
        manifest_rows: list[dict] = []
        tile_rows: list[dict] = []
        tile_rejections: Counter[str] = Counter()
        for tile in cover.tiles:
            tile_id = f"t-{pid:05d}-{tile.index:05d}"
            chip = chips[tile.index]
            if isinstance(chip, ChipRejected):
                if chip.reason.startswith("fetch_failed") and cfg.satellite.on_fetch_failure == "retry_partition":
                    raise RuntimeError(f"tile {tile_id}: chip could not be fetched ({chip}); the partition will "
                                       "be retried on the next run (satellite.on_fetch_failure: drop_tile drops "
                                       "such tiles instead)")
                tile_rejections[chip.reason] += 1
                for j in tile.members:
                    ledger.add(f"tile_{chip.reason}", outdoor[j][0].photo_id, f"{tile_id}: {chip.detail}")
                continue
            tile_date = chip.date
            entries = []
            for j, r, c in zip(tile.members, tile.rows, tile.cols, strict=True):
                photo, pp, score = outdoor[j]
                row = {
                    "photo_id": photo.photo_id, "lat": float(photo.lat), "lon": float(photo.lon),
                    "taken_at": _utc(photo.taken_at), "tile_id": tile_id, "row": r, "col": c,
                    "split": task.split, "source": photo.source, "license": photo.license or "",
                    "owner": photo.owner or "", "outdoor_score": score, "tile_shard": tile_rel,
                    "photo_shard": photo_rel, "tile_crs": chip.grid.crs, "tile_date": tile_date,
                    "partition": pid,
                }
                manifest_rows.append(row)
                entries.append({"photo_id": photo.photo_id, "row": r, "col": c})
                photo_samples.append({"__key__": photo.photo_id, "jpg": pp.jpeg, "json": json_bytes(_plain(row))})
            meta = {
                "tile_id": tile_id, "grid": chip.grid.to_json(), "bands": list(chip.bands),
                "date": tile_date.isoformat() if tile_date else None,
                "source": chip.source, "split": task.split, "photos": entries, "meta": chip.meta,
            }
            tile_samples.append({"__key__": tile_id, "tif": chip.tif, "json": json_bytes(meta)})
            tile_rows.append({"tile_id": tile_id, "partition": pid, "split": task.split, "crs": chip.grid.crs,
                              "transform": list(chip.grid.transform)[:6], "size": chip.grid.size,
                              "date": tile_date, "n_photos": len(entries), "tile_shard": tile_rel})
        counts["tiles_written"] += len(tile_samples)
        counts["tiles_rejected"] += sum(tile_rejections.values())
        counts["kept"] += len(manifest_rows)

        # Shards first, the part folder last: the folder is the proof that the shards are complete.
        write_samples(out / tile_rel, tile_samples)
        write_samples(out / photo_rel, photo_samples)
        timings["total_s"] = round(time.perf_counter() - t_start, 4)
        stats = {
            "partition": pid, "split": task.split, "config_fingerprint": cfg.fingerprint(),
            "counts": dict(sorted(counts.items())), "rejections": ledger.to_json(),
            "tile_rejections": dict(sorted(tile_rejections.items())), "timings": timings,
            "tile_shard": tile_rel, "photo_shard": photo_rel,
        }
        with atomic_dir(part_dir(out, pid)) as tmp:
            pq.write_table(pa.Table.from_pylist(manifest_rows, schema=MANIFEST_SCHEMA), tmp / "manifest.parquet")
            pq.write_table(pa.Table.from_pylist(tile_rows, schema=TILES_SCHEMA), tmp / "tiles.parquet")
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")
    del tile_samples, photo_samples, chips, outdoor
    _release_free_heap()
    return stats


MANIFEST_SCHEMA = pa.schema([
    ("photo_id", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()),
    ("taken_at", pa.timestamp("us", tz="UTC")), ("tile_id", pa.string()), ("row", pa.float64()),
    ("col", pa.float64()), ("split", pa.string()), ("source", pa.string()), ("license", pa.string()),
    ("owner", pa.string()), ("outdoor_score", pa.float32()), ("tile_shard", pa.string()),
    ("photo_shard", pa.string()), ("tile_crs", pa.string()), ("tile_date", pa.date32()),
    ("partition", pa.int32()),
])

TILES_SCHEMA = pa.schema([
    ("tile_id", pa.string()), ("partition", pa.int32()), ("split", pa.string()), ("crs", pa.string()),
    ("transform", pa.list_(pa.float64())), ("size", pa.int32()), ("date", pa.date32()),
    ("n_photos", pa.int32()), ("tile_shard", pa.string()),
])


# ---------------------------------------------------------------- planning (driver)


@dataclass
class Plan:
    """The partitions of a build, and what the driver already dropped."""

    tasks: list[PartitionTask]
    ledger: Rejections
    counts: Counter
    timings: dict[str, float]


def _plan_folder(cfg: BuildConfig, region: Region) -> Plan:
    ledger, counts, timings = Rejections(), Counter(), {}
    src = FolderSource(cfg.ground.folder, ledger)
    with _Stage(timings, "scan_s"):
        scanned = list(src.scan())
    counts["located"] = len(scanned)
    counts["seen"] = len(scanned) + ledger.total

    # By id: the first in the scan's sorted path order wins.
    by_id: dict[str, GroundPhoto] = {}
    for p in scanned:
        if p.photo_id in by_id:
            ledger.add("duplicate_id", p.photo_id, f"{p.uri} has the id of {by_id[p.photo_id].uri}")
        else:
            by_id[p.photo_id] = p
    photos = list(by_id.values())

    inside = region.contains(np.array([p.lat for p in photos]), np.array([p.lon for p in photos])) \
        if photos else np.zeros(0, dtype=bool)
    kept: list[GroundPhoto] = []
    for i, p in enumerate(photos):
        if not inside[i]:
            ledger.add("outside_region", p.photo_id, f"{p.uri} at ({p.lat:.5f}, {p.lon:.5f})")
        elif cfg.ground.require_date and p.taken_at is None:
            ledger.add("no_date", p.photo_id, f"{p.uri}: no capture date and ground.require_date is set")
        else:
            kept.append(p)

    # By content, over the whole folder (a copy may sit in another block's sub-folder).
    def digest(p: GroundPhoto) -> str | None:
        try:
            return content_hash(src.load(p))
        except OSError:
            return None

    with _Stage(timings, "hash_s"), ThreadPoolExecutor(max_workers=cfg.fetch_workers) as pool:
        digests = list(tqdm(pool.map(digest, kept), total=len(kept), desc="folder: hashing", unit="photo",
                            mininterval=1.0))
    first: dict[str, GroundPhoto] = {}
    unique: list[GroundPhoto] = []
    for p, h in zip(kept, digests, strict=True):
        if h is None:
            ledger.add("file_missing", p.photo_id, f"{p.uri} vanished after the scan")
        elif h in first:
            ledger.add("duplicate_content", p.photo_id, f"{p.uri} has the same bytes as {first[h].uri}")
        else:
            first[h] = p
            unique.append(p)

    by_block: dict[int, list[GroundPhoto]] = {}
    if unique:
        blocks = region.block_of(np.array([p.lat for p in unique]), np.array([p.lon for p in unique]))
        for p, b in zip(unique, blocks, strict=True):
            if b < 0:  # inside the region yet off the block grid: cannot happen, the grid pads the region
                raise RuntimeError(f"photo {p.photo_id} at ({p.lat}, {p.lon}) falls outside the block grid")
            by_block.setdefault(int(b), []).append(p)
    counts["assigned"] = sum(len(v) for v in by_block.values())
    splits = assign_splits(list(by_block), cfg.split)
    tasks = [PartitionTask(partition=b, split=splits[b], photos=by_block[b]) for b in sorted(by_block)]
    return Plan(tasks, ledger, counts, timings)


def _plan_flickr(cfg: BuildConfig, region: Region) -> Plan:
    g = cfg.ground
    points: dict[int, list[tuple[float, float]]] = {}
    if g.n_points is not None:
        lat, lon = region.sample_points(g.n_points, np.random.default_rng(np.random.SeedSequence([g.seed, 0])))
        for la, lo, b in zip(lat, lon, region.block_of(lat, lon), strict=True):
            points.setdefault(int(b), []).append((float(la), float(lo)))
    else:
        for b in tqdm(region.block_ids, desc="sampling query points", unit="block", mininterval=1.0):
            rng = np.random.default_rng(np.random.SeedSequence([g.seed, 1, b]))
            expected = region.block_area_km2(b) * g.points_per_km2
            n = int(expected) + int(rng.random() < expected - int(expected))
            if n:
                lat, lon = region.sample_points(n, rng, within=region.block(b).bounds)
                points[b] = [(float(a), float(o)) for a, o in zip(lat, lon, strict=True)]
    splits = assign_splits(list(points), cfg.split)
    tasks = [PartitionTask(partition=b, split=splits[b], query_points=points[b]) for b in sorted(points)]
    counts = Counter(query_points_planned=sum(len(v) for v in points.values()))
    return Plan(tasks, Rejections(), counts, {})


def plan_build(cfg: BuildConfig) -> Plan:
    """The partitions to run, with their splits and inputs (deterministic given the config and inputs)."""
    region = _region(cfg)
    return _plan_folder(cfg, region) if cfg.ground.kind == "folder" else _plan_flickr(cfg, region)


# ---------------------------------------------------------------- distributors


def _partition_entry(cfg: BuildConfig, task: PartitionTask, satellite: SatelliteSource | None,
                     progress: bool) -> dict:
    """Run one partition; never raises (a failure is returned, the build goes on, a re-run retries it)."""
    try:
        return {"ok": True, "stats": run_partition(cfg, task, satellite, progress)}
    except Exception as e:  # noqa: BLE001 - one bad partition must not kill a continent-sized build
        return {"ok": False, "partition": task.partition, "error": redact(f"{type(e).__name__}: {e}"),
                "traceback": redact(traceback.format_exc())}


def _run_local(cfg: BuildConfig, tasks: list[PartitionTask], workers: int,
               satellite: SatelliteSource | None) -> Iterator[dict]:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="partition") as pool:
        futures = [pool.submit(_partition_entry, cfg, t, satellite, workers == 1) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()


def _run_ray(cfg: BuildConfig, tasks: list[PartitionTask], workers: int | None,
             satellite: SatelliteSource | None) -> Iterator[dict]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--distributor ray needs Ray: pip install 'graft[ray]'") from None
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=True)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_partition_entry)
        cfg_ref = ray.put(cfg)
        sat_ref = ray.put(satellite)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) * 2)
        pending: list = []
        queue = list(tasks)
        while queue or pending:
            while queue and len(pending) < limit:
                pending.append(remote.remote(cfg_ref, queue.pop(0), sat_ref, False))
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- finalize


def _read_parts(out: Path, wanted: dict[int, str]) -> tuple[list[dict], list[pa.Table], list[pa.Table], list[int]]:
    stats, manifests, tiles, stale = [], [], [], []
    for d in sorted((out / "parts").glob("part-*")):
        if not d.is_dir() or not (d / "stats.json").is_file():
            continue
        pid = int(d.name.split("-", 1)[1])
        if pid not in wanted:
            stale.append(pid)
            continue
        stats.append(json.loads((d / "stats.json").read_text()))
        manifests.append(pq.read_table(d / "manifest.parquet", schema=MANIFEST_SCHEMA))
        tiles.append(pq.read_table(d / "tiles.parquet", schema=TILES_SCHEMA))
    return stats, manifests, tiles, stale


def finalize(cfg: BuildConfig, plan: Plan, run_info: dict) -> dict:
    """Concatenate the parts into manifest.parquet and write stats.json, the plots and build_config.yaml."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    wanted = {t.partition: t.split for t in plan.tasks}
    part_stats, manifests, tiles, stale = _read_parts(out, wanted)
    if stale:
        log.warning("%d part folder(s) under %s/parts belong to no partition of this config (e.g. part-%05d); "
                    "they are left out of the manifest", len(stale), out, stale[0])

    manifest = pa.concat_tables(manifests) if manifests else MANIFEST_SCHEMA.empty_table()
    tile_table = pa.concat_tables(tiles) if tiles else TILES_SCHEMA.empty_table()
    with atomic_path(out / "manifest.parquet") as tmp:
        pq.write_table(manifest, tmp)

    ledger = Rejections()
    ledger.merge(plan.ledger)
    counts: Counter[str] = Counter(plan.counts)
    tile_rejections: Counter[str] = Counter()
    timings: Counter[str] = Counter(plan.timings)
    for s in part_stats:
        ledger.merge(s["rejections"])
        counts.update(s["counts"])
        tile_rejections.update(s["tile_rejections"])
        timings.update({f"partitions_{k}": v for k, v in s["timings"].items()})
    photo_level = sum(v for k, v in ledger.counts.items() if not k.startswith(QUERY_LEVEL_PREFIXES))
    if cfg.ground.kind == "flickr":
        counts["seen"] = int(manifest.num_rows + photo_level)

    split_col = manifest.column("split").to_pylist()
    tile_split = tile_table.column("split").to_pylist()
    splits = {s: {"blocks": sum(1 for v in wanted.values() if v == s),
                  "tiles": tile_split.count(s), "photos": split_col.count(s)} for s in SPLITS}

    grids = [(TileGrid(crs=c, transform=Affine(*t[:6]), size=int(z)), s) for c, t, z, s in zip(
        tile_table.column("crs").to_pylist(), tile_table.column("transform").to_pylist(),
        tile_table.column("size").to_pylist(), tile_split, strict=True)]
    region = _region(cfg)
    plot_map(out / "map.png", np.asarray(manifest.column("lat").to_numpy(), float),
             np.asarray(manifest.column("lon").to_numpy(), float), split_col, grids,
             region_outlines=region.outlines(), seed=cfg.seed)
    plot_photos_per_tile(out / "photos_per_tile.png", tile_table.column("n_photos").to_pylist(),
                         cfg.ground.max_per_tile)
    atomic_write_text(out / "build_config.yaml", config_yaml(cfg))

    timings["finalize_s"] = round(time.perf_counter() - t0, 4)
    stats = {
        "dataset": str(out),
        "config_fingerprint": cfg.fingerprint(),
        "photos": {"seen": int(counts["seen"]), "kept": manifest.num_rows,
                   "rejected": photo_level},
        "tiles": tile_table.num_rows,
        "counts": dict(sorted(counts.items())),
        "rejections": ledger.to_json(),
        "tile_rejections": dict(sorted(tile_rejections.items())),
        "splits": splits,
        "partitions": {"planned": len(plan.tasks), "written": len(part_stats), **run_info["partitions"],
                       "stale": stale},
        "failures": run_info["failures"],
        "satellite_file_rejections": run_info.get("satellite_files"),
        "filter": {"kind": cfg.filter.kind, "threshold": cfg.filter.threshold},
        "satellite": {"kind": cfg.satellite.kind, "tile_size": cfg.satellite.tile_size,
                      "gsd": cfg.satellite.gsd, "time_bin_months": cfg.satellite.bin_months},
        "timings": {k: round(v, 3) for k, v in sorted(timings.items())} | {"wall_s": run_info["wall_s"]},
    }
    atomic_write_json(out / "stats.json", stats)
    return stats


def config_yaml(cfg: BuildConfig) -> str:
    """The validated config as YAML, loadable again with :func:`load_build_config`.

    Secrets are never part of a config (sections name the environment
    variables that hold them). ``filter.decision`` is left out for kinds other
    than ``resnet18-places365``: it does not apply to them, and the filter
    config refuses an explicit ``top10_vote`` there.
    """
    data = yaml.safe_load(dump_config(cfg))
    if data["filter"].get("kind") != "resnet18-places365" and data["filter"].get("decision") == "top10_vote":
        del data["filter"]["decision"]
    return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------- the build


@dataclass
class BuildSummary:
    """What a build did; ``table()`` is the printed summary."""

    out_dir: Path
    stats: dict

    @property
    def failed(self) -> int:
        return len(self.stats["failures"])

    def table(self) -> str:
        s = self.stats
        p = s["partitions"]
        lines = [f"graft build: {self.out_dir}", ""]
        lines.append(f"  {'photos seen':<34}{s['photos']['seen']:>10}")
        lines.append(f"  {'photos kept':<34}{s['photos']['kept']:>10}")
        lines.append(f"  {'photos rejected':<34}{s['photos']['rejected']:>10}")
        for reason, n in sorted(s["rejections"]["counts"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason:<32}{n:>10}")
        lines.append(f"  {'tiles':<34}{s['tiles']:>10}")
        for reason, n in s["tile_rejections"].items():
            lines.append(f"    {'tiles rejected: ' + reason:<32}{n:>10}")
        for name, d in s["splits"].items():
            lines.append(f"  {name:<8}{d['blocks']:>8} blocks {d['tiles']:>10} tiles {d['photos']:>10} photos")
        lines.append(f"  partitions: {p['planned']} planned, {p['done']} built now, {p['skipped']} already done, "
                     f"{p['failed']} failed")
        for f in s["failures"][:5]:
            lines.append(f"    part-{f['partition']:05d}: {f['error']}")
        if self.failed:
            lines.append("  re-run the same command to retry the failed partitions")
        lines.append("")
        for name in ("manifest.parquet", "stats.json", "map.png", "photos_per_tile.png", "build_config.yaml"):
            lines.append(f"  {self.out_dir / name}")
        lines.append(f"  {self.out_dir / 'tiles'}/tiles-*.tar, {self.out_dir / 'photos'}/photos-*.tar")
        return "\n".join(lines)


def _check_existing(out: Path, cfg: BuildConfig, tasks: list[PartitionTask]) -> set[int]:
    """Partitions already built; refuses parts built with another config or split assignment."""
    done: set[int] = set()
    fp = cfg.fingerprint()
    for t in tasks:
        d = part_dir(out, t.partition)
        if not (d / "stats.json").is_file():
            continue
        st = json.loads((d / "stats.json").read_text())
        if st.get("config_fingerprint") != fp:
            raise ConfigError(
                f"{d} was built with a different config (fingerprint {st.get('config_fingerprint')}, now {fp}); "
                f"resuming would mix two datasets. Use a new out_dir, or delete {out / 'parts'} to rebuild."
            )
        if st.get("split") != t.split:
            raise ConfigError(
                f"{d} is in split {st.get('split')!r} but this run assigns {t.split!r}: the set of partitions "
                f"changed since it was built (different input photos?). Use a new out_dir."
            )
        done.add(t.partition)
    return done


def build_dataset(cfg: BuildConfig, distributor: str = "local", workers: int | None = None,
                  satellite: SatelliteSource | None = None) -> BuildSummary:
    """Build (or resume) the dataset described by ``cfg``.

    Args:
        cfg: the validated config.
        distributor: ``local`` (a thread pool over partitions) or ``ray`` (Ray tasks; a local
            Ray instance unless ``$RAY_ADDRESS`` names a cluster).
        workers: partitions in parallel (local; default 1) or tasks in flight (Ray; default 2x CPUs).
        satellite: a source object to use instead of the configured one (custom sources, tests).

    Returns:
        The summary; ``summary.stats`` is what ``stats.json`` holds.
    """
    if distributor not in ("local", "ray"):
        raise ConfigError(f"--distributor must be 'local' or 'ray', got {distributor!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("", "parts", "tiles", "photos"):
        clean_stale_temps(out / sub)

    # Fail on credentials, weights and the region before any photo is touched.
    _region(cfg)
    if cfg.ground.kind == "flickr":
        FlickrSource(cfg.ground.flickr, Rejections()).close()
    source = satellite if satellite is not None else _satellite(cfg.satellite)
    sat_ledger = getattr(source, "rejections", None)
    if satellite is None:
        session = getattr(source, "session", None)
        if session is not None and hasattr(session, "ensure_initialized"):
            session.ensure_initialized()
    if distributor == "local":
        _indoor_filter(cfg.filter)
    elif cfg.filter.kind.startswith("resnet18"):
        from graft.pipeline.indoor import resolve_weights

        resolve_weights(cfg.filter)

    if cfg.satellite.kind == "sentinel2" and not cfg.ground.require_date:
        log.warning("satellite.kind is sentinel2 but ground.require_date is false: tiles whose photos have no "
                    "date get the scene nearest sentinel2.default_date (or today), not the photos' season")
    plan = plan_build(cfg)
    done = _check_existing(out, cfg, plan.tasks)
    todo = [t for t in plan.tasks if t.partition not in done]
    log.info("%d partitions: %d already built, %d to build (%s)", len(plan.tasks), len(done), len(todo),
             distributor)
    failures: list[dict] = []
    built = 0
    runner = (_run_local(cfg, todo, workers or 1, satellite) if distributor == "local"
              else _run_ray(cfg, todo, workers, satellite))
    with tqdm(total=len(todo), desc=f"partitions ({distributor})", unit="part") as bar:
        for res in runner:
            if res["ok"]:
                built += 1
            else:
                failures.append({k: res[k] for k in ("partition", "error")})
                log.error("partition %05d failed: %s\n%s", res["partition"], res["error"], res["traceback"])
            bar.update(1)
    failures.sort(key=lambda f: f["partition"])
    run_info = {"partitions": {"done": built, "skipped": len(done), "failed": len(failures)},
                "failures": failures, "wall_s": round(time.perf_counter() - t0, 3),
                "satellite_files": sat_ledger.to_json() if isinstance(sat_ledger, Rejections) else None}
    stats = finalize(cfg, plan, run_info)
    return BuildSummary(out_dir=out, stats=stats)


def load_build_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> BuildConfig:
    """Load and validate a build YAML (with ``key.sub=value`` overrides)."""
    return load_config(BuildConfig, path, overrides)


def run_build_command(args: argparse.Namespace) -> int:
    """Entry point of ``graft build``."""
    cfg = load_build_config(args.config, args.overrides)
    summary = build_dataset(cfg, distributor=args.distributor or "local", workers=args.workers)
    print(summary.table())
    return 1 if summary.failed else 0

