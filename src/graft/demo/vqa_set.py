"""An RSVQA-format question set on the demo world's held-out tiles, answered from the label raster.

Windows are cut entirely inside the test blocks and written in RSVQA-HR's
layout (``USGS_split_test_*.json`` + ``Data/<id>.tif``, graft.vqa.rsvqa), with
the four HR question types, phrased with RSVQA's templates:

* presence: one class the tile holds and one it does not ("Is there a forest?");
* count: the objects of a present class ("How many forests are there?"),
  answered with the exact number as in HR;
* comparison: the object counts of two classes ("Are there more cities than
  deserts?", "Is the number of waters equal to the number of snows?");
* area: "What is the area covered by farmlands?", ``<n>m2`` with n = pixels x GSD^2.

An **object** is a connected region (4-connectivity) of one class inside the
window covering at least :data:`MIN_OBJECT_SHARE` of it. A class present in a
tile only as smaller slivers (along the window's edge, typically) is never
asked about: whether such a sliver "is there" is a matter of threshold, not of
the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

MIN_OBJECT_SHARE = 0.05


def plural(name: str) -> str:
    return name[:-1] + "ies" if name.endswith("y") else name + "s"


def _objects(window: np.ndarray, k: int) -> tuple[int, int, bool]:
    """(objects of class k, pixels of class k, whether the class is unambiguous in the window)."""
    labels, n = ndimage.label(window == k)
    if n == 0:
        return 0, 0, True
    sizes = np.asarray(ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1)))
    big = sizes >= MIN_OBJECT_SHARE * window.size
    return int(big.sum()), int(sizes.sum()), bool(big.all())


def write_heldout_vqa(world, out: Path, size: int, allowed: np.ndarray, n_tiles: int, seed: int) -> Path:
    """Write ``out/heldout_vqa`` (RSVQA-HR layout, split ``test``); returns the folder."""
    from graft.demo.world import cut_tile
    from graft.vqa.rsvqa import write_rsvqa_split

    rng = np.random.default_rng(seed + 2)
    classes, gsd = list(world.classes), float(world.config.gsd)
    half = size // 2
    inside = ndimage.minimum_filter(allowed.astype(np.uint8), size=size + 1, mode="constant") > 0
    cand_r, cand_c = np.nonzero(inside[half:-half:4, half:-half:4])
    cand_r, cand_c = cand_r * 4 + half, cand_c * 4 + half
    images: dict[int, np.ndarray] = {}
    questions: list[tuple[int, str, str, str]] = []
    taken: list[tuple[int, int]] = []
    for j in rng.permutation(cand_r.size):
        r, c = int(cand_r[j]), int(cand_c[j])
        if any(abs(r - a) < size and abs(c - b) < size for a, b in taken):
            continue  # windows do not overlap
        rgb, window = cut_tile(world, r, c, size)
        stats = {k: _objects(window, k) for k in range(len(classes))}
        clear = [k for k in stats if stats[k][2]]
        present = [k for k in clear if stats[k][0] > 0]
        absent = [k for k in clear if stats[k][1] == 0]
        if not present or not absent:
            continue
        img_id = len(images)
        images[img_id] = rgb
        taken.append((r, c))
        p, a = int(rng.choice(present)), int(rng.choice(absent))
        questions.append((img_id, "presence", f"Is there a {classes[p]}?", "yes"))
        questions.append((img_id, "presence", f"Is a {classes[a]} present?", "no"))
        k = int(rng.choice(present))
        questions.append((img_id, "count", f"How many {plural(classes[k])} are there?", str(stats[k][0])))
        x, y = (int(v) for v in rng.choice(clear, 2, replace=False))
        nx, ny = stats[x][0], stats[y][0]
        form = int(rng.integers(3))
        if form == 0:
            q, ans = f"Are there more {plural(classes[x])} than {plural(classes[y])}?", nx > ny
        elif form == 1:
            q, ans = f"Are there less {plural(classes[x])} than {plural(classes[y])}?", nx < ny
        else:
            q, ans = f"Is the number of {plural(classes[x])} equal to the number of {plural(classes[y])}?", nx == ny
        questions.append((img_id, "comp", q, "yes" if ans else "no"))
        k = int(rng.choice(clear))
        questions.append((img_id, "area", f"What is the area covered by {plural(classes[k])}?",
                          f"{int(round(stats[k][1] * gsd * gsd))}m2"))
        if len(images) >= n_tiles:
            break
    if not images:
        raise RuntimeError("no held-out window holds one class clearly and lacks another; enlarge the demo world")
    return write_rsvqa_split(out / "heldout_vqa", "hr", "test", images, questions)
