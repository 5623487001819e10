"""A fake ``ee`` (earthengine-api) module: an in-memory catalogue that records every call.

It implements the slice of the ee client API that :mod:`graft.sources.earthengine`
uses (``Initialize``, ``ServiceAccountCredentials``, ``Geometry.Rectangle``,
``Filter.lt``, ``ImageCollection`` filtering/aggregation/map/mosaic, ``Image``
select/addBands/resample, ``List.getInfo``, ``data.computePixels``) and
evaluates it against images registered with :meth:`FakeEE.add_image`, so tests
can assert both *what was asked* (collection id, filters, date range, bounds,
bands, the computePixels grid) and *what the adapter did with the reply*.

Pixels are synthetic: each band of an image is a constant, a (H, W) array or a
function of the request's grid. A value of 0 means "masked", as in real
computePixels NPY replies, which is what mosaics composite over.

Faults: :meth:`FakeEE.fail` queues exceptions raised by the next calls of an
operation (``"getInfo"`` or ``"computePixels"``), to exercise retries.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.geometry import crs_to_lonlat

BandValue = int | float | np.ndarray | Callable[[dict], np.ndarray]


class FakeEEException(Exception):
    """Stands in for ``ee.EEException`` (the adapter catches ``ee.EEException``)."""


def ms(day: str | dt.date, hour: int = 10) -> int:
    """Milliseconds since the epoch (UTC) of ``day`` at ``hour``: a ``system:time_start``."""
    d = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return int(dt.datetime(d.year, d.month, d.day, hour, tzinfo=dt.timezone.utc).timestamp() * 1000)


@dataclass
class FakeImageRecord:
    """One catalogue image: ``collection/index``, its time, properties, footprint and bands."""

    collection: str
    index: str
    time_start: int
    properties: dict[str, Any] = field(default_factory=dict)
    footprint: tuple[float, float, float, float] | None = None  # (west, south, east, north) lon/lat; None = everywhere
    bands: dict[str, BandValue] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.collection}/{self.index}"


# --------------------------------------------------------------------------- geometry and filters


@dataclass
class FakeGeometry:
    coords: list[float]
    proj: str | None
    geodesic: bool | None

    def lonlat_bbox(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.coords
        xs, ys = np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1])
        lon, lat = crs_to_lonlat(xs, ys, self.proj) if self.proj else (xs, ys)
        return float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))


class _GeometryNamespace:
    @staticmethod
    def Rectangle(coords=None, proj=None, geodesic=None, **_: Any) -> FakeGeometry:  # noqa: N802 - ee's name
        return FakeGeometry(list(map(float, coords)), proj, geodesic)


@dataclass(frozen=True)
class FakeFilter:
    op: str
    prop: str
    value: Any

    def test(self, rec: FakeImageRecord) -> bool:
        v = rec.properties.get(self.prop)
        if v is None:
            return False
        return {"lt": v < self.value, "gt": v > self.value, "eq": v == self.value}[self.op]


class _FilterNamespace:
    @staticmethod
    def lt(prop: str, value: Any) -> FakeFilter:
        return FakeFilter("lt", prop, value)

    @staticmethod
    def gt(prop: str, value: Any) -> FakeFilter:
        return FakeFilter("gt", prop, value)

    @staticmethod
    def eq(prop: str, value: Any) -> FakeFilter:
        return FakeFilter("eq", prop, value)


# --------------------------------------------------------------------------- images and collections


class FakeImage:
    """A lazy image: an id to load, or layers (band -> record) to composite, plus recorded ops."""

    def __init__(self, fake: FakeEE, layers: list[dict[str, tuple[str, str]]] | None = None,
                 ops: tuple = (), label: str = "", sources: list[FakeImage] | None = None):
        # Each layer maps output band -> (image id, source band); a mosaic has several layers, last on top.
        self._fake = fake
        self.layers = layers or []
        self.ops = ops
        self.label = label
        self.sources = sources or []  # a mosaic's input images, in collection order

    @property
    def selected(self) -> list[str] | None:
        sel = [op for op in self.ops if op[0] == "select"]
        return list(sel[-1][1]) if sel else None

    @property
    def resampling(self) -> str | None:
        res = [op for op in self.ops if op[0] == "resample"]
        return res[-1][1] if res else None

    def select(self, bands: str | list[str]) -> FakeImage:
        bands = [bands] if isinstance(bands, str) else list(bands)
        # A band missing here fails at compute time, as in ee; so does a missing asset.
        layers = [{b: layer[b] for b in [*bands, "__missing__"] if b in layer} for layer in self.layers]
        return FakeImage(self._fake, layers, self.ops + (("select", tuple(bands)),), self.label, self.sources)

    def addBands(self, other: FakeImage) -> FakeImage:  # noqa: N802 - ee's name
        if len(self.layers) != 1 or len(other.layers) != 1:
            raise NotImplementedError("fake addBands supports single images only")
        merged = {**self.layers[0], **other.layers[0]}
        return FakeImage(self._fake, [merged], self.ops + (("addBands", other.label),), self.label)

    def resample(self, mode: str = "bilinear") -> FakeImage:
        return FakeImage(self._fake, self.layers, self.ops + (("resample", mode),), self.label, self.sources)

    @property
    def image_ids(self) -> list[str]:
        """Every catalogue id this image draws pixels from, bottom layer first."""
        out: list[str] = []
        for layer in self.layers:
            for img_id, _ in layer.values():
                if img_id not in out:
                    out.append(img_id)
        return out


def _image_of(fake: FakeEE, rec: FakeImageRecord) -> FakeImage:
    return FakeImage(fake, [{b: (rec.id, b) for b in rec.bands}], (), rec.id)


class FakeCollection:
    """An immutable chain of collection operations, evaluated against the catalogue on demand."""

    def __init__(self, fake: FakeEE, collection_id: str | None, ops: tuple = (),
                 images: list[FakeImage] | None = None):
        self._fake = fake
        self.collection_id = collection_id
        self.ops = ops
        self._images = images

    def _then(self, *op: Any) -> FakeCollection:
        return FakeCollection(self._fake, self.collection_id, self.ops + (op,), self._images)

    def filterBounds(self, geometry: FakeGeometry) -> FakeCollection:  # noqa: N802
        return self._then("filterBounds", geometry)

    def filterDate(self, start: str, end: str) -> FakeCollection:  # noqa: N802
        return self._then("filterDate", start, end)

    def filter(self, flt: FakeFilter) -> FakeCollection:
        return self._then("filter", flt)

    def map(self, fn: Callable[[FakeImage], FakeImage]) -> FakeCollection:
        return self._then("map", fn)

    def aggregate_array(self, prop: str) -> FakeAggregate:
        return FakeAggregate(self, prop)

    def mosaic(self) -> FakeImage:
        images = self.evaluate_images()
        layers = [layer for img in images for layer in img.layers]
        return FakeImage(self._fake, layers, (("mosaic", self.describe()),), "mosaic", images)

    # -- inspection helpers for tests
    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"collection": self.collection_id, "filters": [], "date_range": None, "bounds": None,
                             "mapped": False}
        for op in self.ops:
            if op[0] == "filterBounds":
                d["bounds"] = op[1]
            elif op[0] == "filterDate":
                d["date_range"] = (op[1], op[2])
            elif op[0] == "filter":
                d["filters"].append(op[1])
            elif op[0] == "map":
                d["mapped"] = True
        return d

    def records(self) -> list[FakeImageRecord]:
        if self._images is not None:
            raise NotImplementedError("records() of a collection built from images")
        recs = list(self._fake.catalog.get(self.collection_id, []))
        for op in self.ops:
            if op[0] == "filterBounds":
                w, s, e, n = op[1].lonlat_bbox()
                recs = [r for r in recs if r.footprint is None
                        or not (r.footprint[2] < w or r.footprint[0] > e or r.footprint[3] < s or r.footprint[1] > n)]
            elif op[0] == "filterDate":
                t0, t1 = ms(op[1], 0), ms(op[2], 0)
                recs = [r for r in recs if t0 <= r.time_start < t1]
            elif op[0] == "filter":
                recs = [r for r in recs if op[1].test(r)]
        return sorted(recs, key=lambda r: r.time_start)  # ee collections come back in time order

    def evaluate_images(self) -> list[FakeImage]:
        if self._images is not None:
            return list(self._images)
        images = [_image_of(self._fake, r) for r in self.records()]
        for op in self.ops:
            if op[0] == "map":
                images = [op[1](img) for img in images]
        return images


class FakeAggregate:
    """``collection.aggregate_array(prop)``: evaluated by ``getInfo`` or inside a ``FakeList``."""

    def __init__(self, collection: FakeCollection, prop: str):
        self.collection = collection
        self.prop = prop

    def evaluate(self) -> list:
        out = []
        for r in self.collection.records():
            if self.prop == "system:time_start":
                out.append(r.time_start)
            elif self.prop == "system:index":
                out.append(r.index)
            elif self.prop in r.properties:  # like ee, images without the property are skipped
                out.append(r.properties[self.prop])
        return out

    def getInfo(self) -> list:  # noqa: N802
        return self.collection._fake._get_info(self, self.evaluate)


class FakeList:
    def __init__(self, fake: FakeEE, items: list):
        self._fake = fake
        self.items = items

    def getInfo(self) -> list:  # noqa: N802
        return self._fake._get_info(self, lambda: [i.evaluate() if isinstance(i, FakeAggregate) else i
                                                   for i in self.items])


class FakeNumber:
    """``ee.Number(v)``: a trivial server value, as used by reachability checks."""

    def __init__(self, fake: FakeEE, value: float):
        self._fake = fake
        self.value = value

    def getInfo(self) -> float:  # noqa: N802
        return self._fake._get_info(self, lambda: self.value)


# --------------------------------------------------------------------------- the module object


class _DataNamespace:
    def __init__(self, fake: FakeEE):
        self._fake = fake

    def computePixels(self, request: dict) -> np.ndarray:  # noqa: N802
        return self._fake._compute_pixels(request)


@dataclass
class GetInfoCall:
    """One recorded getInfo: the query object and the collection chains it evaluated."""

    query: Any
    collections: list[dict[str, Any]]


class FakeEE:
    """The fake ``ee`` module. Construct, register images, pass as ``ee_module=``."""

    EEException = FakeEEException

    def __init__(self) -> None:
        self.catalog: dict[str, list[FakeImageRecord]] = {}
        self.calls: list[tuple[str, Any]] = []  # (operation, detail) in call order
        self.initialize_calls: list[dict[str, Any]] = []
        self.credentials_calls: list[tuple[Any, Any]] = []
        self.getinfo_calls: list[GetInfoCall] = []
        self.compute_requests: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = {"getInfo": 0, "computePixels": 0}
        self._failures: dict[str, deque[BaseException]] = {"getInfo": deque(), "computePixels": deque(),
                                                           "Initialize": deque()}
        self._lock = threading.Lock()
        self.Geometry = _GeometryNamespace()
        self.Filter = _FilterNamespace()
        self.data = _DataNamespace(self)

    # -- setup
    def add_image(self, collection: str, index: str, time_start: int, *,
                  properties: dict[str, Any] | None = None,
                  footprint: tuple[float, float, float, float] | None = None,
                  bands: dict[str, BandValue] | None = None,
                  dtypes: dict[str, str] | None = None) -> FakeImageRecord:
        """Register an image. Band dtypes default to uint16 (uint8 for SCL)."""
        bands = bands or {}
        dtypes = {b: "uint8" if b == "SCL" else "uint16" for b in bands} | (dtypes or {})
        rec = FakeImageRecord(collection, index, time_start, dict(properties or {}), footprint, bands, dtypes)
        self.catalog.setdefault(collection, []).append(rec)
        return rec

    def fail(self, op: str, exc: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` (getInfo, computePixels, Initialize) raise ``exc``."""
        with self._lock:
            self._failures[op].extend([exc] * times)

    def _maybe_fail(self, op: str) -> None:
        with self._lock:
            if op in self.attempts:
                self.attempts[op] += 1
            exc = self._failures[op].popleft() if self._failures[op] else None
        if exc is not None:
            raise exc

    def _record(self, op: str, detail: Any) -> None:
        with self._lock:
            self.calls.append((op, detail))

    # -- the ee API
    def Initialize(self, credentials: Any = "persistent", project: str | None = None,  # noqa: N802
                   opt_url: str | None = None, **kwargs: Any) -> None:
        call = {"credentials": credentials, "project": project, "opt_url": opt_url, **kwargs}
        self._record("Initialize", call)
        self._maybe_fail("Initialize")
        with self._lock:
            self.initialize_calls.append(call)

    def ServiceAccountCredentials(self, email: str | None = None, key_file: str | None = None) -> Any:  # noqa: N802
        self._record("ServiceAccountCredentials", (email, key_file))
        with self._lock:
            self.credentials_calls.append((email, key_file))
        return ("fake-credentials", email, key_file)

    def ImageCollection(self, arg: str | list[FakeImage]) -> FakeCollection:  # noqa: N802
        if isinstance(arg, str):
            self._record("ImageCollection", arg)
            return FakeCollection(self, arg)
        images = list(arg)
        self._record("ImageCollection.fromImages", [i.label for i in images])
        return FakeCollection(self, None, images=images)

    def Image(self, image_id: str) -> FakeImage:  # noqa: N802
        self._record("Image", image_id)
        coll, _, index = image_id.rpartition("/")
        for rec in self.catalog.get(coll, []):
            if rec.index == index:
                return _image_of(self, rec)
        # ee loads lazily: a missing asset fails at compute time.
        return FakeImage(self, [{"__missing__": (image_id, "")}], (), image_id)

    def List(self, items: list) -> FakeList:  # noqa: N802
        return FakeList(self, list(items))

    def Number(self, value: float) -> FakeNumber:  # noqa: N802
        return FakeNumber(self, value)

    # -- evaluation
    def _get_info(self, query: Any, evaluate: Callable[[], Any]) -> Any:
        self._maybe_fail("getInfo")
        items = query.items if isinstance(query, FakeList) else [query]
        colls = [i.collection.describe() for i in items if isinstance(i, FakeAggregate)]
        with self._lock:
            self.getinfo_calls.append(GetInfoCall(query, colls))
            self.calls.append(("getInfo", colls))
        return evaluate()

    def _record_by_id(self, image_id: str) -> FakeImageRecord:
        coll, _, index = image_id.rpartition("/")
        for rec in self.catalog.get(coll, []):
            if rec.index == index:
                return rec
        raise FakeEEException(f"Image.load: Image asset '{image_id}' not found (does not exist or caller does "
                              "not have access).")

    def _compute_pixels(self, request: dict) -> np.ndarray:
        self._record("computePixels", request)
        with self._lock:
            self.compute_requests.append(request)
        self._maybe_fail("computePixels")
        image: FakeImage = request["expression"]
        band_ids = list(request.get("bandIds") or image.selected or [])
        dims = request["grid"]["dimensions"]
        h, w = int(dims["height"]), int(dims["width"])
        for layer in image.layers:
            for img_id, _ in layer.values():
                self._record_by_id(img_id)  # raises for missing assets
        dtypes = []
        for b in band_ids:
            src = next(((i, sb) for layer in image.layers for ob, (i, sb) in layer.items() if ob == b), None)
            if src is None:
                raise FakeEEException(f"Image.select: Pattern '{b}' did not match any bands.")
            dtypes.append((b, self._record_by_id(src[0]).dtypes[src[1]]))
        out = np.zeros((h, w), dtype=dtypes)
        for layer in image.layers:  # mosaic: later layers on top where they hold data
            for b in band_ids:
                if b not in layer:
                    continue
                img_id, src_band = layer[b]
                value = self._record_by_id(img_id).bands[src_band]
                arr = value(request) if callable(value) else value
                arr = np.broadcast_to(np.asarray(arr), (h, w))
                out[b] = np.where(arr != 0, arr, out[b])
        return out
