"""Records shared by every data source.

Ground sources yield :class:`GroundPhoto`; satellite sources return
:class:`SatelliteChip` or raise :class:`ChipRejected`. Anything dropped along
the way goes into a :class:`graft.rejections.Rejections` ledger with a reason,
which ends up in ``stats.json`` and the command's summary: bad input is
counted, never lost silently.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from graft.geometry import TileGrid
from graft.rejections import Rejected


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


class ChipRejected(Rejected):
    """The satellite source cannot deliver a usable chip here; ``reason`` is a short stable key."""


class SatelliteSource(Protocol):
    name: str

    def fetch(self, grid: TileGrid, date: dt.date | None) -> SatelliteChip:
        """Fetch the chip on ``grid`` nearest in time to ``date``; raise ChipRejected if none."""
        ...
