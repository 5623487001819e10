"""The demo's synthetic world: a land-cover map seen from above, and geotagged photos of it seen from the ground.

``generate_world`` writes a small, fully known stand-in for the real inputs
graft consumes, so the whole job (build -> embed -> train -> evaluate) can run
on a laptop CPU in minutes:

* ``map.tif``: an RGB GeoTIFF mosaic in a real UTM CRS (the "satellite"), made
  of irregular, contiguous land-cover regions, each class with its own
  top-down texture;
* ``labels.tif`` + ``classes.txt``: the class of every map pixel;
* ``photos/``: ground-level JPEGs with EXIF GPS and DateTimeOriginal, each a
  rendering of the class at its spot seen from the ground (horizon, sky,
  scenery), placed with very uneven density, with indoor scenes mixed in and
  a few files whose EXIF is missing or broken (recorded, so the pipeline's
  rejection report can be checked);
* ``captions.csv``: text for the ground photos only (the demo's CLIP teacher
  learns language from these; it never sees the map);
* ``filter_train/{indoor,outdoor}/``: a separately drawn labelled set for
  fitting the indoor filter;
* ``world.json``: configuration, grid and the ground truth of every photo.

The one property the demo hinges on: **a class does not look the same from
above as from the ground.** The overhead palette is deliberately not the
ground palette (as in a false-colour composite): forest canopy is golden from
above like ripe fields from the ground, farmland parcels are grey like
streets, city roofs are sand-coloured like dunes, and desert is dark green
like woodland. Only water and snow look alike from both views. A CLIP model
that learned classes from ground photos alone is therefore a poor classifier
of overhead tiles when applied directly, and a satellite encoder must learn
the overhead appearance from co-located ground photos, which is GRAFT's point.

Generation is vectorised numpy, deterministic for a seed (two runs write
byte-identical files) and written atomically: the world folder appears
complete or not at all.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from scipy import ndimage
from tqdm.auto import tqdm

from graft.geometry import TileGrid
from graft.storage import atomic_dir

CLASSES: tuple[str, ...] = ("water", "forest", "farmland", "city", "desert", "snow")
"""Land-cover classes in index order; also the names used in prompts ("a photo of a {}.")."""

EXIF_FAULTS: tuple[str, ...] = ("no_gps", "gps_no_ref", "lat_out_of_range", "no_date")
"""Ways a photo's EXIF is broken on purpose (stable keys recorded in ``world.json``):

* ``no_gps``: no GPS IFD at all;
* ``gps_no_ref``: GPSLatitude/GPSLongitude present but no hemisphere refs;
* ``lat_out_of_range``: GPSLatitude above 90 degrees;
* ``no_date``: no DateTimeOriginal.
"""

OUTSIDE = -1
"""What :meth:`World.label_at` returns for a point outside the map."""

WORLD_VERSION = 1

# EXIF tag numbers (EXIF 2.32 / TIFF 6.0).
_TAG_MAKE, _TAG_MODEL = 0x010F, 0x0110
_TAG_EXIF_IFD, _TAG_GPS_IFD = 0x8769, 0x8825
_TAG_DATETIME_ORIGINAL = 0x9003
_GPS_VERSION, _GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a synthetic world; the same config and seed give the same bytes.

    Attributes:
        seed: master seed; every random stream is derived from it.
        size_px: the map is ``size_px`` x ``size_px`` pixels.
        gsd: ground sample distance of the map, metres per pixel.
        crs: projected CRS of the map (a UTM zone).
        origin_x: map's left edge, metres east in ``crs``.
        origin_y: map's top edge, metres north in ``crs``.
        region_px: mean side of a land-cover region seed cell, pixels.
        n_photos: ground photos to place and render.
        n_hotspots: dense clusters (a landmark everyone photographs).
        hotspot_photos: photos per dense cluster.
        hotspot_sigma_m: spread of a dense cluster (most photos within ~2 sigma).
        n_towns: broad clusters of photos, each centred in one class, in turn.
        town_frac: share of the non-hotspot photos that fall in towns (the rest are uniform).
        town_sigma_m: (min, max) spread of a town, metres.
        edge_margin_px: photos stay this far from the map edge, so tiles around them fit.
        indoor_frac: share of photos that are indoor scenes (placed like outdoor ones).
        bad_exif_frac: share of photos whose EXIF is broken in one of :data:`EXIF_FAULTS`.
        years: (first, last) year of the photo dates, inclusive.
        photo_px: side of the square ground photos, pixels.
        jpeg_quality: JPEG quality of the photos.
        filter_train_per_class: images in each of ``filter_train/indoor`` and ``filter_train/outdoor``.
        lookalike: ``(a, b)`` makes the multispectral variant: class ``b`` is rendered from above
            with class ``a``'s texture and palette, so the two look alike in RGB, and ``map.tif``
            gains a near-infrared band (R, G, B, N) in which they differ (:data:`NIR_LEVEL`). Their
            ground photos stay as different as ever. None: the RGB world.
    """

    seed: int = 0
    size_px: int = 2048
    gsd: float = 10.0
    crs: str = "EPSG:32633"
    # UTM 33N, ~30.0 N 13.5 E (Fezzan, Libya): a real place in the zone, so lat/lon look plausible.
    origin_x: float = 360000.0
    origin_y: float = 3320000.0
    region_px: int = 256
    n_photos: int = 4000
    n_hotspots: int = 3
    hotspot_photos: int = 200
    hotspot_sigma_m: float = 25.0
    n_towns: int = 12
    town_frac: float = 0.5
    town_sigma_m: tuple[float, float] = (300.0, 1500.0)
    edge_margin_px: int = 48
    indoor_frac: float = 0.12
    bad_exif_frac: float = 0.04
    years: tuple[int, int] = (2017, 2023)
    photo_px: int = 64
    jpeg_quality: int = 90
    filter_train_per_class: int = 150
    lookalike: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> None:
            raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r}: expected {want}")

        if self.size_px < 256:
            bad("size_px", "at least 256 pixels")
        if self.gsd <= 0:
            bad("gsd", "a positive number of metres per pixel")
        if not 32 <= self.region_px <= self.size_px:
            bad("region_px", f"between 32 and size_px={self.size_px}")
        if self.n_photos < len(CLASSES) * 10:
            bad("n_photos", f"at least {len(CLASSES) * 10} (some photos of every class)")
        if self.n_hotspots * self.hotspot_photos > self.n_photos // 2:
            bad("hotspot_photos", f"n_hotspots * hotspot_photos <= n_photos / 2 = {self.n_photos // 2}")
        if not 0.0 <= self.town_frac <= 1.0:
            bad("town_frac", "a fraction in [0, 1]")
        if len(self.town_sigma_m) != 2 or not 0 < self.town_sigma_m[0] <= self.town_sigma_m[1]:
            bad("town_sigma_m", "(min, max) metres with 0 < min <= max")
        if not 0 <= self.edge_margin_px < self.size_px // 4:
            bad("edge_margin_px", f"in [0, size_px/4 = {self.size_px // 4})")
        if not 0.0 <= self.indoor_frac < 0.5:
            bad("indoor_frac", "a fraction in [0, 0.5)")
        if not 0.0 <= self.bad_exif_frac < 0.5:
            bad("bad_exif_frac", "a fraction in [0, 0.5)")
        if len(self.years) != 2 or not 1990 <= self.years[0] <= self.years[1] <= 2100:
            bad("years", "(first, last) with 1990 <= first <= last <= 2100")
        if not 32 <= self.photo_px <= 512:
            bad("photo_px", "between 32 and 512")
        if not 1 <= self.jpeg_quality <= 100:
            bad("jpeg_quality", "between 1 and 100")
        if self.filter_train_per_class < 1:
            bad("filter_train_per_class", "at least 1")
        if self.lookalike is not None and (len(self.lookalike) != 2 or len(set(self.lookalike)) != 2
                                           or any(c not in CLASSES for c in self.lookalike)):
            bad("lookalike", f"two different classes of {CLASSES}")

    @classmethod
    def quick(cls, seed: int = 0) -> WorldConfig:
        """A small world for tests: generates in a couple of seconds, same structure as the full one."""
        return cls(seed=seed, size_px=1024, region_px=192, n_photos=900, n_hotspots=2, hotspot_photos=60,
                   n_towns=6, filter_train_per_class=40)

    @property
    def grid(self) -> TileGrid:
        return TileGrid(crs=self.crs, transform=Affine(self.gsd, 0.0, self.origin_x, 0.0, -self.gsd, self.origin_y),
                        size=self.size_px)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"world config has unknown keys {unknown}; expected a subset of {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


