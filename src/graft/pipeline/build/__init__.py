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

Before the partitions run, :mod:`~graft.pipeline.build.filter_guard` filters a sample of the build's
photos and stops the build, before any tile is fetched, when the indoor filter rejects more than
``filter.max_reject_share`` of it. A build that ends with no photo or no tile raises
:class:`~graft.pipeline.build.empty_build.EmptyBuildError` with the reasons and what to do.

Every random choice is seeded from the config seed and the partition id, so
a build killed at any point and resumed, a build with several local workers,
and a Ray build all produce the same manifest. Finalising (always re-run, it
is cheap) concatenates the parts into ``manifest.parquet`` and writes
``stats.json``, ``map.png``, ``photos_per_tile.png``, ``filter_scores.png`` and ``build_config.yaml``.

Where each part lives:

- :mod:`~graft.pipeline.build.config`: the config (:class:`BuildConfig`);
- :mod:`~graft.pipeline.build.resources`: what a process makes once (models, sources, the I/O pool,
  GDAL and heap tuning);
- :mod:`~graft.pipeline.build.grounds`: the registry of ground sources (``ground.kind``), one
  ``ground_<kind>`` module each, with its
  plan and its partition's photos;
- :mod:`~graft.pipeline.build.planning`: the partitions of a build;
- :mod:`~graft.pipeline.build.partition` (with :mod:`~graft.pipeline.build.fetch` and
  :mod:`~graft.pipeline.build.write`): one partition's stages, on :mod:`~graft.pipeline.build.records`;
- :mod:`~graft.pipeline.build.distributors`: local threads or Ray tasks over partitions;
- :mod:`~graft.pipeline.build.filter_guard`: the indoor filter's check on a sample, before any fetch;
- :mod:`~graft.pipeline.build.finalize`: the manifest, ``stats.json``, plots and the summary;
- :mod:`~graft.pipeline.build.empty_build`: why a build kept nothing, and what to do;
- :mod:`~graft.pipeline.build.driver`: :func:`build_dataset` and ``graft build``;
"""

from graft.dataset.layout import part_dir
from graft.dataset.manifest import MANIFEST_SCHEMA, TILES_SCHEMA
from graft.pipeline.build.config import (
    BuildConfig,
    GroundConfig,
    SatelliteConfig,
    config_yaml,
    load_build_config,
)
from graft.pipeline.build.driver import build_dataset, run_build_command
from graft.pipeline.build.empty_build import EmptyBuildError
from graft.pipeline.build.finalize import BuildSummary, finalize
from graft.pipeline.build.partition import run_partition
from graft.pipeline.build.planning import plan_build
from graft.pipeline.build.records import PartitionTask, Plan
from graft.pipeline.build.resources import make_satellite_source

__all__ = [
    "MANIFEST_SCHEMA", "TILES_SCHEMA", "BuildConfig", "BuildSummary", "EmptyBuildError", "GroundConfig", "PartitionTask", "Plan",
    "SatelliteConfig", "build_dataset", "config_yaml", "finalize", "load_build_config", "make_satellite_source",
    "part_dir", "plan_build", "run_build_command", "run_partition",
]
