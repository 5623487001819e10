"""Zero-shot semantic segmentation with a patch-level encoder.

Each image is resized (not cropped, so the mask stays aligned) to the model's
input size and normalised with its CLIP mean/std. Every patch embedding is
scored against the class prompts; the (C, g, g) score map is upsampled
bilinearly to the image's own size and the argmax is the predicted mask. One
confusion matrix is accumulated over the whole set (see
:mod:`graft.evaluation.metrics` for the mIoU convention).

Optional SAM refinement (the ``sam`` extra, as in GRAFT): for every class
present in the coarse mask, the centre of its highest-scoring patch is a
positive point prompt to Segment Anything; the mask SAM rates best replaces
the coarse labels inside it, classes applied from the least to the most
confident prompt so the most confident one wins where masks overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from graft.evaluation import metrics
from graft.evaluation.datasets import SegmentationSet, SegmentationTensorDataset, collate_images


def segmentation_transform(preprocess_cfg: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to the model's square input (no crop) and apply its CLIP normalisation."""
    from torchvision import transforms as T

    size = int(preprocess_cfg["size"])
    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST}
    interp = str(preprocess_cfg.get("interpolation", "bicubic"))
    if interp not in modes:
        raise ValueError(f"preprocess interpolation {interp!r} not supported; expected one of {sorted(modes)}")
    return T.Compose([
        T.Resize((size, size), interpolation=modes[interp]),
        T.ToTensor(),
        T.Normalize(mean=list(preprocess_cfg["mean"]), std=list(preprocess_cfg["std"])),
    ])


