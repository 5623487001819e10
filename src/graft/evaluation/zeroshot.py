"""Zero-shot classification through CLIP's text tower, plus the shared image-feature pass.

Class weights are the mean over templates of the normalised text embeddings of
``template.format(classname)``, renormalised; an image is scored by the cosine
similarity of its embedding with each class weight. Single-label sets report
top-1, top-5 and mean per-class accuracy; multi-label sets report mAP and the
AP of each class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from graft.evaluation import metrics
from graft.evaluation.datasets import BandTensorDataset, Batch, ImageTensorDataset, collate_images
from graft.evaluation.models import class_embeddings

# Two prompt sets, reported side by side: CLIP's plain ground-view prompt, and one that tells the
# text tower the image is seen from above.
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "ground": ["a photo of a {}."],
    "satellite": ["a satellite image of {}."],
}


@dataclass
class Features:
    """L2-normalised image embeddings of the images that decoded.

    Attributes:
        features: (N, D) float32.
        index: (N,) position of each row in the source set.
        targets: (N, ...) targets when the loader yields ``(images, targets)``, else None.
        failures: ``(index, reason, detail)`` of each image that could not be read.
    """

    features: np.ndarray
    index: np.ndarray
    targets: np.ndarray | None = None
    failures: list[tuple[int, str, str]] = field(default_factory=list)


def make_loader(source: Any, transform: Callable, batch_size: int = 64, workers: int = 0,
                band_input: Callable | None = None):
    """A DataLoader over any set with ``read_rgb(i)``; bad images come back as failures, not exceptions.

    With ``band_input`` (a multispectral model's ``tile_input``) the set's ``read_bands(i)`` feeds it instead.
    """
    from torch.utils.data import DataLoader

    dataset = BandTensorDataset(source, band_input) if band_input else ImageTensorDataset(source, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_images, persistent_workers=False)


@torch.no_grad()
def extract_image_features(model: Any, loader: Iterable, device: str | torch.device = "cpu",
                           desc: str | None = None) -> Features:
    """Run ``model.encode_image`` over a loader.

    The loader may yield graft :class:`~graft.evaluation.datasets.Batch` objects (from
    :func:`make_loader`) or plain ``(images, targets)`` tuples (any torchvision-style loader).
    """
    feats, index, targets, failures = [], [], [], []
    seen = 0
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, desc=desc or "image features", total=total, leave=False, unit="batch"):
        if isinstance(batch, Batch):
            failures.extend(batch.failures)
            if batch.images is None:
                continue
            images, idx = batch.images, batch.index
        else:
            images, tgt = batch[0], batch[1]
            idx = np.arange(seen, seen + len(images))
            targets.append(tgt.numpy() if isinstance(tgt, torch.Tensor) else np.asarray(tgt))
        seen += len(images)
        emb = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)
        feats.append(emb.cpu().numpy())
        index.append(idx)
    if not feats:
        raise RuntimeError(f"no image could be read ({len(failures)} failures, e.g. {failures[:1]})")
    return Features(features=np.concatenate(feats), index=np.concatenate(index),
                    targets=np.concatenate(targets) if targets else None, failures=failures)


@dataclass
class ZeroShotResult:
    """Metrics plus what the plots need.

    Attributes:
        metrics: ``top1``, ``top5``, ``mean_per_class`` (single-label) or ``map`` (multi-label).
        per_class: (C,) per-class accuracy (single-label) or AP (multi-label); NaN where undefined.
        scores: (N, C) cosine similarities.
        confusion: (C, C) confusion matrix (single-label only).
    """

    metrics: dict[str, float]
    per_class: np.ndarray
    scores: np.ndarray
    confusion: np.ndarray | None = None


def zeroshot_from_features(features: np.ndarray, class_weights: np.ndarray | torch.Tensor, targets: np.ndarray,
                           multilabel: bool = False) -> ZeroShotResult:
    """Classify precomputed normalised image features with zero-shot class weights (C, D)."""
    w = class_weights.cpu().numpy() if isinstance(class_weights, torch.Tensor) else np.asarray(class_weights)
    scores = np.asarray(features, dtype=np.float32) @ w.astype(np.float32).T
    num_classes = w.shape[0]
    if multilabel:
        mean_ap, ap = metrics.multilabel_average_precision(scores, targets)
        return ZeroShotResult(metrics={"map": mean_ap}, per_class=ap, scores=scores)
    targets = np.asarray(targets, dtype=np.int64)
    pred = scores.argmax(axis=1)
    top = metrics.topk_accuracy(scores, targets, ks=(1, 5))
    return ZeroShotResult(
        metrics={"top1": top[1], "top5": top[5],
                 "mean_per_class": metrics.mean_per_class_accuracy(pred, targets, num_classes)},
        per_class=metrics.per_class_accuracy(pred, targets, num_classes), scores=scores,
        confusion=metrics.confusion_matrix(targets, pred, num_classes),
    )


def evaluate_zeroshot(
    model: Any,
    dataloader: Iterable,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: list[str],
    templates: list[str],
    device: str | torch.device = "cpu",
    multilabel: bool = False,
) -> ZeroShotResult:
    """CLIP_benchmark-style zero-shot classification of one model on one loader.

    Args:
        model: exposes ``encode_image(images)`` and ``encode_text(tokens)`` (e.g. an open_clip CLIP).
        dataloader: yields ``(images, targets)``; targets are class indices, or (B, C) 0/1 for multi-label.
        tokenizer: turns a list of prompts into tokens for ``encode_text``.
        classnames: prompt name of each class, in target order.
        templates: prompts with ``{}`` where the class name goes.
        multilabel: score with mAP instead of accuracy.
    """
    weights = class_embeddings(model, tokenizer, classnames, templates, device)
    feats = extract_image_features(model, dataloader, device)
    if feats.targets is None:
        raise ValueError("evaluate_zeroshot needs a loader that yields (images, targets)")
    return zeroshot_from_features(feats.features, weights, feats.targets, multilabel)
