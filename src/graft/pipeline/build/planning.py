"""Planning (on the driver): the partitions of a build, their splits and their inputs."""

from __future__ import annotations

from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.records import Plan


def plan_build(cfg: BuildConfig) -> Plan:
    """The partitions to run, with their splits and inputs (deterministic given the config and inputs)."""
    return ground_kind(cfg).plan(cfg, resources.region(cfg))