@dataclass(frozen=True)
class PhotoTruth:
    """Ground truth of one ground photo.

    Attributes:
        photo_id: file stem, unique, no dots.
        path: path of the JPEG relative to the world folder.
        lat, lon: true WGS84 position (also when the EXIF hides or breaks it).
        row, col: fractional pixel position on the map grid.
        class_index, class_name: land cover at the photo's spot.
        indoor: the photo shows a room, not the land cover.
        exif_fault: one of :data:`EXIF_FAULTS`, or None when the EXIF is good.
        taken_at: DateTimeOriginal as written to the EXIF (ISO 8601), None if not written.
        caption: the photo's caption (also in ``captions.csv``).
        hotspot: index of the dense cluster the photo belongs to, or None.
    """

    photo_id: str
    path: str
    lat: float
    lon: float
    row: float
    col: float
    class_index: int
    class_name: str
    indoor: bool
    exif_fault: str | None
    taken_at: str | None
    caption: str
    hotspot: int | None


@dataclass
class World:
    """A generated world on disk: paths, grid, classes and per-photo ground truth."""

    root: Path
    config: WorldConfig
    grid: TileGrid
    classes: tuple[str, ...]
    photos: list[PhotoTruth]
    hotspots: list[dict[str, Any]] = field(default_factory=list)

    @property
    def map_path(self) -> Path:
        return self.root / "map.tif"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.tif"

    @property
    def classes_path(self) -> Path:
        return self.root / "classes.txt"

    @property
    def photos_dir(self) -> Path:
        return self.root / "photos"

    @property
    def captions_path(self) -> Path:
        return self.root / "captions.csv"

    @property
    def filter_train_dir(self) -> Path:
        return self.root / "filter_train"

    @property
    def meta_path(self) -> Path:
        return self.root / "world.json"

    @cached_property
    def labels(self) -> np.ndarray:
        """(H, W) uint8 class index of every map pixel."""
        with rasterio.open(self.labels_path) as src:
            return src.read(1)

    @cached_property
    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 overhead mosaic."""
        with rasterio.open(self.map_path) as src:
            return np.ascontiguousarray(src.read([1, 2, 3]).transpose(1, 2, 0))

    @cached_property
    def nir(self) -> np.ndarray:
        """(H, W) uint8 near-infrared band of the multispectral variant (``config.lookalike``)."""
        if self.config.lookalike is None:
            raise ValueError(f"{self.root} is the RGB world: it has no near-infrared band (set lookalike)")
        with rasterio.open(self.map_path) as src:
            return src.read(4)

    def label_at(self, lat, lon):
        """Class index at WGS84 points (scalars or arrays); :data:`OUTSIDE` (-1) off the map."""
        row, col = self.grid.pixel_of(lat, lon)
        row, col = np.floor(np.asarray(row)).astype(np.int64), np.floor(np.asarray(col)).astype(np.int64)
        inside = (row >= 0) & (row < self.grid.size) & (col >= 0) & (col < self.grid.size)
        out = np.full(row.shape, OUTSIDE, dtype=np.int64)
        out[inside] = self.labels[row[inside], col[inside]]
        return int(out) if out.ndim == 0 else out

    def good_photos(self) -> list[PhotoTruth]:
        """Photos whose EXIF is intact (the ones a folder source should accept)."""
        return [p for p in self.photos if p.exif_fault is None]


@dataclass(frozen=True)
class TileSample:
    """Centre of an evaluation tile and the class that fills it."""

    row: int
    col: int
    class_index: int
    purity: float


# ----------------------------------------------------------------------------------------------------------------
# Public helpers


def cut_tile(world: World, center_row: int, center_col: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``size`` x ``size`` window of the map and its labels around a pixel.

    The window's top-left pixel is ``(center_row - size // 2, center_col - size // 2)``.

    Returns:
        ``(rgb, mask)``: (size, size, 3) uint8 and (size, size) uint8 class indices (copies).

    Raises:
        ValueError: if the window does not lie entirely inside the map.
    """
    r0, c0 = int(center_row) - size // 2, int(center_col) - size // 2
    n = world.grid.size
    if size < 1 or r0 < 0 or c0 < 0 or r0 + size > n or c0 + size > n:
        raise ValueError(
            f"tile of size {size} centred at (row={center_row}, col={center_col}) does not fit in the "
            f"{n}x{n} map; centres must be at least {size // 2} px from every edge"
        )
    return world.rgb[r0:r0 + size, c0:c0 + size].copy(), world.labels[r0:r0 + size, c0:c0 + size].copy()


