"""Records shared by every data source, and the rejection ledger.

Ground sources yield :class:`GroundPhoto`; satellite sources return
:class:`SatelliteChip` or raise :class:`ChipRejected`. Anything dropped along
the way goes into a :class:`Rejections` ledger with a reason, which ends up in
``stats.json`` and the command's summary: bad input is counted, never lost
silently.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from graft.geometry import TileGrid


@dataclass
class GroundPhoto:
    """One geotagged ground-level photo.

    ``image`` holds the encoded bytes (JPEG/PNG) once fetched; ``uri`` says where
    they came from (a file path or URL). ``photo_id`` is unique within a source
    and contains no dots (WebDataset keys split on dots).
    """

    photo_id: str
    lat: float
    lon: float
    taken_at: dt.datetime | None
    source: str
    uri: str
    license: str = ""
    owner: str = ""
    accuracy: int | None = None
    image: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SatelliteChip:
    """A fetched satellite chip on a :class:`~graft.geometry.TileGrid`.

    ``array`` is (bands, size, size), uint8 or uint16. ``date`` is the
    acquisition date when known.
    """

    array: np.ndarray
    grid: TileGrid
    bands: list[str]
    date: dt.date | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class ChipRejected(Exception):
    """The satellite source cannot deliver a usable chip here; ``reason`` is a short stable key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SatelliteSource(Protocol):
    name: str

    def fetch(self, grid: TileGrid, date: dt.date | None) -> SatelliteChip:
        """Fetch the chip on ``grid`` nearest in time to ``date``; raise ChipRejected if none."""
        ...


class Rejections:
    """Thread-safe ledger of dropped items: counts per reason plus a bounded list of examples."""

    def __init__(self, keep_examples: int = 1000):
        self.counts: Counter[str] = Counter()
        self.examples: list[dict[str, str]] = []
        self._keep = keep_examples
        self._lock = threading.Lock()

    def add(self, reason: str, item: str = "", detail: str = "") -> None:
        with self._lock:
            self.counts[reason] += 1
            if len(self.examples) < self._keep:
                self.examples.append({"reason": reason, "item": item, "detail": detail[:300]})

    def merge(self, other: Rejections | dict) -> None:
        counts = other.counts if isinstance(other, Rejections) else other.get("counts", {})
        examples = other.examples if isinstance(other, Rejections) else other.get("examples", [])
        with self._lock:
            self.counts.update(counts)
            room = self._keep - len(self.examples)
            self.examples.extend(examples[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())), "examples": self.examples}
