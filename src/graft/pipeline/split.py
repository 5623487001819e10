"""Train/val/test split drawn per geographic block.

Photos of one block are spatially correlated (the same streets, the same
fields, often the same tile), so the split is drawn over blocks, never over
photos or tiles: a block's tiles and photos all share one split, and no tile
or photo is shared across splits.

The assignment depends only on the sorted list of block ids, the fractions and
the seed, so every process of a distributed build computes the same answer.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import model_validator

from graft.config import StrictModel

SPLITS = ("train", "val", "test")


class SplitConfig(StrictModel):
    """Fractions of blocks per split (they must sum to 1) and the seed of the draw.

    Attributes:
        train: share of blocks for training.
        val: share of blocks for validation (the trainer's validation signal reads it).
        test: share of blocks held out for evaluation.
        seed: seed of the draw of blocks.
    """

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        fr = [self.train, self.val, self.test]
        if any(f < 0 for f in fr):
            raise ValueError(f"split fractions must be >= 0, got train={self.train} val={self.val} test={self.test}")
        if not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ValueError(f"split fractions must sum to 1, got {sum(fr):.6g} "
                             f"(train={self.train} val={self.val} test={self.test})")
        return self


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """How many of ``n`` blocks go to (train, val, test).

    Largest-remainder rounding, with one adjustment so small regions stay
    usable: every split with a positive fraction gets at least one block when
    there are at least as many blocks as such splits (a 5-block test region
    with 0.8/0.1/0.1 gets 3/1/1, not 5/0/0).
    """
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i in range(3) if fractions[i] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                # take the block from the split that has the most to spare
                donor = max((j for j in positive if counts[j] > 1), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def assign_splits(block_ids: list[int], cfg: SplitConfig) -> dict[int, str]:
    """Map each block id to ``train``/``val``/``test``: a seeded permutation cut by :func:`split_counts`."""
    ids = sorted(set(int(b) for b in block_ids))
    n_train, n_val, _ = split_counts(len(ids), (cfg.train, cfg.val, cfg.test))
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5B117])).permutation(len(ids))
    out: dict[int, str] = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out
