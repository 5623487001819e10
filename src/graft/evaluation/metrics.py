"""Evaluation metrics on numpy arrays, independent of torch and of any model.

Conventions (fixed here so that numbers are comparable across runs and papers):

* **Top-k accuracy**: ``k`` is clamped to the number of classes, so top-5 on a
  3-class set is 1.0 rather than an error.
* **Mean per-class accuracy**: the recall of each class that occurs in the
  labels, averaged with equal weight per class.
* **Average precision** (AP) follows ``sklearn.metrics.average_precision_score``:
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, so tied
  scores are one threshold step. A class with no positive has no AP (NaN) and
  is left out of the mean (mAP).
* **Retrieval** (a ranked list per query, e.g. from faiss): AP of a ranked list
  divides by the number of relevant items in the whole collection, so relevant
  items that were not retrieved count as misses (with a full ranking this is
  exact AP). ``R@k`` is the fraction of queries with at least one relevant item
  among the top ``k`` (the hit rate that CLIP retrieval papers report as
  recall@k); ``P@k`` is the mean fraction of relevant items in the top ``k``.
* **mIoU**: one confusion matrix accumulated over the whole set (not averaged
  per image). ``IoU_c = TP / (TP + FP + FN)``, averaged over the classes that
  occur in the ground truth *or* the predictions (``TP + FP + FN > 0``); a
  class absent from both is 0/0 and left out. Pixels whose label is the ignore
  index are left out of every count. Pixel accuracy is ``trace / total``.
* **Mutual kNN alignment** (Huh et al., "The Platonic Representation
  Hypothesis", 2024): for paired embeddings ``A_i, B_i``, the overlap of the k
  nearest neighbours of ``A_i`` among ``A`` and of ``B_i`` among ``B`` (cosine,
  the point itself excluded), divided by k and averaged over i.
"""

from __future__ import annotations

import numpy as np

# Shared with the trainer's validation signal, so it lives below both (training and evaluation are peers).
from graft.embedding_metrics import mutual_knn_alignment  # noqa: F401 - re-exported for evaluation callers


