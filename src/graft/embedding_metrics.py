"""Label-free metrics of paired embeddings, shared by training's validation signal and evaluation.

Training and evaluation are peers (neither imports the other), so the metrics
both need live here, below them: numpy only.

- :func:`mutual_knn_alignment`: how far two embedding spaces agree on each
  item's k nearest neighbours (Huh et al., 2024).
- :func:`pair_recall`: for each satellite tile, whether one of its own ground
  photos is among the k photos nearest to it, out of all photos of the set.
"""

from __future__ import annotations

import numpy as np


def _knn_indices(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices of the k nearest neighbours of every row by cosine similarity, self excluded. (N, k)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("mutual kNN: an embedding is all zeros (cosine similarity undefined)")
    x = x / norms
    n = x.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    # Row blocks keep memory at chunk x N instead of N x N.
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start:start + chunk] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def mutual_knn_alignment(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment of paired embeddings ``a[i] <-> b[i]`` in [0, 1].

    Args:
        a: (N, Da) embeddings of one modality.
        b: (N, Db) embeddings of the other; row i is paired with ``a[i]``. Dims may differ.
        k: neighbourhood size; needs N > k.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must be (N, D) with the same N, got {a.shape} and {b.shape}")
    n = a.shape[0]
    if k < 1 or n <= k:
        raise ValueError(f"mutual kNN needs 1 <= k < N; got k={k}, N={n} (evaluate more pairs or lower k)")
    na, nb = _knn_indices(a, k), _knn_indices(b, k)
    overlap = [np.intersect1d(na[i], nb[i], assume_unique=True).size for i in range(n)]
    return float(np.mean(overlap) / k)


def pair_recall(sat: np.ndarray, ground: np.ndarray, owner: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Recall@k of tile -> own photos retrieval among all ground photos of the set.

    Args:
        sat: (N, D) L2-normalised tile embeddings.
        ground: (M, D) L2-normalised ground-photo embeddings.
        owner: (M,) int: the row of ``sat`` each photo belongs to.
        ks: the k values; a k larger than M counts every photo as retrieved.

    Returns:
        {k: fraction of tiles with at least one own photo among the k nearest photos}.
    """
    sat = np.asarray(sat, dtype=np.float32)
    ground = np.asarray(ground, dtype=np.float32)
    owner = np.asarray(owner, dtype=np.int64)
    if sat.ndim != 2 or ground.ndim != 2 or owner.shape != (ground.shape[0],):
        raise ValueError(f"pair_recall: need sat (N, D), ground (M, D), owner (M,); got {sat.shape}, "
                         f"{ground.shape}, {owner.shape}")
    sims = sat @ ground.T  # (N, M)
    # Rank of a tile's best own photo = number of photos scoring strictly higher than it.
    own_best = np.full(sat.shape[0], -np.inf, dtype=np.float32)
    np.maximum.at(own_best, owner, sims[owner, np.arange(ground.shape[0])])
    rank = (sims > own_best[:, None]).sum(axis=1)
    has_photos = np.isfinite(own_best)
    return {k: float(np.mean(rank[has_photos] < k)) if has_photos.any() else float("nan") for k in ks}