def sample_single_class_tiles(world: World, size: int, per_class: int, seed: int = 0, min_purity: float = 1.0,
                              allowed: np.ndarray | None = None) -> list[TileSample]:
    """Pick tile centres whose ``size`` x ``size`` window is (almost) one class, ``per_class`` of each class.

    Centres lie on a lattice with stride ``size // 2``, so two picked tiles overlap by at most half.

    Args:
        world: the world.
        size: tile side in pixels.
        per_class: tiles wanted per class; fewer are returned for a class with fewer pure windows.
        seed: which windows to pick among the eligible ones.
        min_purity: minimum share of the window covered by its majority class.
        allowed: optional (H, W) bool map; only centres where it is True are eligible (e.g. test blocks).

    Raises:
        ValueError: if some class has no eligible window at all.
    """
    labels = world.labels
    n = labels.shape[0]
    if allowed is not None and allowed.shape != labels.shape:
        raise ValueError(f"allowed has shape {allowed.shape}; expected the map's {labels.shape}")
    half, stride = size // 2, max(size // 2, 1)
    centres = np.arange(half, n - size + half + 1, stride)
    if centres.size == 0:
        raise ValueError(f"tile size {size} does not fit in the {n}x{n} map")
    rr, cc = np.meshgrid(centres, centres, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    if allowed is not None:
        keep = allowed[rr, cc]
        rr, cc = rr[keep], cc[keep]
    rng = np.random.default_rng(seed)
    out: list[TileSample] = []
    for k, name in enumerate(world.classes):
        # A summed-area table gives every window's class count in O(1).
        sat = np.pad((labels == k).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        r0, c0 = rr - half, cc - half
        count = sat[r0 + size, c0 + size] - sat[r0, c0 + size] - sat[r0 + size, c0] + sat[r0, c0]
        purity = count / float(size * size)
        ok = np.flatnonzero(purity >= min_purity)
        if ok.size == 0:
            raise ValueError(f"class {name!r} has no {size}x{size} window with purity >= {min_purity}; "
                             "lower min_purity or the tile size")
        pick = np.sort(rng.choice(ok, size=min(per_class, ok.size), replace=False))
        out += [TileSample(int(rr[i]), int(cc[i]), k, float(purity[i])) for i in pick]
    return out


def load_world(out_dir: str | Path) -> World:
    """Open a world written by :func:`generate_world`.

    Raises:
        FileNotFoundError: naming the first missing file; regenerate with ``generate_world``.
        ValueError: if ``world.json`` is from another version of the generator.
    """
    root = Path(out_dir)
    meta_path = root / "world.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {root} is not a generated world; "
                                "create one with graft.demo.world.generate_world (or `graft demo`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != WORLD_VERSION:
        raise ValueError(f"{meta_path} has version {meta.get('version')}, this graft reads version "
                         f"{WORLD_VERSION}; regenerate the world")
    for rel in ("map.tif", "labels.tif", "classes.txt", "captions.csv"):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{root / rel} is missing from the world; regenerate it")
    photos = [PhotoTruth(**p) for p in meta["photos"]]
    return World(root=root, config=WorldConfig.from_json(meta["config"]), grid=TileGrid.from_json(meta["grid"]),
                 classes=tuple(meta["classes"]), photos=photos, hotspots=meta["hotspots"])


def generate_world(out_dir: str | Path, cfg: WorldConfig | None = None) -> World:
    """Generate a synthetic world into ``out_dir`` (replacing it atomically) and return it.

    Args:
        out_dir: folder to write; an existing folder there is replaced once the new one is complete.
        cfg: the world's configuration (default: the full demo world).
    """
    cfg = cfg or WorldConfig()
    root = Path(out_dir)
    # Independent streams, so e.g. changing n_photos does not change the map.
    map_ss, place_ss, render_ss, filter_ss = np.random.SeedSequence(cfg.seed).spawn(4)
    map_rng, place_rng, filter_rng = (np.random.default_rng(s) for s in (map_ss, place_ss, filter_ss))
    render_seed = int(render_ss.generate_state(1)[0])
    grid = cfg.grid
    n = cfg.size_px

    labels, cell_id, n_cells = _land_cover(map_rng, n, cfg.region_px)
    rgb, nir = _render_overhead(map_rng, labels, cell_id, n_cells, cfg.lookalike)
    placements = _place_photos(place_rng, cfg, labels)

    with atomic_dir(root) as tmp:
        bands = rgb.transpose(2, 0, 1) if nir is None else np.concatenate([rgb.transpose(2, 0, 1), nir[None]])
        _write_geotiff(tmp / "map.tif", bands, grid)
        _write_geotiff(tmp / "labels.tif", labels[None], grid)
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
        photos = _write_photos(tmp, cfg, grid, labels, placements, render_seed)
        with open(tmp / "captions.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["path", "caption"])
            w.writerows([p.path, p.caption] for p in photos)
        filter_counts = _write_filter_train(tmp / "filter_train", cfg, filter_rng)
        hotspots = [{"index": i, "lat": float(la), "lon": float(lo), "class_name": CLASSES[labels[int(r), int(c)]],
                     "photos": sum(p.hotspot == i for p in photos)}
                    for i, (r, c, la, lo) in enumerate(placements["hotspot_centres"])]
        meta = {
            "version": WORLD_VERSION,
            "config": cfg.to_json(),
            "grid": grid.to_json(),
            "crs": grid.crs,
            "transform": list(grid.transform)[:6],
            "gsd": cfg.gsd,
            "classes": list(CLASSES),
            "bounds_lonlat": _bounds_lonlat(grid),
            "counts": _counts(photos, labels, filter_counts),
            "hotspots": hotspots,
            "files": {"map": "map.tif", "labels": "labels.tif", "classes": "classes.txt", "photos": "photos",
                      "captions": "captions.csv", "filter_train": "filter_train"},
            "photos": [asdict(p) for p in photos],
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    world = World(root=root, config=cfg, grid=grid, classes=CLASSES, photos=photos, hotspots=hotspots)
    world.__dict__["labels"] = labels  # already in memory: spare the first label_at a read
    world.__dict__["rgb"] = rgb
    return world


# ----------------------------------------------------------------------------------------------------------------
# Land cover and the overhead mosaic


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth random field with features ~``scale_px`` across, zero mean and unit std (float32)."""
    gh, gw = (int(math.ceil(s / scale_px)) + 4 for s in shape)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    fine = ndimage.zoom(coarse, scale_px, order=3, mode="nearest", grid_mode=False)
    off = int(scale_px)  # skip the first coarse cell, where the spline sees the border
    out = fine[off:off + shape[0], off:off + shape[1]]
    if out.shape != tuple(shape):  # zoom rounds the output size; pad by edge values in the rare short case
        out = np.pad(out, [(0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])], mode="edge")
    out = out - out.mean()
    return (out / (out.std() + 1e-6)).astype(np.float32)


def _land_cover(rng: np.random.Generator, n: int, region_px: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Warped Voronoi regions, classes spread evenly over the cells.

    Returns (labels (n, n) uint8, cell id (n, n) int32, number of cells).
    """
    g = max(int(round(n / region_px)), 3)
    pitch = n / g
    jy, jx = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    seeds_y = ((jy + rng.uniform(0.15, 0.85, jy.shape)) * pitch).ravel()
    seeds_x = ((jx + rng.uniform(0.15, 0.85, jx.shape)) * pitch).ravel()
    n_cells = seeds_y.size
    # Equal numbers of cells per class, shuffled; neighbours of the same class merge into larger regions.
    cell_class = rng.permutation(np.resize(np.arange(len(CLASSES)), n_cells)).astype(np.uint8)

    # Solve at half resolution (region borders at 20 m steps are invisible in 64 px tiles) and upsample.
    h = (n + 1) // 2
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) * 2 + 0.5, np.arange(h, dtype=np.float32) * 2 + 0.5,
                         indexing="ij")
    # Domain warp at two scales makes borders wander like coastlines instead of straight Voronoi edges.
    wy = _smooth_noise(rng, (h, h), h / 5) * pitch * 0.35 + _smooth_noise(rng, (h, h), h / 24) * pitch * 0.08
    wx = _smooth_noise(rng, (h, h), h / 5) * pitch * 0.35 + _smooth_noise(rng, (h, h), h / 24) * pitch * 0.08
    py, px = yy + wy, xx + wx
    best = np.full((h, h), np.inf, dtype=np.float32)
    cell = np.zeros((h, h), dtype=np.int32)
    for i in range(n_cells):
        d = (py - np.float32(seeds_y[i])) ** 2 + (px - np.float32(seeds_x[i])) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        cell[closer] = i
    cell = np.repeat(np.repeat(cell, 2, axis=0), 2, axis=1)[:n, :n]
    return cell_class[cell], cell, n_cells


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integer keys (a splitmix64-style mix)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, k in enumerate(keys):
            h ^= np.asarray(k).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (i + 1) % 2**64)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class _Pixels:
    """The pixels of one class: coordinates and the shared random fields sampled there."""

    y: np.ndarray
    x: np.ndarray
    cell: np.ndarray
    low: np.ndarray
    mid: np.ndarray
    fine: np.ndarray
    grain: np.ndarray
    tint: np.ndarray  # (n, 3) per-region colour jitter, unit scale
    angle: np.ndarray  # per-region orientation, radians
    scale: np.ndarray  # per-region size multiplier

    def rotated(self) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.x * c + self.y * s, -self.x * s + self.y * c


def _rgb(*c: float) -> np.ndarray:
    return np.asarray(c, dtype=np.float32)


# Overhead palettes. Each non-trivial class borrows its colour from another class's *ground* palette (see
# _GROUND below): forest <- farmland, farmland <- city, city <- desert, desert <- forest. Water and snow keep
# their own colour from both views, so a ground-only model is right on those two and wrong on the rest.
def _top_water(p: _Pixels) -> np.ndarray:
    u, _ = p.rotated()
    ripple = np.sin(2 * np.pi * (u / (6.0 * p.scale) + 0.6 * p.mid))
    col = _rgb(28, 68, 140) + p.tint * 8 + (p.low * 8 + ripple * 9)[:, None]
    sparkle = (ripple > 0.92) & (p.grain > 1.2)
    col[sparkle] += 35
    return col


def _top_forest(p: _Pixels) -> np.ndarray:
    crowns = p.fine + 0.35 * p.grain  # blobs ~5 px across: individual crowns at 10 m
    canopy = _rgb(208, 172, 70) + p.tint * 12 + (crowns * 14 + p.low * 8)[:, None]
    gap = _rgb(112, 84, 38) + p.tint * 8
    return np.where((crowns > -0.55)[:, None], canopy, gap)


def _top_farmland(p: _Pixels) -> np.ndarray:
    u, v = p.rotated()
    pw, ph = 46.0 * p.scale, 30.0 * p.scale
    i, j = np.floor(u / pw), np.floor(v / ph)
    tone, direction, variant = _hash01(i, j, p.cell, 1), _hash01(i, j, p.cell, 2), _hash01(i, j, p.cell, 3)
    s = np.where(direction < 0.5, u, v)
    stripes = np.sin(2 * np.pi * s / 6.0)
    base = np.where((variant < 0.3)[:, None], _rgb(150, 146, 138), _rgb(128, 130, 136))  # warm / cool grey
    col = base * (0.78 + 0.4 * tone)[:, None].astype(np.float32) + p.tint * 7 + (stripes * 12)[:, None]
    edge = np.minimum.reduce([u - i * pw, (i + 1) * pw - u, v - j * ph, (j + 1) * ph - v]) < 1.2
    col[edge] = _rgb(84, 86, 82)  # hedgerows and tracks between parcels
    return col


def _top_city(p: _Pixels) -> np.ndarray:
    u, v = p.rotated()
    bs, street = 22.0 * p.scale, 3.0
    mu, mv = np.mod(u, bs), np.mod(v, bs)
    bi, bj = np.floor(u / bs), np.floor(v / bs)
    nsub = 2 + (_hash01(bi, bj, p.cell, 7) < 0.5)  # 2 or 3 buildings along u per block
    subw = (bs - street) / nsub
    k = np.floor((mu - street) / subw)
    tone = _hash01(bi, bj, k, p.cell, 8)
    roof = (_rgb(222, 178, 118) * (1 - tone)[:, None] + _rgb(204, 138, 88) * tone[:, None]).astype(np.float32)
    roof += p.tint * 8 + (p.grain * 4)[:, None]
    shadow = (np.mod(mu - street, subw) > subw - 1.6) | (mv > bs - 1.6)
    roof[shadow] *= 0.72
    on_street = (mu < street) | (mv < street)
    return np.where(on_street[:, None], _rgb(104, 92, 80) + (p.grain * 3)[:, None], roof)


def _top_desert(p: _Pixels) -> np.ndarray:
    u, _ = p.rotated()
    phase = u / (24.0 * p.scale) + 0.9 * p.mid + 0.3 * p.low
    f = phase - np.floor(phase)
    shade = np.where(f < 0.72, f / 0.72, (1.0 - f) / 0.28)  # long windward slope, short steep lee
    return _rgb(44, 96, 46) * (0.7 + 0.55 * shade)[:, None].astype(np.float32) + p.tint * 7 + (p.grain * 3)[:, None]


def _top_snow(p: _Pixels) -> np.ndarray:
    shade = 0.6 * p.mid + 0.4 * p.low
    col = _rgb(234, 238, 246) + (shade * 9 + p.grain * 2)[:, None] + p.tint * 4
    shadow = np.clip(-(shade + 0.6), 0, 1)[:, None]
    col = col * (1 - shadow) + _rgb(188, 198, 224) * shadow
    rock = (p.fine > 2.1)[:, None]
    return np.where(rock, _rgb(96, 94, 98), col)


_OVERHEAD = {"water": _top_water, "forest": _top_forest, "farmland": _top_farmland, "city": _top_city,
             "desert": _top_desert, "snow": _top_snow}


# Near-infrared level of each class in the multispectral variant (uint8): healthy canopy reflects NIR
# strongly, water absorbs it, dry bare parcels and pavement sit in between, snow and sand are bright.
NIR_LEVEL = {"water": 14, "forest": 196, "farmland": 72, "city": 96, "desert": 150, "snow": 170}


def _render_overhead(rng: np.random.Generator, labels: np.ndarray, cell_id: np.ndarray, n_cells: int,
                     lookalike: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB mosaic, and with ``lookalike`` the (H, W) uint8 near-infrared band (else None)."""
    shape = labels.shape
    low, mid, fine = (_smooth_noise(rng, shape, s) for s in (180.0, 24.0, 2.5))
    grain = rng.standard_normal(shape, dtype=np.float32)
    tint = rng.standard_normal((n_cells, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi, n_cells).astype(np.float32)
    scale = rng.uniform(0.8, 1.25, n_cells).astype(np.float32)
    out = np.empty(shape + (3,), dtype=np.uint8)
    look = dict([lookalike[::-1]]) if lookalike else {}  # class -> class whose overhead look it takes
    for k, name in enumerate(CLASSES):
        ys, xs = np.nonzero(labels == k)
        if ys.size == 0:
            continue
        c = cell_id[ys, xs]
        px = _Pixels(y=ys.astype(np.float32), x=xs.astype(np.float32), cell=c, low=low[ys, xs], mid=mid[ys, xs],
                     fine=fine[ys, xs], grain=grain[ys, xs], tint=tint[c], angle=angle[c], scale=scale[c])
        out[ys, xs] = np.clip(_OVERHEAD[look.get(name, name)](px), 0, 255).round().astype(np.uint8)
    if lookalike is None:
        return out, None
    # The NIR texture reuses the fields already drawn, so the RGB stream (and every other class's pixels) is
    # the RGB world's.
    level = np.asarray([NIR_LEVEL[c] for c in CLASSES], dtype=np.float32)[labels]
    nir = level + 10.0 * mid + 6.0 * low + 3.0 * grain
    return out, np.clip(nir, 0, 255).round().astype(np.uint8)


def _write_geotiff(path: Path, array: np.ndarray, grid: TileGrid) -> None:
    bands, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype=array.dtype.name,
                       crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate", photometric="RGB" if bands == 3 else "MINISBLACK") as dst:
        dst.write(array)


def _bounds_lonlat(grid: TileGrid) -> list[float]:
    lat, lon = grid.latlon_of(np.array([0, 0, grid.size, grid.size]), np.array([0, grid.size, 0, grid.size]))
    return [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]


# ----------------------------------------------------------------------------------------------------------------
# Where the photos are


def _pick_pixel_of_class(rng: np.random.Generator, labels: np.ndarray, k: int, margin: int) -> tuple[float, float]:
    inner = labels[margin:labels.shape[0] - margin, margin:labels.shape[1] - margin]
    ys, xs = np.nonzero(inner[::8, ::8] == k)  # a coarse lattice is plenty to choose a centre from
    if ys.size == 0:  # class k only touches the margin of a small map: centre the cluster anywhere
        ys, xs = np.nonzero(inner[::8, ::8] >= 0)
    i = rng.integers(ys.size)
    return float(ys[i] * 8 + margin), float(xs[i] * 8 + margin)


def _place_photos(rng: np.random.Generator, cfg: WorldConfig, labels: np.ndarray) -> dict[str, Any]:
    """Photo positions (row, col), cluster membership, indoor flags, EXIF faults and dates."""
    n, m, gsd = cfg.size_px, cfg.edge_margin_px, cfg.gsd
    rows, cols, hot = [], [], []
    centres = []
    for h in range(cfg.n_hotspots):
        r, c = _pick_pixel_of_class(rng, labels, int(rng.integers(len(CLASSES))), m + 16)
        centres.append((r, c))
        s = cfg.hotspot_sigma_m / gsd
        rows.append(r + rng.normal(0, s, cfg.hotspot_photos))
        cols.append(c + rng.normal(0, s, cfg.hotspot_photos))
        hot += [h] * cfg.hotspot_photos
    rest = cfg.n_photos - cfg.n_hotspots * cfg.hotspot_photos
    n_town = int(round(rest * cfg.town_frac)) if cfg.n_towns else 0
    if n_town:
        # Uneven town sizes: Dirichlet shares, so some towns are busy and some nearly empty.
        per_town = rng.multinomial(n_town, rng.dirichlet(np.full(cfg.n_towns, 0.8)))
        for t in range(cfg.n_towns):
            r, c = _pick_pixel_of_class(rng, labels, t % len(CLASSES), m)
            s = rng.uniform(*cfg.town_sigma_m) / gsd
            rows.append(r + rng.normal(0, s, per_town[t]))
            cols.append(c + rng.normal(0, s, per_town[t]))
            hot += [None] * int(per_town[t])
    n_uniform = rest - n_town
    rows.append(rng.uniform(m, n - m, n_uniform))
    cols.append(rng.uniform(m, n - m, n_uniform))
    hot += [None] * n_uniform
    # Clusters near the edge are folded back in rather than clipped, so no pile-up forms on the margin.
    row = _fold(np.concatenate(rows), m, n - m)
    col = _fold(np.concatenate(cols), m, n - m)
    total = row.size
    # Shuffle, so photo ids (file order) say nothing about which cluster a photo came from.
    order = rng.permutation(total)
    row, col, hot = row[order], col[order], [hot[i] for i in order]
    indoor = np.zeros(total, dtype=bool)
    indoor[rng.choice(total, int(round(cfg.indoor_frac * total)), replace=False)] = True
    faults: list[str | None] = [None] * total
    n_bad = int(round(cfg.bad_exif_frac * total))
    for j, i in enumerate(rng.choice(total, n_bad, replace=False)):
        faults[int(i)] = EXIF_FAULTS[j % len(EXIF_FAULTS)]
    t0 = dt.datetime(cfg.years[0], 1, 1)
    span = (dt.datetime(cfg.years[1] + 1, 1, 1) - t0).total_seconds()
    # Daylight hours, so dates look like real holiday snaps.
    days = rng.integers(0, int(span // 86400), total)
    secs = rng.integers(7 * 3600, 19 * 3600, total)
    taken = [t0 + dt.timedelta(days=int(d), seconds=int(s)) for d, s in zip(days, secs, strict=True)]
    centres_ll = []
    for r, c in centres:
        la, lo = cfg.grid.latlon_of(r, c)
        centres_ll.append((r, c, float(la), float(lo)))
    return {"row": row, "col": col, "hotspot": hot, "indoor": indoor, "faults": faults, "taken": taken,
            "hotspot_centres": centres_ll}


def _fold(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect values back into [lo, hi) (as often as needed)."""
    w = hi - lo
    t = np.mod(v - lo, 2 * w)
    return lo + np.where(t < w, t, 2 * w - t - 1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Ground-level rendering

_SKIES = (  # (top colour, horizon colour, weight): clear, hazy, overcast, dusk
    (_rgb(62, 112, 196), _rgb(160, 196, 232), 0.45),
    (_rgb(120, 160, 210), _rgb(205, 216, 228), 0.25),
    (_rgb(150, 154, 164), _rgb(196, 198, 204), 0.15),
    (_rgb(84, 96, 160), _rgb(236, 164, 116), 0.15),
)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return (colour + rng.normal(0, amount, 3)).astype(np.float32)


@lru_cache(maxsize=64)
def _bilinear(px: int, cells: int) -> np.ndarray:
    """(px, cells + 1) matrix interpolating a coarse grid of ``cells`` spans onto ``px`` samples.

    Smoothstep weights rather than linear ones: thresholded fields (clouds) get round edges, not facets.
    """
    pos = (np.arange(px) + 0.5) / px * cells
    i = np.minimum(np.floor(pos).astype(int), cells - 1)
    f = pos - i
    f = (f * f * (3 - 2 * f)).astype(np.float32)
    w = np.zeros((px, cells + 1), dtype=np.float32)
    w[np.arange(px), i] = 1 - f
    w[np.arange(px), i + 1] = f
    return w


def _small_noise(rng: np.random.Generator, px: int, cells: int) -> np.ndarray:
    """A px x px smooth random field over ``cells`` spans; two small matmuls, so cheap per photo."""
    w = _bilinear(px, cells)
    return w @ rng.standard_normal((cells + 1, cells + 1)).astype(np.float32) @ w.T


class _Canvas:
    """A square float image with normalised coordinates, painted in place."""

    def __init__(self, px: int):
        self.px = px
        y, x = np.mgrid[0:px, 0:px].astype(np.float32)
        self.Y, self.X = (y + 0.5) / px, (x + 0.5) / px
        self.img = np.zeros((px, px, 3), dtype=np.float32)

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        self.img[mask] = colour if colour.ndim == 1 else colour[mask]


def _sky(rng: np.random.Generator, cv: _Canvas, horizon: float) -> np.ndarray:
    weights = np.array([w for *_, w in _SKIES])
    top, bottom, _ = _SKIES[rng.choice(len(_SKIES), p=weights / weights.sum())]
    top, bottom = _jitter(rng, top, 10), _jitter(rng, bottom, 10)
    t = np.clip(cv.Y / max(horizon, 0.05), 0, 1)[..., None] ** 0.8
    cv.img[:] = top * (1 - t) + bottom * t
    cover = rng.uniform(-0.3, 0.7)
    if cover > 0:
        n = _small_noise(rng, cv.px, int(rng.integers(3, 7)))
        a = np.clip((n - (1.2 - 1.6 * cover)) * 1.5, 0, 0.85)[..., None]
        cloud = _jitter(rng, _rgb(238, 238, 242), 8)
        cv.img[:] = cv.img * (1 - a) + cloud * a
    return bottom


def _ground_water(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.12, 0.35)  # a view across open water: mostly water, a strip of sky
    sky_low = _sky(rng, cv, h)
    below = cv.Y >= h
    d = np.clip(cv.Y - h, 0, None)
    deep = _jitter(rng, _rgb(38, 88, 162), 14)
    mix = np.clip(d * 4.5, 0, 1)[..., None]
    water = sky_low * 0.75 * (1 - mix) + deep * mix
    waves = np.sin(2 * np.pi * rng.uniform(0.25, 0.6) / (d + 0.03) + cv.X * rng.uniform(1, 5) + rng.uniform(0, 6))
    water = water + (waves * rng.uniform(8, 20))[..., None]
    water[waves > 0.93] += 30
    cv.paint(below, water)
    if rng.random() < 0.5:  # a far shore
        band = (cv.Y >= h - rng.uniform(0.01, 0.04) - 0.02 * np.sin(cv.X * 7 + rng.uniform(0, 6))) & ~below
        cv.paint(band, _jitter(rng, _rgb(84, 96, 90), 12))


def _ground_forest(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.45, 0.65)
    _sky(rng, cv, h)
    cv.paint(cv.Y >= h, _jitter(rng, _rgb(42, 82, 36), 10) + (_small_noise(rng, cv.px, 5) * 8)[..., None])
    n = int(rng.integers(7, 18))
    base = np.sort(h + rng.uniform(-0.02, 0.35, n)).astype(np.float32)  # far trees first, near trees cover them
    cx = rng.uniform(-0.05, 1.05, n).astype(np.float32)
    height = (rng.uniform(0.25, 0.6, n) * (0.6 + base)).astype(np.float32)
    hw = (rng.uniform(0.06, 0.14, n) * (0.6 + base)).astype(np.float32)
    green = (_rgb(32, 76, 32) + rng.normal(0, 9, (n, 3))).astype(np.float32)
    conifer = (rng.random(n) < 0.6)[:, None, None]
    b, c, ht, w = (a[:, None, None] for a in (base, cx, height, hw))
    X, Y = cv.X[None], cv.Y[None]
    top = b - ht
    triangle = (Y <= b) & (Y >= top) & (np.abs(X - c) <= w * (Y - top) / ht)
    cy = b - ht * 0.6
    crown = (X - c) ** 2 + (Y - cy) ** 2 <= (w * 1.2) ** 2
    trunk = ~conifer & (np.abs(X - c) < w * 0.15) & (Y > cy) & (Y <= b)
    foliage = np.where(conifer, triangle, crown)
    cover = foliage | trunk
    front = n - 1 - np.argmax(cover[::-1], axis=0)  # the nearest tree at each pixel
    is_foliage = np.take_along_axis(foliage, front[None], 0)[0]
    lit = np.clip((cv.X - cx[front]) / hw[front], -1, 1)[..., None] * 10  # sun from the right
    colour = np.where(is_foliage[..., None], green[front] + lit, _rgb(70, 52, 34))
    cv.paint(cover.any(0), colour)


def _ground_farmland(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.35, 0.55)
    _sky(rng, cv, h)
    below = cv.Y >= h
    crop = _jitter(rng, _rgb(206, 174, 72), 14)
    vx = rng.uniform(0.1, 0.9)
    t = (cv.X - vx) / (cv.Y - h + 0.02)  # rows converge to a vanishing point on the horizon
    rows = np.sin(2 * np.pi * t * rng.uniform(1.5, 4.0))
    field_img = crop * (0.82 + 0.18 * rows)[..., None] + (_small_noise(rng, cv.px, 6) * 6)[..., None]
    cv.paint(below, field_img)
    if rng.random() < 0.5:  # a distant hedge
        cv.paint((cv.Y >= h - 0.02) & ~below, _jitter(rng, _rgb(70, 92, 52), 10))


def _ground_city(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.6, 0.78)
    _sky(rng, cv, h)
    cv.paint(cv.Y >= h, _jitter(rng, _rgb(108, 108, 114), 8))
    # A row of buildings side by side: column ranges split at random, each with its height, grey and windows.
    edges = np.sort(np.concatenate([[-0.05, 1.05], rng.uniform(0, 1, int(rng.integers(3, 8)))]))
    nb = edges.size - 1
    top = rng.uniform(0.05, h - 0.12, nb)
    g = rng.uniform(100, 175, nb)
    facade = (np.stack([g, g, g + 6], axis=1) + rng.normal(0, 5, (nb, 3))).astype(np.float32)
    wp, hp = rng.uniform(0.05, 0.09, nb), rng.uniform(0.06, 0.1, nb)
    bid = np.clip(np.searchsorted(edges, cv.X, side="right") - 1, 0, nb - 1)
    x0, tp, wpb, hpb = edges[bid], top[bid], wp[bid], hp[bid]
    inside = (cv.Y >= tp) & (cv.Y < h)
    cv.paint(inside, facade[bid])
    win = inside & (np.mod(cv.X - x0, wpb) < wpb * 0.55) & (np.mod(cv.Y - tp, hpb) > hpb * 0.4)
    lit = _hash01(np.floor((cv.X - x0) / wpb), np.floor((cv.Y - tp) / hpb), bid, int(rng.integers(1 << 30))) < 0.2
    cv.paint(win & ~lit, _jitter(rng, _rgb(62, 72, 88), 6))
    cv.paint(win & lit, _jitter(rng, _rgb(218, 204, 140), 8))


def _ground_desert(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.4, 0.6)
    _sky(rng, cv, h)
    sand = _jitter(rng, _rgb(218, 166, 102), 10)
    cv.paint(cv.Y >= h, sand * 0.9)
    n_layers = int(rng.integers(2, 5))
    for layer in range(n_layers):  # far to near: each ridge hides the ones behind it
        base = h + (layer + 0.3) * (1 - h) / (n_layers + 1)
        amp, wl, ph = rng.uniform(0.04, 0.12), rng.uniform(0.4, 1.2), rng.uniform(0, 6.3)
        arg = 2 * np.pi * cv.X / wl + ph
        ridge = base - amp * (0.5 + 0.5 * np.sin(arg))
        shade = (0.9 + 0.1 * np.cos(arg))[..., None] * (0.92 + 0.05 * layer)  # slopes facing the sun are lighter
        ripples = (np.sin(cv.Y * cv.px * 1.3 + cv.X * 4) * 4)[..., None]
        cv.paint(cv.Y >= ridge, sand * shade + ripples)


def _ground_snow(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.5, 0.68)
    _sky(rng, cv, h)
    white = _jitter(rng, _rgb(236, 239, 246), 5)
    shadow = _jitter(rng, _rgb(186, 198, 226), 8)
    n_peaks = int(rng.integers(2, 5))
    cx = rng.uniform(-0.1, 1.1, n_peaks)
    top = h - rng.uniform(0.12, 0.4, n_peaks)
    slope = rng.uniform(0.6, 1.6, n_peaks)
    heights = top[:, None, None] + slope[:, None, None] * np.abs(cv.X[None] - cx[:, None, None])
    ridge_i = np.argmin(heights, axis=0)  # the highest peak over each column wins
    ridge = np.min(heights, axis=0)
    mountain = cv.Y >= np.minimum(ridge, h)
    left = cv.X < cx[ridge_i]  # the side facing away from the sun
    body = np.where(left[..., None], shadow, white) + (_small_noise(rng, cv.px, 6) * 5)[..., None]
    cv.paint(mountain, body)
    rocks = mountain & (_small_noise(rng, cv.px, 10) > 1.5) & (cv.Y < h)
    cv.paint(rocks, _jitter(rng, _rgb(92, 90, 96), 8))
    fg = cv.Y >= h
    cv.paint(fg, white * (0.93 + 0.05 * _small_noise(rng, cv.px, 4))[..., None])


_WALLS = (_rgb(222, 208, 180), _rgb(196, 214, 190), _rgb(200, 200, 204), _rgb(186, 204, 222), _rgb(236, 232, 224),
          _rgb(206, 170, 150))
_FURNITURE = (_rgb(120, 40, 40), _rgb(50, 60, 110), _rgb(96, 70, 48), _rgb(60, 60, 62), _rgb(150, 120, 86))


def _render_indoor(rng: np.random.Generator, cv: _Canvas) -> None:
    wall = _jitter(rng, _WALLS[rng.integers(len(_WALLS))], 10)
    floor_y, ceil_y = rng.uniform(0.55, 0.8), rng.uniform(0.0, 0.15)
    cv.img[:] = wall * (0.9 + 0.1 * cv.X[..., None] if rng.random() < 0.5 else 1.0)
    cv.paint(cv.Y < ceil_y, wall * 0.82)
    floor = cv.Y >= floor_y
    if rng.random() < 0.6:  # wooden planks
        planks = np.mod(cv.X * rng.uniform(6, 12) + (cv.Y - floor_y) * 2, 1.0) < 0.08
        wood = _jitter(rng, _rgb(140, 96, 60), 14)
        cv.paint(floor, wood)
        cv.paint(floor & planks, wood * 0.7)
    else:  # tiles
        tile = _jitter(rng, _rgb(190, 186, 178), 14)
        grout = (np.mod(cv.X * 8, 1.0) < 0.07) | (np.mod((cv.Y - floor_y) * 14, 1.0) < 0.08)
        cv.paint(floor, tile)
        cv.paint(floor & grout, tile * 0.75)
    if rng.random() < 0.6:  # a picture or a door on the wall
        x0, y0 = rng.uniform(0.05, 0.7), rng.uniform(ceil_y + 0.05, floor_y - 0.3)
        frame = (cv.X >= x0) & (cv.X < x0 + rng.uniform(0.1, 0.25)) & (cv.Y >= y0) & (cv.Y < y0 + rng.uniform(0.1, 0.25))
        cv.paint(frame, _jitter(rng, _rgb(90, 80, 70), 30))
    for _ in range(int(rng.integers(2, 5))):  # sofas, tables, cabinets standing on the floor
        x0, w = rng.uniform(-0.1, 0.9), rng.uniform(0.12, 0.4)
        y1 = floor_y + rng.uniform(0.02, 0.2)
        y0 = y1 - rng.uniform(0.12, 0.35)
        box = (cv.X >= x0) & (cv.X < x0 + w) & (cv.Y >= y0) & (cv.Y < y1)
        colour = _jitter(rng, _FURNITURE[rng.integers(len(_FURNITURE))], 12)
        cv.paint(box, colour)
        cv.paint(box & (cv.Y < y0 + 0.03), colour * 1.2)
    for _ in range(int(rng.integers(1, 3))):  # lamps: a bright shade with a glow
        lx, ly = rng.uniform(0.1, 0.9), rng.uniform(0.1, floor_y - 0.1)
        r2 = (cv.X - lx) ** 2 + (cv.Y - ly) ** 2
        glow = np.exp(-r2 / rng.uniform(0.004, 0.02))[..., None]
        cv.img[:] = cv.img * (1 - 0.6 * glow) + _rgb(255, 236, 170) * 0.6 * glow
        cv.paint(r2 < rng.uniform(0.0012, 0.004), _rgb(255, 246, 214))


_GROUND = {"water": _ground_water, "forest": _ground_forest, "farmland": _ground_farmland, "city": _ground_city,
           "desert": _ground_desert, "snow": _ground_snow}


def render_ground_photo(class_name: str | None, rng: np.random.Generator, px: int = 64) -> np.ndarray:
    """Render a ground-level view of ``class_name`` (None: an indoor room) as (px, px, 3) uint8."""
    cv = _Canvas(px)
    if class_name is None:
        _render_indoor(rng, cv)
    elif class_name in _GROUND:
        _GROUND[class_name](rng, cv)
    else:
        raise ValueError(f"unknown class {class_name!r}; expected one of {CLASSES} or None (indoor)")
    img = cv.img * rng.uniform(0.85, 1.12) + rng.standard_normal(cv.img.shape, dtype=np.float32) * rng.uniform(2, 6)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.clip(img, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Captions

_NAMES = {
    "water": ("water", "lake", "sea", "river", "bay"),
    "forest": ("forest", "woods", "woodland", "trees", "pine forest"),
    "farmland": ("farmland", "field", "wheat field", "crops", "farm"),
    "city": ("city", "town", "street", "buildings", "downtown"),
    "desert": ("desert", "dunes", "sand dunes", "sand", "sahara"),
    "snow": ("snow", "snowy mountains", "snowfield", "glacier", "winter slopes"),
}
_DESCRIPTIONS = {
    "water": ("calm blue water under the sky", "waves rolling on the lake", "the sea meets the horizon"),
    "forest": ("tall green trees in a dense forest", "pine trees on a summer day", "a walk in the woods"),
    "farmland": ("golden wheat ready for harvest", "rows of crops in the countryside", "a farm field in summer"),
    "city": ("tall buildings along a busy street", "the city skyline with many windows", "an urban street"),
    "desert": ("orange sand dunes in the hot sun", "a dry desert landscape", "wind shaped dunes of sand"),
    "snow": ("white snowy mountains in winter", "fresh snow on the peaks", "a cold snowy landscape"),
}
_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a picture of a {}.", "a view of the {}.", "{} on a sunny day.",
              "my holiday photo of the {}.", "a landscape with {}.", "the {} seen from the ground.")
_INDOOR = ("a photo of a room indoors.", "a photo of an indoor room.", "inside a living room.",
           "a lamp and a sofa in a room.", "an indoor scene with furniture.", "a cozy bedroom interior.",
           "the kitchen of my apartment.", "a hotel room.")


def make_caption(class_name: str | None, rng: np.random.Generator) -> str:
    """A caption for a ground photo of ``class_name`` (None: indoor).

    A third of outdoor captions use the class's own name in CLIP's zero-shot template "a photo of a {}.", so
    a model trained on them answers that prompt; the rest vary template, synonym and wording.
    """
    if class_name is None:
        return str(_INDOOR[rng.integers(len(_INDOOR))])
    u = rng.random()
    if u < 0.33:
        return f"a photo of a {class_name}."
    if u < 0.55:
        return str(_DESCRIPTIONS[class_name][rng.integers(3)])
    name = _NAMES[class_name][rng.integers(len(_NAMES[class_name]))]
    return _TEMPLATES[rng.integers(len(_TEMPLATES))].format(name)


# ----------------------------------------------------------------------------------------------------------------
# Writing photos with EXIF


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Degrees -> EXIF (degrees, minutes, seconds) rationals, seconds to 1e-4 (a few millimetres)."""
    value = abs(value)
    deg = int(value)
    minutes = int((value - deg) * 60)
    sec = round(((value - deg) * 60 - minutes) * 60 * 10000)
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(sec, 10000)


def _exif_bytes(lat: float, lon: float, taken: dt.datetime, fault: str | None) -> bytes:
    exif = Image.Exif()
    exif[_TAG_MAKE] = "graft"
    exif[_TAG_MODEL] = "synthetic world camera"
    if fault != "no_date":
        exif.get_ifd(_TAG_EXIF_IFD)[_TAG_DATETIME_ORIGINAL] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if fault != "no_gps":
        gps = exif.get_ifd(_TAG_GPS_IFD)
        gps[_GPS_VERSION] = b"\x02\x03\x00\x00"
        shown_lat = lat + 90.0 if fault == "lat_out_of_range" else lat  # e.g. 120 N: no such place
        gps[_GPS_LAT] = _dms(shown_lat)
        gps[_GPS_LON] = _dms(lon)
        if fault != "gps_no_ref":
            gps[_GPS_LAT_REF] = "N" if lat >= 0 else "S"
            gps[_GPS_LON_REF] = "E" if lon >= 0 else "W"
    return exif.tobytes()


def _jpeg(img: np.ndarray, quality: int, exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    Image.fromarray(img).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def _write_photos(root: Path, cfg: WorldConfig, grid: TileGrid, labels: np.ndarray, pl: dict[str, Any],
                  render_seed: int) -> list[PhotoTruth]:
    row, col = pl["row"], pl["col"]
    lat, lon = grid.latlon_of(row, col)
    labels_k = labels[np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)]
    (root / "photos").mkdir()
    out = []
    for i in tqdm(range(row.size), desc="rendering ground photos", unit="photo", mininterval=1.0):
        # One stream per photo: a photo's pixels do not depend on how many were rendered before it.
        rng = np.random.default_rng([render_seed, i])
        k = int(labels_k[i])
        indoor = bool(pl["indoor"][i])
        scene = None if indoor else CLASSES[k]
        img = render_ground_photo(scene, rng, cfg.photo_px)
        caption = make_caption(scene, rng)
        fault = pl["faults"][i]
        taken = pl["taken"][i]
        photo_id = f"p{i:05d}"
        rel = f"photos/{photo_id}.jpg"
        (root / rel).write_bytes(_jpeg(img, cfg.jpeg_quality, _exif_bytes(float(lat[i]), float(lon[i]), taken, fault)))
        out.append(PhotoTruth(
            photo_id=photo_id, path=rel, lat=float(lat[i]), lon=float(lon[i]), row=float(row[i]), col=float(col[i]),
            class_index=k, class_name=CLASSES[k], indoor=indoor, exif_fault=fault,
            taken_at=None if fault == "no_date" else taken.isoformat(), caption=caption, hotspot=pl["hotspot"][i],
        ))
    return out


def _write_filter_train(folder: Path, cfg: WorldConfig, rng: np.random.Generator) -> dict[str, int]:
    """A labelled indoor/outdoor set drawn apart from the world's photos (outdoor: classes in turn)."""
    for sub in ("indoor", "outdoor"):
        (folder / sub).mkdir(parents=True)
    n = cfg.filter_train_per_class
    for i in tqdm(range(n), desc="rendering filter training set", unit="pair", mininterval=1.0):
        (folder / "indoor" / f"i{i:04d}.jpg").write_bytes(
            _jpeg(render_ground_photo(None, rng, cfg.photo_px), cfg.jpeg_quality))
        (folder / "outdoor" / f"o{i:04d}.jpg").write_bytes(
            _jpeg(render_ground_photo(CLASSES[i % len(CLASSES)], rng, cfg.photo_px), cfg.jpeg_quality))
    return {"indoor": n, "outdoor": n}


def _counts(photos: list[PhotoTruth], labels: np.ndarray, filter_counts: dict[str, int]) -> dict[str, Any]:
    area = np.bincount(labels.ravel(), minlength=len(CLASSES)) / labels.size
    return {
        "photos": len(photos),
        "outdoor_per_class": {c: sum(1 for p in photos if p.class_name == c and not p.indoor) for c in CLASSES},
        "indoor": sum(p.indoor for p in photos),
        "exif_faults": {f: sum(p.exif_fault == f for p in photos) for f in EXIF_FAULTS},
        "in_hotspots": sum(p.hotspot is not None for p in photos),
        "area_fraction": {c: round(float(a), 4) for c, a in zip(CLASSES, area, strict=True)},
        "filter_train": filter_counts,
    }
