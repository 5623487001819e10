"""Probes on frozen image features: k-nearest-neighbour and linear (logistic regression).

Both return an (N_test, C) score matrix, scored like zero-shot classification
(top-1 / mean per-class accuracy, or mAP for multi-label sets). The kNN
classifier follows the usual self-supervised protocol: cosine similarity, k=20,
votes weighted by ``exp(sim / T)`` with T = 0.07 (Wu et al., 2018; DINO), or
plain majority. The linear probe is scikit-learn's ``LogisticRegression``
(one-vs-rest for multi-label); given several C values, it picks the best on a
seeded validation part of the training split, then refits on all of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graft.evaluation import metrics


def seeded_split(n: int, labels: np.ndarray | None, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices; stratified by ``labels`` when given and every class has at least two members."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"probes.test_fraction must be in (0, 1), got {test_fraction}")
    idx = np.arange(n)
    stratify = None
    if labels is not None and labels.ndim == 1:
        counts = np.bincount(labels)
        classes = int((counts > 0).sum())
        n_test = int(np.ceil(test_fraction * n))
        # sklearn can only stratify if every class has two members and both parts can hold every class.
        if counts[counts > 0].min() >= 2 and min(n_test, n - n_test) >= classes:
            stratify = labels
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 20,
               vote: str = "weighted", temperature: float = 0.07, chunk: int = 1024) -> np.ndarray:
    """(N_test, C) vote totals from the k nearest training features by cosine similarity.

    Args:
        train_y: (N_train,) class indices, or (N_train, C) 0/1 for multi-label (votes per label).
        vote: ``weighted`` (``exp(sim / temperature)``) or ``majority``.
    """
    if vote not in ("weighted", "majority"):
        raise ValueError(f"probes.knn_vote must be 'weighted' or 'majority', got {vote!r}")
    tx = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    qx = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    k = min(k, tx.shape[0])
    onehot = (train_y.astype(np.float32) if train_y.ndim == 2
              else np.eye(num_classes, dtype=np.float32)[train_y])
    out = np.zeros((qx.shape[0], num_classes), dtype=np.float64)
    for s in range(0, qx.shape[0], chunk):
        sims = qx[s:s + chunk] @ tx.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        nn_sims = np.take_along_axis(sims, nn, axis=1)
        w = np.exp(nn_sims / temperature) if vote == "weighted" else np.ones_like(nn_sims)
        out[s:s + chunk] = np.einsum("qk,qkc->qc", w, onehot[nn])
    return out


def _logreg(c: float, max_iter: int, seed: int, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    return OneVsRestClassifier(clf) if multilabel else clf


def _score(scores: np.ndarray, y: np.ndarray, multilabel: bool, num_classes: int) -> float:
    if multilabel:
        return metrics.multilabel_average_precision(scores, y)[0]
    return metrics.topk_accuracy(scores, y, ks=(1,))[1]


def _full_scores(clf, x: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """Decision scores with one column per class, even for classes missing from the training split."""
    raw = clf.decision_function(x)
    if raw.ndim == 1:  # binary problem: sklearn returns the positive-class margin only
        raw = np.stack([-raw, raw], axis=1)
    out = np.full((x.shape[0], num_classes), -np.inf)
    cols = np.arange(num_classes) if multilabel else clf.classes_
    out[:, cols] = raw
    return out


def linear_probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
                        c: float | Sequence[float] = 1.0, max_iter: int = 1000, seed: int = 0,
                        val_fraction: float = 0.2) -> tuple[np.ndarray, float]:
    """Fit logistic regression on frozen features; returns ``((N_test, C) scores, chosen C)``.

    Args:
        train_y: (N,) class indices, or (N, C) 0/1 (one-vs-rest).
        c: inverse regularisation strength, or several to choose from on a validation part of train.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    multilabel = train_y.ndim == 2
    cs = [float(c)] if isinstance(c, (int, float)) else [float(v) for v in c]
    if not cs:
        raise ValueError("probes.linear_c must hold at least one value")
    best_c = cs[0]
    with warnings.catch_warnings():
        # An unconverged probe is still a valid probe; max_iter is the documented knob.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(cs) > 1:
            fit_idx, val_idx = seeded_split(len(train_x), None if multilabel else train_y, val_fraction, seed)
            best = -np.inf
            for cv in cs:
                clf = _logreg(cv, max_iter, seed, multilabel).fit(train_x[fit_idx], train_y[fit_idx])
                s = _score(_full_scores(clf, train_x[val_idx], num_classes, multilabel), train_y[val_idx],
                           multilabel, num_classes)
                if s > best:
                    best, best_c = s, cv
        clf = _logreg(best_c, max_iter, seed, multilabel).fit(train_x, train_y)
    return _full_scores(clf, test_x, num_classes, multilabel), best_c


def probe_metrics(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> dict[str, float]:
    """``top1`` + ``mean_per_class`` for single-label targets, ``map`` for multi-label."""
    if targets.ndim == 2:
        return {"map": metrics.multilabel_average_precision(scores, targets)[0]}
    pred = scores.argmax(axis=1)
    return {"top1": metrics.topk_accuracy(scores, targets, ks=(1,))[1],
            "mean_per_class": metrics.mean_per_class_accuracy(pred, targets, num_classes)}