def _as_2d_float(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {arr.shape}")
    return arr


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true label is among the ``k`` highest scores.

    Args:
        scores: (N, C) class scores (higher is better).
        labels: (N,) integer class indices in ``[0, C)``.
        ks: the k values; each is clamped to C.

    Returns:
        ``{k: accuracy}`` for every requested k (keys as requested, before clamping).
    """
    scores = _as_2d_float(scores, "scores")
    labels = np.asarray(labels, dtype=np.int64)
    n, c = scores.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    # Rank of the true class = number of classes scoring strictly higher; ties count in the sample's favour,
    # as torch.topk would return either tied class.
    true_scores = scores[np.arange(n), labels]
    rank = (scores > true_scores[:, None]).sum(axis=1)
    return {k: float((rank < min(k, c)).mean()) for k in ks}


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class, (C,); NaN for classes that do not occur in ``labels``."""
    pred = np.asarray(pred, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = float((pred[mask] == c).mean())
    return out


def mean_per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of their recall."""
    acc = per_class_accuracy(pred, labels, num_classes)
    if np.all(np.isnan(acc)):
        raise ValueError("mean_per_class_accuracy: labels are empty")
    return float(np.nanmean(acc))


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of one ranking (tie-aware, equal to sklearn's ``average_precision_score``).

    Args:
        scores: (N,) scores, higher means more likely relevant.
        relevant: (N,) booleans.

    Returns:
        AP in [0, 1], or NaN if nothing is relevant.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    relevant = np.asarray(relevant).astype(bool).ravel()
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must have the same length")
    n_pos = int(relevant.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, r = scores[order], relevant[order]
    tp = np.cumsum(r)
    # Only the last position of each run of tied scores is a threshold.
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp_t = tp[last_of_tie]
    k_t = (np.nonzero(last_of_tie)[0] + 1).astype(np.float64)
    precision = tp_t / k_t
    recall = tp_t / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def multilabel_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-class AP and their mean over classes with at least one positive.

    Args:
        scores: (N, C) scores.
        targets: (N, C) 0/1 (or boolean) label matrix.

    Returns:
        ``(mAP, per_class_ap)``; ``per_class_ap[c]`` is NaN for a class with no positive.
    """
    scores = _as_2d_float(scores, "scores")
    targets = np.asarray(targets).astype(bool)
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} must match scores {scores.shape}")
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    if np.all(np.isnan(ap)):
        raise ValueError("multilabel_average_precision: no class has a positive sample")
    return float(np.nanmean(ap)), ap


def ranked_average_precision(ranked_relevant: np.ndarray, n_relevant: int) -> float:
    """AP of one ranked list, dividing by all ``n_relevant`` items (unretrieved ones count as misses)."""
    r = np.asarray(ranked_relevant).astype(bool).ravel()
    if n_relevant <= 0:
        return float("nan")
    if r.sum() > n_relevant:
        raise ValueError(f"ranked list holds {int(r.sum())} relevant items but n_relevant={n_relevant}")
    hits = np.cumsum(r)
    ranks = np.arange(1, r.size + 1)
    return float(np.sum((hits / ranks)[r]) / n_relevant)


def retrieval_metrics(
    ranked_relevant: np.ndarray,
    n_relevant: np.ndarray,
    recall_ks: tuple[int, ...] = (1, 5, 10),
    precision_ks: tuple[int, ...] = (10,),
) -> dict[str, float]:
    """Text->image retrieval metrics from ranked lists with labelled relevance.

    Args:
        ranked_relevant: (Q, K) booleans; ``[q, j]`` says whether the j-th item retrieved for
            query q is relevant. Unfilled positions (e.g. faiss's -1) must be False.
        n_relevant: (Q,) number of relevant items in the whole collection for each query.
            Queries with none are left out of every mean.
        recall_ks: k values for ``r@k`` (hit rate: at least one relevant item in the top k).
        precision_ks: k values for ``p@k`` (mean fraction of relevant items in the top k).

    Returns:
        ``{"map": ..., "r@1": ..., "p@10": ...}``. A k larger than K is evaluated on the K returned items.
    """
    rr = np.asarray(ranked_relevant).astype(bool)
    if rr.ndim != 2:
        raise ValueError(f"ranked_relevant must be (Q, K), got shape {rr.shape}")
    n_rel = np.asarray(n_relevant, dtype=np.int64)
    if n_rel.shape != (rr.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rr.shape[0]},), got {n_rel.shape}")
    keep = n_rel > 0
    if not keep.any():
        raise ValueError("retrieval_metrics: no query has a relevant item")
    rr, n_rel = rr[keep], n_rel[keep]
    out = {"map": float(np.mean([ranked_average_precision(rr[q], n_rel[q]) for q in range(rr.shape[0])]))}
    for k in recall_ks:
        out[f"r@{k}"] = float(rr[:, :k].any(axis=1).mean())
    for k in precision_ks:
        out[f"p@{k}"] = float((rr[:, :k].sum(axis=1) / k).mean())
    return out


def confusion_matrix(
    labels: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction.

    Pixels (or samples) whose label equals ``ignore_index`` are left out. Any other label or
    prediction outside ``[0, C)`` is an error, not silently dropped.
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if labels.shape != pred.shape:
        raise ValueError(f"labels {labels.shape} and pred {pred.shape} must have the same size")
    if ignore_index is not None:
        keep = labels != ignore_index
        labels, pred = labels[keep], pred[keep]
    for name, arr in (("labels", labels), ("pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes}): range [{arr.min()}, {arr.max()}]")
    return np.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class from a confusion matrix; NaN where the class is in neither GT nor predictions."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def segmentation_metrics(conf: np.ndarray) -> dict[str, float | np.ndarray]:
    """``{"miou", "pixel_acc", "iou_per_class"}`` from a confusion matrix accumulated over a whole set."""
    conf = np.asarray(conf)
    total = conf.sum()
    if total == 0:
        raise ValueError("segmentation_metrics: the confusion matrix is empty (every pixel ignored?)")
    iou = iou_per_class(conf)
    return {"miou": float(np.nanmean(iou)), "pixel_acc": float(np.trace(conf) / total), "iou_per_class": iou}
