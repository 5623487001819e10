"""The dataset's diagnostic plots: ``map.png``, ``photos_per_tile.png`` and the indoor filter's score
histograms ``filter_scores.png`` / ``filter_check.png`` (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: builds run on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from graft.geometry import TileGrid, crs_to_lonlat  # noqa: E402
from graft.storage import atomic_path  # noqa: E402

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
MAX_POINTS = 200_000  # beyond this the scatter is subsampled: the map stays readable and small
MAX_FOOTPRINTS = 20_000  # beyond this tiles are drawn as centre dots instead of outlines
SCORE_BINS = 20  # the filter score histogram's bins over [0, 1]: partitions store counts, the plot draws them


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_map(
    path: str | os.PathLike,
    photo_lat: np.ndarray,
    photo_lon: np.ndarray,
    photo_split: Sequence[str],
    tiles: Sequence[tuple[TileGrid, str]],
    region_outlines: Sequence[np.ndarray] = (),
    seed: int = 0,
) -> None:
    """Photos as dots and tile footprints as outlines, coloured by split, in lon/lat.

    Args:
        path: output PNG (written atomically).
        photo_lat, photo_lon, photo_split: one entry per kept photo.
        tiles: (grid, split) per tile.
        region_outlines: the region's rings as (N, 2) lon/lat arrays, drawn dashed.
        seed: seed of the subsample when there are more than ``MAX_POINTS`` photos.
    """
    fig, ax = plt.subplots(figsize=(8, 8))
    photo_split = np.asarray(photo_split, dtype=object)
    idx = np.arange(len(photo_lat))
    if len(idx) > MAX_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), MAX_POINTS, replace=False))
    draw_outlines = len(tiles) <= MAX_FOOTPRINTS
    for split, colour in SPLIT_COLOURS.items():
        sel = idx[photo_split[idx] == split]
        n_tiles = sum(1 for _, s in tiles if s == split)
        if len(sel) == 0 and n_tiles == 0:
            continue
        ax.scatter(photo_lon[sel], photo_lat[sel], s=4, c=colour, alpha=0.7, linewidths=0,
                   label=f"{split}: {int((photo_split == split).sum())} photos, {n_tiles} tiles")
        grids = [g for g, s in tiles if s == split]
        if not grids:
            continue
        if draw_outlines:
            polys = [_footprint(g) for g in grids]
            ax.add_collection(PolyCollection(polys, facecolors="none", edgecolors=colour, linewidths=0.6))
        else:
            centres = np.array([_footprint(g).mean(axis=0) for g in grids])
            ax.scatter(centres[:, 0], centres[:, 1], s=2, marker="s", c=colour, alpha=0.4)
    for k, ring in enumerate(region_outlines):
        ax.plot(ring[:, 0], ring[:, 1], "k--", linewidth=0.8, label="region" if k == 0 else None)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(f"{len(photo_lat)} photos in {len(tiles)} tiles")
    ax.set_aspect(1.0 / max(np.cos(np.radians(np.nanmean(photo_lat))) if len(photo_lat) else 1.0, 1e-3))
    ax.autoscale_view()
    # Outside the axes: loc="best" tests every candidate spot against every plotted point, which
    # takes seconds per plot at a state's worth of photos and hides data on a dense map anyway.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    _save(fig, path)


def _footprint(grid: TileGrid) -> np.ndarray:
    left, bottom, right, top = grid.bounds
    lon, lat = crs_to_lonlat(np.array([left, right, right, left]), np.array([top, top, bottom, bottom]), grid.crs)
    return np.stack([np.asarray(lon), np.asarray(lat)], axis=1)


def plot_photos_per_tile(path: str | os.PathLike, counts: Sequence[int], cap: int) -> None:
    """Histogram of photos per tile, with the per-tile cap marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = np.asarray(counts, dtype=int)
    if len(counts):
        ax.hist(counts, bins=np.arange(0.5, max(int(counts.max()), cap) + 1.5, 1.0), color="#1f77b4")
        ax.set_title(f"{len(counts)} tiles, mean {counts.mean():.2f} photos/tile")
    else:
        ax.set_title("no tiles")
    ax.axvline(cap + 0.5, color="k", linestyle="--", linewidth=0.8, label=f"cap = {cap}")
    ax.set_xlabel("photos per tile")
    ax.set_ylabel("tiles")
    ax.legend(loc="upper right")
    _save(fig, path)


def score_histogram(scores: Sequence[float] | np.ndarray) -> list[int]:
    """Counts of outdoor scores in ``SCORE_BINS`` equal bins over [0, 1]: what a partition stores, summable."""
    clipped = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    return np.histogram(clipped, bins=SCORE_BINS, range=(0.0, 1.0))[0].tolist()


def plot_filter_scores(path: str | os.PathLike, counts: Sequence[int], threshold: float, title: str) -> None:
    """The indoor filter's outdoor-score histogram (``SCORE_BINS`` bins over [0, 1]), with the threshold marked.

    Bins below the threshold (rejected as indoor) are red, the others blue; a filter that fits the data
    shows two separated humps, one that does not a smear, or a hump on the wrong side of the line.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = np.asarray(counts, dtype=int)
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    colours = ["#d62728" if hi <= threshold else "#1f77b4" for hi in edges[1:]]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colours, edgecolor="white", linewidth=0.5)
    ax.axvline(threshold, color="k", linestyle="--", linewidth=0.8, label=f"threshold = {threshold:g}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("outdoor score (red: rejected as indoor)")
    ax.set_ylabel("photos")
    ax.set_title(title if counts.sum() else f"{title} (no photo scored)", fontsize=9)
    ax.legend(loc="upper center")
    _save(fig, path)
