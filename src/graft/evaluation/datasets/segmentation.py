"""The segmentation layout: ``root/images/<stem>.*``, ``root/masks/<stem>.png`` and ``root/classes.txt``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from graft.evaluation.datasets.base import (
    IGNORE_INDEX,
    IMAGE_EXTS,
    EvalSet,
    ImageReadError,
    not_found,
    read_rgb,
)
from graft.evaluation.datasets.prompts import read_class_list, resolve_classnames, resolve_templates
from graft.rejections import Rejections


@dataclass
class SegmentationSet(EvalSet):
    """Image/mask pairs. ``read_mask`` returns (H, W) int64 class indices with ``IGNORE_INDEX`` for ignored pixels."""

    name: str
    root: Path
    images: list[Path]
    masks: list[Path]
    classes: list[str]
    classnames: list[str]
    templates: list[str] | None = None
    rgb_bands: tuple[int, ...] | None = None
    rejections: Rejections = field(default_factory=Rejections)
    ignore_index: int = IGNORE_INDEX

    kind = "segmentation"
    per_item: ClassVar[tuple[str, ...]] = ("images", "masks")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read_rgb(self, i: int) -> np.ndarray:
        return read_rgb(self.images[i], self.rgb_bands)

    def read_mask(self, i: int) -> np.ndarray:
        """Validated mask of pair ``i``. Raises ImageReadError (``bad_mask``) on a malformed mask."""
        path = self.masks[i]
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ImageReadError("bad_mask", f"{path}: mode {im.mode}; masks must be single-channel "
                                         "class indices (PNG mode L or P)")
                mask = np.asarray(im).astype(np.int64)
        except OSError as e:
            raise ImageReadError("unreadable_mask", f"{path}: {e}") from None
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise ImageReadError("bad_mask", f"{path}: values {np.unique(mask[bad])[:5].tolist()} are neither a class "
                                 f"index in [0, {self.num_classes}) nor {self.ignore_index} (ignore)")
        return mask


def load_segmentation(
    root: str | os.PathLike,
    name: str | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
) -> SegmentationSet:
    """Read ``root/images/*``, ``root/masks/*.png`` (same stems) and ``root/classes.txt``.

    An image without a mask (or a mask without an image) is rejected with a reason.

    Raises:
        DatasetNotFoundError: a folder or ``classes.txt`` is missing, or no pair matches.
    """
    root = Path(root)
    for need in ("images", "masks"):
        if not (root / need).is_dir():
            raise not_found("segmentation", root, f"the folder {need}/ does not exist")
    if not (root / "classes.txt").is_file():
        raise not_found("segmentation", root, "classes.txt does not exist")
    classes = read_class_list(root / "classes.txt")
    rejections = Rejections()
    masks = {}
    for f in sorted((root / "masks").iterdir()):
        if f.suffix.lower() == ".png":
            masks[f.stem] = f
        elif f.is_file():
            rejections.add("not_a_png_mask", str(f), "masks must be PNG (lossless)")
    images, mask_paths = [], []
    for f in sorted((root / "images").iterdir()):
        if not f.is_file():
            continue
        if f.suffix.lower() not in IMAGE_EXTS:
            rejections.add("not_an_image", str(f))
        elif f.stem not in masks:
            rejections.add("image_without_mask", str(f), f"expected masks/{f.stem}.png")
        else:
            images.append(f)
            mask_paths.append(masks.pop(f.stem))
    for stem, f in masks.items():
        rejections.add("mask_without_image", str(f), f"no images/{stem}.*")
    if not images:
        raise not_found("segmentation", root, "no image has a mask with the same stem")
    return SegmentationSet(
        name=name or "segmentation", root=root, images=images, masks=mask_paths, classes=classes,
        classnames=resolve_classnames(classes, classnames, [root], {}),
        templates=resolve_templates(templates, [root]),
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
    )
