"""The demo world seen from the ground: a photo of a class's scenery (or of a room) and its caption."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from graft.demo.texture import hash01, rgb
from graft.demo.world_config import CLASSES

_SKIES = (  # (top colour, horizon colour, weight): clear, hazy, overcast, dusk
    (rgb(62, 112, 196), rgb(160, 196, 232), 0.45),
    (rgb(120, 160, 210), rgb(205, 216, 228), 0.25),
    (rgb(150, 154, 164), rgb(196, 198, 204), 0.15),
    (rgb(84, 96, 160), rgb(236, 164, 116), 0.15),
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
        cloud = _jitter(rng, rgb(238, 238, 242), 8)
        cv.img[:] = cv.img * (1 - a) + cloud * a
    return bottom


def _ground_water(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.12, 0.35)  # a view across open water: mostly water, a strip of sky
    sky_low = _sky(rng, cv, h)
    below = cv.Y >= h
    d = np.clip(cv.Y - h, 0, None)
    deep = _jitter(rng, rgb(38, 88, 162), 14)
    mix = np.clip(d * 4.5, 0, 1)[..., None]
    water = sky_low * 0.75 * (1 - mix) + deep * mix
    waves = np.sin(2 * np.pi * rng.uniform(0.25, 0.6) / (d + 0.03) + cv.X * rng.uniform(1, 5) + rng.uniform(0, 6))
    water = water + (waves * rng.uniform(8, 20))[..., None]
    water[waves > 0.93] += 30
    cv.paint(below, water)
    if rng.random() < 0.5:  # a far shore
        band = (cv.Y >= h - rng.uniform(0.01, 0.04) - 0.02 * np.sin(cv.X * 7 + rng.uniform(0, 6))) & ~below
        cv.paint(band, _jitter(rng, rgb(84, 96, 90), 12))


def _ground_forest(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.45, 0.65)
    _sky(rng, cv, h)
    cv.paint(cv.Y >= h, _jitter(rng, rgb(42, 82, 36), 10) + (_small_noise(rng, cv.px, 5) * 8)[..., None])
    n = int(rng.integers(7, 18))
    base = np.sort(h + rng.uniform(-0.02, 0.35, n)).astype(np.float32)  # far trees first, near trees cover them
    cx = rng.uniform(-0.05, 1.05, n).astype(np.float32)
    height = (rng.uniform(0.25, 0.6, n) * (0.6 + base)).astype(np.float32)
    hw = (rng.uniform(0.06, 0.14, n) * (0.6 + base)).astype(np.float32)
    green = (rgb(32, 76, 32) + rng.normal(0, 9, (n, 3))).astype(np.float32)
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
    colour = np.where(is_foliage[..., None], green[front] + lit, rgb(70, 52, 34))
    cv.paint(cover.any(0), colour)


def _ground_farmland(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.35, 0.55)
    _sky(rng, cv, h)
    below = cv.Y >= h
    crop = _jitter(rng, rgb(206, 174, 72), 14)
    vx = rng.uniform(0.1, 0.9)
    t = (cv.X - vx) / (cv.Y - h + 0.02)  # rows converge to a vanishing point on the horizon
    rows = np.sin(2 * np.pi * t * rng.uniform(1.5, 4.0))
    field_img = crop * (0.82 + 0.18 * rows)[..., None] + (_small_noise(rng, cv.px, 6) * 6)[..., None]
    cv.paint(below, field_img)
    if rng.random() < 0.5:  # a distant hedge
        cv.paint((cv.Y >= h - 0.02) & ~below, _jitter(rng, rgb(70, 92, 52), 10))


def _ground_city(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.6, 0.78)
    _sky(rng, cv, h)
    cv.paint(cv.Y >= h, _jitter(rng, rgb(108, 108, 114), 8))
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
    lit = hash01(np.floor((cv.X - x0) / wpb), np.floor((cv.Y - tp) / hpb), bid, int(rng.integers(1 << 30))) < 0.2
    cv.paint(win & ~lit, _jitter(rng, rgb(62, 72, 88), 6))
    cv.paint(win & lit, _jitter(rng, rgb(218, 204, 140), 8))


def _ground_desert(rng: np.random.Generator, cv: _Canvas) -> None:
    h = rng.uniform(0.4, 0.6)
    _sky(rng, cv, h)
    sand = _jitter(rng, rgb(218, 166, 102), 10)
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
    white = _jitter(rng, rgb(236, 239, 246), 5)
    shadow = _jitter(rng, rgb(186, 198, 226), 8)
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
    cv.paint(rocks, _jitter(rng, rgb(92, 90, 96), 8))
    fg = cv.Y >= h
    cv.paint(fg, white * (0.93 + 0.05 * _small_noise(rng, cv.px, 4))[..., None])


_WALLS = (rgb(222, 208, 180), rgb(196, 214, 190), rgb(200, 200, 204), rgb(186, 204, 222), rgb(236, 232, 224),
          rgb(206, 170, 150))
_FURNITURE = (rgb(120, 40, 40), rgb(50, 60, 110), rgb(96, 70, 48), rgb(60, 60, 62), rgb(150, 120, 86))


def _render_indoor(rng: np.random.Generator, cv: _Canvas) -> None:
    wall = _jitter(rng, _WALLS[rng.integers(len(_WALLS))], 10)
    floor_y, ceil_y = rng.uniform(0.55, 0.8), rng.uniform(0.0, 0.15)
    cv.img[:] = wall * (0.9 + 0.1 * cv.X[..., None] if rng.random() < 0.5 else 1.0)
    cv.paint(cv.Y < ceil_y, wall * 0.82)
    floor = cv.Y >= floor_y
    if rng.random() < 0.6:  # wooden planks
        planks = np.mod(cv.X * rng.uniform(6, 12) + (cv.Y - floor_y) * 2, 1.0) < 0.08
        wood = _jitter(rng, rgb(140, 96, 60), 14)
        cv.paint(floor, wood)
        cv.paint(floor & planks, wood * 0.7)
    else:  # tiles
        tile = _jitter(rng, rgb(190, 186, 178), 14)
        grout = (np.mod(cv.X * 8, 1.0) < 0.07) | (np.mod((cv.Y - floor_y) * 14, 1.0) < 0.08)
        cv.paint(floor, tile)
        cv.paint(floor & grout, tile * 0.75)
    if rng.random() < 0.6:  # a picture or a door on the wall
        x0, y0 = rng.uniform(0.05, 0.7), rng.uniform(ceil_y + 0.05, floor_y - 0.3)
        frame = (cv.X >= x0) & (cv.X < x0 + rng.uniform(0.1, 0.25)) & (cv.Y >= y0) & (cv.Y < y0 + rng.uniform(0.1, 0.25))
        cv.paint(frame, _jitter(rng, rgb(90, 80, 70), 30))
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
        cv.img[:] = cv.img * (1 - 0.6 * glow) + rgb(255, 236, 170) * 0.6 * glow
        cv.paint(r2 < rng.uniform(0.0012, 0.004), rgb(255, 246, 214))


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


