"""What travels through a partition run: its task, its photos as named records, and its running state."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.pipeline.build.config import BuildConfig
from graft.pipeline.photos import PreparedPhoto
from graft.rejections import Rejections
from graft.sources.base import GroundPhoto, SatelliteSource
from graft.sources.retry import RateLimiter

# Rejection examples kept per partition (stats.json keeps up to 1000 overall).
PART_EXAMPLES = 50


@dataclass
class PartitionTask:
    """Everything one partition needs besides the config (picklable, for Ray)."""

    partition: int
    split: str
    photos: list[GroundPhoto] = field(default_factory=list)  # folder source: photos of this block
    query_points: list[tuple[float, float]] = field(default_factory=list)  # flickr: (lat, lon) per search
    # flickr: points of other blocks whose search circles reach into this one (searched again here,
    # so that every photo found inside the region has a partition that keeps or rejects it)
    neighbour_points: list[tuple[float, float]] = field(default_factory=list)
    # Splits of the planned blocks a tile of this partition could reach (the split guard's input).
    neighbour_splits: dict[int, str] = field(default_factory=dict)


@dataclass
class PhotoRecord:
    """One ground photo on its way through the partition's stages.

    Attributes:
        photo: what the ground source says about the photo.
        load: how to get its bytes, or None when they cannot be had (already in the ledger).
            Loading inside the preparation task keeps only the small prepared JPEGs in memory,
            never a partition's originals.
        prepared: the validated, shrunk photo (set by the prepare stage).
        outdoor_score: the indoor filter's score (set by the filter stage).
    """

    photo: GroundPhoto
    load: Callable[[], bytes | None]
    prepared: PreparedPhoto | None = None
    outdoor_score: float = 0.0

    @property
    def photo_id(self) -> str:
        return self.photo.photo_id


@dataclass
class PartitionRun:
    """A partition in progress: its config and task, and what its stages count, reject and time."""

    cfg: BuildConfig
    task: PartitionTask
    satellite: SatelliteSource
    pool: ThreadPoolExecutor
    progress: bool = False
    query_limiter: RateLimiter | None = None  # a quota shared with other processes (Ray), else the source's own
    ledger: Rejections = field(default_factory=lambda: Rejections(keep_examples=PART_EXAMPLES))
    counts: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    filter_score_hist: list[int] = field(default_factory=list)  # the filter stage's score histogram (plots.SCORE_BINS)

    @property
    def partition(self) -> int:
        return self.task.partition

    def tile_id(self, index: int) -> str:
        """The id of the partition's ``index``-th tile."""
        return f"t-{self.partition:05d}-{index:05d}"

    def rng(self, stage: int) -> np.random.Generator:
        """The random stream of one stage: seeded by the config seed and the partition, never by the run."""
        return np.random.default_rng(np.random.SeedSequence([self.cfg.seed, self.partition, stage]))

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Times a stage into ``timings[name]`` (seconds)."""
        return timed(self.timings, name)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Adds the seconds spent in the ``with`` block to ``timings[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 4)


def utc(t: dt.datetime | None) -> dt.datetime | None:
    """Naive capture times (EXIF without offset, Flickr) are labelled UTC as they are."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def plain(obj: Any) -> Any:
    """JSON-ready copy: dates as ISO strings, numpy scalars/arrays as Python numbers/lists."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@dataclass
class Plan:
    """The partitions of a build, and what the driver already dropped, counted and timed."""

    tasks: list[PartitionTask]
    ledger: Rejections
    counts: Counter
    timings: dict[str, float]
    # (min_lon, min_lat, max_lon, max_lat) of every located photo, inside the region or not, when the
    # plan sees them all (folder): an empty build compares it with the region's bbox.
    photo_extent: tuple[float, float, float, float] | None = None
