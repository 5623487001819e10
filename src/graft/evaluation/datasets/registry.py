"""One entry point: load any supported benchmark by its type name."""

from __future__ import annotations

import os
from collections.abc import Sequence

from graft.evaluation.datasets.bigearthnet_s2 import load_bigearthnet_s2
from graft.evaluation.datasets.imagefolder import ClassificationSet, load_imagefolder
from graft.evaluation.datasets.multilabel import load_csv_multilabel
from graft.evaluation.datasets.pairs import PairSet, load_graft_pairs
from graft.evaluation.datasets.segmentation import SegmentationSet, load_segmentation

CLASSIFICATION_KINDS = ("eurosat", "eurosat_ms", "ucmerced", "resisc45", "aid", "imagefolder")
MULTILABEL_KINDS = ("csv_multilabel", "bigearthnet", "bigearthnet_s2")
ALL_KINDS = (*CLASSIFICATION_KINDS, *MULTILABEL_KINDS, "segmentation", "graft_pairs")


def load_benchmark(
    kind: str,
    root: str | os.PathLike,
    name: str | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
    split_files: dict[str, str] | None = None,
    csv_name: str = "labels.csv",
    pairs_split: str = "test",
    bands: Sequence[str] | None = None,
) -> ClassificationSet | SegmentationSet | PairSet:
    """Load any supported benchmark by its type name (see :data:`ALL_KINDS`).

    ``bands`` names the images' bands in file order (multi-band GeoTIFF sets; EuroSAT-MS and
    BigEarthNet-S2 know theirs), so every model reads the bands it was trained on.
    """
    if kind in CLASSIFICATION_KINDS:
        return load_imagefolder(root, name, kind, classnames, templates, rgb_bands, split_files, bands)
    if kind == "bigearthnet_s2":
        return load_bigearthnet_s2(root, name, classnames, templates, bands)
    if kind in MULTILABEL_KINDS:
        return load_csv_multilabel(root, name, kind, csv_name, classnames, templates, rgb_bands, bands)
    if kind == "segmentation":
        return load_segmentation(root, name, classnames, templates, rgb_bands)
    if kind == "graft_pairs":
        return load_graft_pairs(root, name, pairs_split, rgb_bands)
    raise ValueError(f"unknown benchmark type {kind!r}; expected one of {ALL_KINDS}")
