"""How close a satellite encoder's geometry is to CLIP's ground-photo space.

For held-out tiles, the mutual-kNN score (Huh et al., 2024) between each
tile's satellite embedding and the mean CLIP embedding of the ground photos
inside it (both trainer and ``graft eval`` take the tile's centred crop of the
encoder's input size at native resolution, as training sees tiles, and the
photos inside that crop): 1.0 when both spaces agree on every tile's k nearest neighbours,
about k/N for unrelated spaces. It needs no labels and no text, so the trainer
can call :func:`alignment_score` on validation pairs as training proceeds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from graft.evaluation.metrics import mutual_knn_alignment

log = logging.getLogger(__name__)


def alignment_score(sat: np.ndarray, ground_mean: np.ndarray, k: int = 10) -> float:
    """Mutual-kNN alignment of paired embeddings.

    Args:
        sat: (N, D) satellite image embeddings.
        ground_mean: (N, D') mean ground-photo embedding of the same N tiles, in the same order.
        k: neighbourhood size (needs N > k).

    Returns:
        Mean fraction of shared neighbours, in [0, 1].
    """
    sat = np.asarray(sat, dtype=np.float32)
    ground_mean = np.asarray(ground_mean, dtype=np.float32)
    if not (np.isfinite(sat).all() and np.isfinite(ground_mean).all()):
        raise ValueError("alignment_score: embeddings contain NaN or inf")
    return mutual_knn_alignment(sat, ground_mean, k=k)


def native_crop_transform(preprocess_cfg: dict[str, Any]):
    """PIL image (already the model's input size) -> normalised tensor, with no resize.

    For pairs cut by :meth:`graft.evaluation.datasets.pairs.PairSet.center_crop`: the model sees tiles at
    the resolution it was trained on, as in training, instead of a resized whole tile.
    """
    from torchvision import transforms as T

    return T.Compose([T.ToTensor(), T.Normalize(mean=list(preprocess_cfg["mean"]), std=list(preprocess_cfg["std"]))])

