"""Text -> image retrieval with faiss.

Image embeddings go into an inner-product index (cosine, since they are
normalised): ``flat`` (``IndexFlatIP``, exact) by default; ``ivf``
(``IndexIVFFlat``, searched with ``nprobe`` lists) or ``hnsw``
(``IndexHNSWFlat``) for collections of millions. Queries are class prompts
(the zero-shot class weights); an image is relevant to a query when it carries
that class. Metrics are defined in :mod:`graft.evaluation.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from graft.evaluation import metrics

INDEX_KINDS = ("flat", "ivf", "hnsw")


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) lists, but at least 39 training points per list (faiss's k-means minimum)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


def build_index(features: np.ndarray, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
                hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 80):
    """A faiss inner-product index holding ``features`` (N, D).

    Args:
        kind: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate).
        nlist: IVF lists; default :func:`default_nlist`.
        nprobe: IVF lists searched per query (``nprobe = nlist`` is exact).
        hnsw_m: HNSW graph degree.
        ef_search, ef_construction: HNSW beam widths at search and build time.
    """
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        lists = nlist or default_nlist(x.shape[0])
        if lists > x.shape[0]:
            raise ValueError(f"retrieval.nlist={lists} exceeds the {x.shape[0]} images; lower it")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(nprobe, lists)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"retrieval.index must be one of {INDEX_KINDS}, got {kind!r}")
    index.add(x)
    return index


@dataclass
class RetrievalResult:
    """Metrics and the ranked lists. ``ids[q]`` are image rows, best first; -1 where the index returned fewer."""

    metrics: dict[str, float]
    ids: np.ndarray
    sims: np.ndarray
    ranked_relevant: np.ndarray


def text_to_image_retrieval(
    image_features: np.ndarray,
    queries: np.ndarray,
    relevance: np.ndarray,
    index: str = "flat",
    depth: int | None = None,
    recall_ks: tuple[int, ...] = (1, 5, 10),
    precision_ks: tuple[int, ...] = (10, 100),
    **index_options,
) -> RetrievalResult:
    """Rank every image for every text query and score the rankings.

    Args:
        image_features: (N, D) normalised image embeddings.
        queries: (Q, D) normalised text embeddings (e.g. one per class).
        relevance: (N, Q) bool, image n is relevant to query q.
        index: ``flat``, ``ivf`` or ``hnsw``.
        depth: how many images to retrieve per query; None ranks all N (exact AP with ``flat``).
        index_options: passed to :func:`build_index`.
    """
    relevance = np.asarray(relevance, dtype=bool)
    n = image_features.shape[0]
    if relevance.shape != (n, queries.shape[0]):
        raise ValueError(f"relevance must be (N={n}, Q={queries.shape[0]}), got {relevance.shape}")
    faiss_index = build_index(image_features, index, **index_options)
    k = n if depth is None else min(depth, n)
    sims, ids = faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    valid = ids >= 0
    q_idx = np.broadcast_to(np.arange(queries.shape[0])[:, None], ids.shape)
    ranked = np.where(valid, relevance[np.where(valid, ids, 0), q_idx], False)
    result = metrics.retrieval_metrics(ranked, relevance.sum(axis=0), recall_ks, precision_ks)
    return RetrievalResult(metrics=result, ids=ids, sims=sims, ranked_relevant=ranked)
