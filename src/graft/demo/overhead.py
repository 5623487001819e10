"""The demo world seen from above: land-cover regions and the overhead mosaic, each class with its own texture.

The overhead palette is deliberately not the ground palette (see :mod:`graft.demo.world`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from graft.demo.texture import hash01, rgb
from graft.demo.world_config import CLASSES


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


def land_cover(rng: np.random.Generator, n: int, region_px: int) -> tuple[np.ndarray, np.ndarray, int]:
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


# Overhead palettes. Each non-trivial class borrows its colour from another class's *ground* palette
# (graft.demo.ground): forest <- farmland, farmland <- city, city <- desert, desert <- forest. Water and snow keep
# their own colour from both views, so a ground-only model is right on those two and wrong on the rest.
def _top_water(p: _Pixels) -> np.ndarray:
    u, _ = p.rotated()
    ripple = np.sin(2 * np.pi * (u / (6.0 * p.scale) + 0.6 * p.mid))
    col = rgb(28, 68, 140) + p.tint * 8 + (p.low * 8 + ripple * 9)[:, None]
    sparkle = (ripple > 0.92) & (p.grain > 1.2)
    col[sparkle] += 35
    return col


def _top_forest(p: _Pixels) -> np.ndarray:
    crowns = p.fine + 0.35 * p.grain  # blobs ~5 px across: individual crowns at 10 m
    canopy = rgb(208, 172, 70) + p.tint * 12 + (crowns * 14 + p.low * 8)[:, None]
    gap = rgb(112, 84, 38) + p.tint * 8
    return np.where((crowns > -0.55)[:, None], canopy, gap)


def _top_farmland(p: _Pixels) -> np.ndarray:
    u, v = p.rotated()
    pw, ph = 46.0 * p.scale, 30.0 * p.scale
    i, j = np.floor(u / pw), np.floor(v / ph)
    tone, direction, variant = hash01(i, j, p.cell, 1), hash01(i, j, p.cell, 2), hash01(i, j, p.cell, 3)
    s = np.where(direction < 0.5, u, v)
    stripes = np.sin(2 * np.pi * s / 6.0)
    base = np.where((variant < 0.3)[:, None], rgb(150, 146, 138), rgb(128, 130, 136))  # warm / cool grey
    col = base * (0.78 + 0.4 * tone)[:, None].astype(np.float32) + p.tint * 7 + (stripes * 12)[:, None]
    edge = np.minimum.reduce([u - i * pw, (i + 1) * pw - u, v - j * ph, (j + 1) * ph - v]) < 1.2
    col[edge] = rgb(84, 86, 82)  # hedgerows and tracks between parcels
    return col


def _top_city(p: _Pixels) -> np.ndarray:
    u, v = p.rotated()
    bs, street = 22.0 * p.scale, 3.0
    mu, mv = np.mod(u, bs), np.mod(v, bs)
    bi, bj = np.floor(u / bs), np.floor(v / bs)
    nsub = 2 + (hash01(bi, bj, p.cell, 7) < 0.5)  # 2 or 3 buildings along u per block
    subw = (bs - street) / nsub
    k = np.floor((mu - street) / subw)
    tone = hash01(bi, bj, k, p.cell, 8)
    roof = (rgb(222, 178, 118) * (1 - tone)[:, None] + rgb(204, 138, 88) * tone[:, None]).astype(np.float32)
    roof += p.tint * 8 + (p.grain * 4)[:, None]
    shadow = (np.mod(mu - street, subw) > subw - 1.6) | (mv > bs - 1.6)
    roof[shadow] *= 0.72
    on_street = (mu < street) | (mv < street)
    return np.where(on_street[:, None], rgb(104, 92, 80) + (p.grain * 3)[:, None], roof)


def _top_desert(p: _Pixels) -> np.ndarray:
    u, _ = p.rotated()
    phase = u / (24.0 * p.scale) + 0.9 * p.mid + 0.3 * p.low
    f = phase - np.floor(phase)
    shade = np.where(f < 0.72, f / 0.72, (1.0 - f) / 0.28)  # long windward slope, short steep lee
    return rgb(44, 96, 46) * (0.7 + 0.55 * shade)[:, None].astype(np.float32) + p.tint * 7 + (p.grain * 3)[:, None]


def _top_snow(p: _Pixels) -> np.ndarray:
    shade = 0.6 * p.mid + 0.4 * p.low
    col = rgb(234, 238, 246) + (shade * 9 + p.grain * 2)[:, None] + p.tint * 4
    shadow = np.clip(-(shade + 0.6), 0, 1)[:, None]
    col = col * (1 - shadow) + rgb(188, 198, 224) * shadow
    rock = (p.fine > 2.1)[:, None]
    return np.where(rock, rgb(96, 94, 98), col)


_OVERHEAD = {"water": _top_water, "forest": _top_forest, "farmland": _top_farmland, "city": _top_city,
             "desert": _top_desert, "snow": _top_snow}


# Near-infrared level of each class in the multispectral variant (uint8): healthy canopy reflects NIR
# strongly, water absorbs it, dry bare parcels and pavement sit in between, snow and sand are bright.
NIR_LEVEL = {"water": 14, "forest": 196, "farmland": 72, "city": 96, "desert": 150, "snow": 170}


def render_overhead(rng: np.random.Generator, labels: np.ndarray, cell_id: np.ndarray, n_cells: int,
                    lookalike: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 overhead mosaic: each class painted with its texture, varied per land-cover cell.

    With ``lookalike = (a, b)`` class ``b`` is painted with class ``a``'s texture, and the (H, W) uint8
    near-infrared band is returned too (else None).
    """
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
