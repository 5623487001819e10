"""The build's configuration: where ground photos come from, which satellite imagery, and the whole build."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from graft.config import StrictModel, dump_config, load_config
from graft.pipeline.indoor import IndoorFilterConfig
from graft.pipeline.region import RegionConfig
from graft.pipeline.split import SplitConfig
from graft.sources.earthengine import EarthEngineConfig, NaipConfig, Sentinel2Config
from graft.sources.flickr import FlickrConfig
from graft.sources.folder import FolderConfig
from graft.sources.geotiff import GeoTiffConfig


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
    ``cloudy_chip``, ``nodata``, an Earth Engine error that recurs for that request on every try:
    ``ee_missing_band``, ``ee_asset_not_found``, ``ee_memory_limit``, ``ee_request_too_large``...)
    drops its photos as ``tile_<reason>``. A
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


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache, not the hash
    if path.endswith(".safetensors"):
        # The tensors and metadata, not the file's bytes: safetensors writes its header's keys in no fixed
        # order, so retraining the same weights gives a different file (measured on the demo's filter).
        from safetensors import SafetensorError, safe_open

        h = hashlib.sha256()
        try:
            with safe_open(path, framework="numpy") as f:
                h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
                for name in sorted(f.keys()):
                    t = f.get_tensor(name)
                    h.update(f"{name}|{t.dtype}|{t.shape}".encode())
                    h.update(t.tobytes())
            return h.hexdigest()
        except SafetensorError:
            pass  # not a readable safetensors file: hash its bytes; loading the filter then says what is wrong
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    shard_max_tiles: int = Field(
        1000, ge=1, description="tiles per shard at most: a large block is written as several shards, so "
        "training can interleave shards of many blocks and spread them over ranks x loader workers")
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
        for key in ("device", "cache_dir", "max_reject_share", "check_sample", "check_clusters"):
            data["filter"].pop(key, None)  # the guard's limits decide whether a build runs, not what it holds
        weights = data["filter"].get("weights")
        if weights and Path(weights).is_file():
            # Filter weights retrained into the same file change which photos are kept: the path alone would let
            # a resumed build mix partitions filtered by the old and the new filter.
            data["filter"]["weights_sha256"] = _file_sha256(Path(weights).resolve())
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


def load_build_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> BuildConfig:
    """Load and validate a build YAML (with ``key.sub=value`` overrides)."""
    return load_config(BuildConfig, path, overrides)


def config_yaml(cfg: BuildConfig) -> str:
    """The validated config as YAML, loadable again with :func:`load_build_config`.

    Secrets are never part of a config (sections name the environment
    variables that hold them). ``filter.decision`` is left out for kinds other
    than ``resnet18-places365`` and ``filter.prompts`` for kinds other than
    ``clip``: they do not apply there, and the filter config refuses them
    when explicitly set (an explicit ``top10_vote``, any ``prompts``).
    """
    data = yaml.safe_load(dump_config(cfg))
    if data["filter"].get("kind") != "resnet18-places365" and data["filter"].get("decision") == "top10_vote":
        del data["filter"]["decision"]
    if data["filter"].get("kind") != "clip":
        data["filter"].pop("prompts", None)
    return yaml.safe_dump(data, sort_keys=False)
