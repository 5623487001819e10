"""What a ground source must provide to the build: a plan over partitions, and each partition's photos."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from contextlib import ExitStack
from typing import ClassVar

from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.records import PartitionRun, PhotoRecord, Plan
from graft.pipeline.region import Region


class GroundKind(ABC):
    """One kind of ground source (``ground.kind``), as the build drives it.

    The driver calls :meth:`preflight` and :meth:`plan` once; each partition calls :meth:`gather`;
    finalising asks :meth:`photos_seen`. Everything after gathering (reading, checking, filtering,
    covering, fetching, writing) is the same for every kind.
    """

    name: ClassVar[str]

    def preflight(self, cfg: BuildConfig) -> None:  # noqa: B027 - most kinds need no check
        """Fail on credentials and unreachable inputs before any photo is touched (default: nothing to check)."""

    @abstractmethod
    def plan(self, cfg: BuildConfig, region: Region) -> Plan:
        """The partitions to run with their inputs, deterministic given the config and the inputs."""

    @abstractmethod
    def gather(self, run: PartitionRun, stack: ExitStack) -> list[PhotoRecord]:
        """The partition's photos in photo-id order, each with its loader; ``run.counts['input']`` counts them.

        ``stack`` stays open until the partition's photos are loaded: a source that holds a session
        enters it there.
        """

    def queries_per_hour(self, cfg: BuildConfig) -> float | None:
        """The source's request quota, which a distributed build shares among its workers (default: none)."""
        return None

    def photos_seen(self, counts: Counter, kept: int, rejected: int) -> int:
        """How many photos the build saw, for ``stats.json`` (default: what the plan counted as ``seen``)."""
        return int(counts["seen"])