@torch.no_grad()
def patch_scores(patch_encoder: Any, images: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """(B, C, g, g) cosine similarity of every patch with every class weight.

    ``patch_encoder(images)`` must return normalised (B, P, D) patch embeddings, patches row-major
    on a ``grid_size x grid_size`` grid (:class:`graft.models.satellite.PixelLevelEncoder`).
    """
    feats = patch_encoder(images)
    b, p, _ = feats.shape
    g = int(patch_encoder.grid_size)
    if p != g * g:
        raise ValueError(f"patch encoder returned {p} patches, expected grid_size^2 = {g * g}")
    w = class_weights.to(feats.device, feats.dtype)
    return torch.einsum("bpd,cd->bcp", feats, w).reshape(b, w.shape[0], g, g)


def scores_to_mask(scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Upsample a (C, g, g) score map bilinearly to ``size`` = (H, W) and take the argmax: (H, W) int64."""
    up = F.interpolate(scores[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return up.argmax(dim=0).cpu().numpy().astype(np.int64)


class SamRefiner:
    """Refines coarse masks with Segment Anything point prompts (needs the ``sam`` extra and a local checkpoint).

    Args:
        checkpoint: path of a SAM checkpoint (e.g. ``sam_vit_h_4b8939.pth``); never downloaded.
        model_type: a key of ``segment_anything.sam_model_registry`` (``vit_h``, ``vit_l`` or ``vit_b``),
            matching the checkpoint. A builder registered there under a new key works too.

    :meth:`from_model` wraps an already-built ``segment_anything.Sam`` instead (any size).
    """

    def __init__(self, checkpoint: str | Path, model_type: str = "vit_h", device: str = "cpu"):
        sam_model_registry = _segment_anything().sam_model_registry
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"segmentation.sam_checkpoint {checkpoint} does not exist; download a SAM "
                                    "checkpoint from the segment-anything README and give its local path")
        if model_type not in sam_model_registry:
            raise ValueError(f"segmentation.sam_model_type {model_type!r} not in {sorted(sam_model_registry)}")
        self._wrap(sam_model_registry[model_type](checkpoint=str(checkpoint)), device)

    @classmethod
    def from_model(cls, sam: Any, device: str = "cpu") -> SamRefiner:
        """A refiner around a built ``segment_anything.Sam`` (e.g. a fine-tuned or a small one)."""
        refiner = cls.__new__(cls)
        refiner._wrap(sam, device)
        return refiner

    def _wrap(self, sam: Any, device: str) -> None:
        sam.to(device)
        sam.eval()
        self.predictor = _segment_anything().SamPredictor(sam)

    def refine(self, rgb: np.ndarray, scores: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """Refined (H, W) mask from the image, its (C, g, g) patch scores and the coarse (H, W) mask."""
        h, w = coarse.shape
        c, g, _ = scores.shape
        if rgb.shape[:2] != (h, w):  # the point prompts are placed in mask pixels; SAM reads them in image pixels
            raise ValueError(f"image {rgb.shape[:2]} and coarse mask {(h, w)} differ in size")
        present = [k for k in range(c) if (coarse == k).any()]
        if not present:
            return coarse
        self.predictor.set_image(np.ascontiguousarray(rgb))
        prompts = []
        for k in present:
            flat = int(np.argmax(scores[k]))
            i, j = divmod(flat, g)
            point = np.array([[(j + 0.5) * w / g, (i + 0.5) * h / g]], dtype=np.float32)  # SAM wants (x, y)
            prompts.append((float(scores[k].flat[flat]), k, point))
        refined = coarse.copy()
        for _, k, point in sorted(prompts, key=lambda t: t[0]):
            masks, quality, _ = self.predictor.predict(point_coords=point, point_labels=np.array([1]),
                                                       multimask_output=True)
            refined[masks[int(np.argmax(quality))]] = k
        return refined


def _segment_anything():
    try:
        import segment_anything
    except ImportError as e:
        raise ImportError("SAM refinement needs the 'sam' extra: pip install 'graft[sam]' "
                          "(segment-anything), or drop segmentation.sam_checkpoint") from e
    return segment_anything


@dataclass
class SegmentationResult:
    """Whole-set metrics, the confusion matrix and a few predictions kept for overlays."""

    metrics: dict[str, float]
    confusion: np.ndarray
    iou_per_class: np.ndarray
    examples: dict[int, np.ndarray] = field(default_factory=dict)
    failures: list[tuple[int, str, str]] = field(default_factory=list)


@torch.no_grad()
def evaluate_segmentation(
    patch_encoder: Any,
    dataset: SegmentationSet,
    class_weights: torch.Tensor,
    preprocess_cfg: dict[str, Any],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    workers: int = 0,
    refiner: SamRefiner | None = None,
    keep_examples: int = 4,
    desc: str | None = None,
) -> SegmentationResult:
    """Segment every image of ``dataset`` and accumulate one confusion matrix.

    Args:
        patch_encoder: (B, 3, S, S) -> normalised (B, P, D); has ``grid_size``.
        class_weights: (C, D) zero-shot class weights, in ``dataset.classes`` order.
        preprocess_cfg: the model's ``size``/``mean``/``std``/``interpolation``.
        refiner: optional :class:`SamRefiner`.
        keep_examples: predictions of the first this-many images are returned for overlays.
    """
    from torch.utils.data import DataLoader

    c = dataset.num_classes
    if class_weights.shape[0] != c:
        raise ValueError(f"{class_weights.shape[0]} class weights for {c} classes")
    loader = DataLoader(SegmentationTensorDataset(dataset, segmentation_transform(preprocess_cfg)),
                        batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_images)
    conf = np.zeros((c, c), dtype=np.int64)
    examples: dict[int, np.ndarray] = {}
    failures: list[tuple[int, str, str]] = []
    for batch in tqdm(loader, desc=desc or f"segment {dataset.name}", leave=False, unit="batch"):
        failures.extend(batch.failures)
        if batch.images is None:
            continue
        scores = patch_scores(patch_encoder, batch.images.to(device), class_weights).cpu()
        for b, idx in enumerate(batch.index):
            gt = batch.masks[b]
            pred = scores_to_mask(scores[b], gt.shape)
            if refiner is not None:
                pred = refiner.refine(dataset.read_rgb(int(idx)), scores[b].numpy(), pred)
            conf += metrics.confusion_matrix(gt, pred, c, ignore_index=dataset.ignore_index)
            if len(examples) < keep_examples:
                examples[int(idx)] = pred
    if conf.sum() == 0:
        raise RuntimeError(f"{dataset.name}: no pixel was evaluated ({len(failures)} failures, e.g. {failures[:1]})")
    m = metrics.segmentation_metrics(conf)
    return SegmentationResult(metrics={"miou": m["miou"], "pixel_acc": m["pixel_acc"]}, confusion=conf,
                              iou_per_class=m["iou_per_class"], examples=examples, failures=failures)
