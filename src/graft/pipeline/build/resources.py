"""Process-wide resources of a build: one of each model, source and thread pool per process, and memory tuning.

A process may run many partitions (on threads, or one Ray worker after another); what is expensive to
make is made once per process and config here, never once per partition.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from rasterio.env import set_gdal_config

from graft.pipeline.build.config import BuildConfig, SatelliteConfig
from graft.pipeline.indoor import IndoorFilter, IndoorFilterConfig
from graft.pipeline.region import Region
from graft.rejections import Rejections
from graft.sources.base import SatelliteSource
from graft.sources.earthengine import NaipSource, Sentinel2Source
from graft.sources.geotiff import GeoTiffSource

_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def cached(kind: str, key: str, make: Callable[[], Any]) -> Any:
    """One instance per process and config: models and sources are loaded once, not once per partition."""
    with _CACHE_LOCK:
        if (kind, key) not in _CACHE:
            _CACHE[(kind, key)] = make()
        return _CACHE[(kind, key)]


def io_pool(workers: int) -> ThreadPoolExecutor:
    """The process's I/O thread pool (fetches, downloads, decoding), shared by every partition it runs.

    Threads are reused, never made per partition: GDAL keeps per-thread state that is not freed when
    a thread exits (~0.6 MB a thread measured here), so a pool per partition made the build's memory
    grow with the number of partitions. Keyed by pid too: a forked child must not inherit the
    parent's pool, whose threads do not exist in it.
    """
    return cached("io_pool", f"{os.getpid()}:{workers}",
                  lambda: ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-io"))


def limit_gdal_cache(mb: int) -> None:
    """Cap GDAL's block cache for this process (GDAL applies a new cap at once, also to other threads).

    Set on every partition, not once: it is one cheap call, and a process that runs builds with
    different caps then always has the running build's.
    """
    set_gdal_config("GDAL_CACHEMAX", mb * 1024 * 1024)


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS once a partition is done (glibc; elsewhere a no-op).

    Each I/O thread allocates from its own glibc arena, and a partition's photos, chips and shards
    leave those arenas fragmented: without a trim the build's resident memory crept up by ~1 MB per
    partition (bench ``build_rss``), so with the region instead of with the largest partition.
    """
    trim = cached("malloc_trim", "", _find_malloc_trim)
    if trim is not None:
        trim(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (macOS, musl): nothing to trim with


def region(cfg: BuildConfig) -> Region:
    """The build's region with its block grid."""
    return cached("region", cfg.region.model_dump_json(), lambda: Region.from_config(cfg.region))


def indoor_filter(cfg: IndoorFilterConfig) -> IndoorFilter:
    """The indoor filter, shared by the partitions of this process."""
    return cached("filter", cfg.model_dump_json(), lambda: _LockedFilter(IndoorFilter(cfg)))


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


def satellite(cfg: SatelliteConfig) -> SatelliteSource:
    """The configured satellite source, shared by the partitions of this process."""
    return cached("satellite", cfg.model_dump_json(), lambda: make_satellite_source(cfg))

