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
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from tqdm.auto import tqdm

from graft.demo.exif import encode_photo, world_photo_exif
from graft.demo.ground import make_caption, render_ground_photo
from graft.demo.overhead import land_cover, render_overhead
from graft.demo.world_config import CLASSES, EXIF_FAULTS, WorldConfig
from graft.geometry import TileGrid
from graft.storage import atomic_dir

__all__ = [
    "CLASSES", "EXIF_FAULTS", "OUTSIDE", "WORLD_VERSION", "PhotoTruth", "TileSample", "World", "WorldConfig",
    "cut_tile", "generate_world", "load_world", "sample_single_class_tiles",
]

OUTSIDE = -1
"""What :meth:`World.label_at` returns for a point outside the map."""

WORLD_VERSION = 1


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

    labels, cell_id, n_cells = land_cover(map_rng, n, cfg.region_px)
    rgb, nir = render_overhead(map_rng, labels, cell_id, n_cells, cfg.lookalike)
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
# Writing the map


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
        exif = world_photo_exif(float(lat[i]), float(lon[i]), taken, fault)
        (root / rel).write_bytes(encode_photo(img, exif, quality=cfg.jpeg_quality))
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
            encode_photo(render_ground_photo(None, rng, cfg.photo_px), quality=cfg.jpeg_quality))
        (folder / "outdoor" / f"o{i:04d}.jpg").write_bytes(
            encode_photo(render_ground_photo(CLASSES[i % len(CLASSES)], rng, cfg.photo_px), quality=cfg.jpeg_quality))
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
