"""Torch datasets over benchmark sets, and the collate function that keeps failures apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from graft.evaluation.datasets.base import EvalSet, ImageReadError
from graft.evaluation.datasets.imagefolder import ClassificationSet
from graft.evaluation.datasets.segmentation import SegmentationSet


class _TransformedSet:
    """A benchmark set seen through an image transform (the torch adaptors below add ``__getitem__``)."""

    def __init__(self, source: EvalSet, transform: Callable[[Image.Image], Any]):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)


class ImageTensorDataset(_TransformedSet):
    """Torch dataset over any set with ``read_rgb(i)``: yields ``(tensor, index, failure)``.

    A failing image yields ``(None, index, (reason, detail))`` instead of raising, so one bad file
    does not kill a DataLoader worker; :func:`collate_images` separates the failures.
    """

    def __getitem__(self, i: int):
        try:
            return self.transform(Image.fromarray(self.source.read_rgb(i))), i, None
        except ImageReadError as e:
            return None, i, (e.reason, e.detail)


class BandTensorDataset(_TransformedSet):
    """Torch dataset over any set with ``read_bands(i)``, for multispectral models: ``(tensor, index, failure)``.

    The transform is ``to_input(array, band_names)``, the model's input (a model's
    :meth:`~graft.evaluation.models.LoadedModel.tile_input`); an image lacking one of the model's
    bands is a ``missing_bands`` failure.
    """

    def __getitem__(self, i: int):
        from graft.imagery import BandError

        try:
            return self.transform(*self.source.read_bands(i)), i, None
        except ImageReadError as e:
            return None, i, (e.reason, e.detail)
        except BandError as e:
            return None, i, ("missing_bands", str(e))


class LabelledTensorDataset(_TransformedSet):
    """Torch dataset yielding ``(tensor, target)`` like torchvision's ImageFolder, for CLIP_benchmark-style
    loops (:func:`graft.evaluation.zeroshot.evaluate_zeroshot`). A bad image raises :class:`ImageReadError`."""

    source: ClassificationSet

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.source.read_rgb(i))), self.source.targets[i]


class SegmentationTensorDataset(_TransformedSet):
    """Yields ``(tensor, mask, index, failure)``; images are resized (not cropped) so the mask stays aligned."""

    source: SegmentationSet

    def __getitem__(self, i: int):
        try:
            rgb = self.source.read_rgb(i)
            mask = self.source.read_mask(i)
            if mask.shape != rgb.shape[:2]:
                raise ImageReadError("mask_size_mismatch",
                                     f"{self.source.masks[i]}: mask {mask.shape} vs image {rgb.shape[:2]}")
            return self.transform(Image.fromarray(rgb)), mask, i, None
        except ImageReadError as e:
            return None, None, i, (e.reason, e.detail)


@dataclass
class Batch:
    """A collated batch: stacked images of the good items, their indices, and the failures."""

    images: Any  # torch.Tensor (B, 3, H, W) or None if every item failed
    index: np.ndarray
    failures: list[tuple[int, str, str]]
    masks: list[np.ndarray] | None = None


def collate_images(items: list) -> Batch:
    import torch

    good = [it for it in items if it[-1] is None]
    failures = [(it[-2], *it[-1]) for it in items if it[-1] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    masks = [it[1] for it in good] if good and len(good[0]) == 4 else None
    return Batch(images=images, index=np.asarray([it[-2] for it in good], dtype=np.int64),
                 failures=failures, masks=masks)
