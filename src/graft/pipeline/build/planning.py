"""Planning (on the driver): the partitions of a build, their splits and their inputs."""

from __future__ import annotations

import math

from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.records import Plan
from graft.pipeline.region import Region


def plan_build(cfg: BuildConfig) -> Plan:
    """The partitions to run, with their splits and inputs (deterministic given the config and inputs)."""
    region = resources.region(cfg)
    plan = ground_kind(cfg).plan(cfg, region)
    _add_neighbour_splits(cfg, region, plan)
    return plan


def _add_neighbour_splits(cfg: BuildConfig, region: Region, plan: Plan) -> None:
    """Give each task the splits of the planned blocks its tiles could reach (for the split guard)."""
    split_of = {t.partition: t.split for t in plan.tasks}
    reach = math.ceil(cfg.satellite.tile_size * cfg.satellite.gsd / region.block_m) + 1
    for t in plan.tasks:
        iy, ix = divmod(t.partition, region.nx)
        t.neighbour_splits = {
            b: split_of[b]
            for y in range(max(iy - reach, 0), min(iy + reach, region.ny - 1) + 1)
            for x in range(max(ix - reach, 0), min(ix + reach, region.nx - 1) + 1)
            if (b := y * region.nx + x) != t.partition and b in split_of
        }
