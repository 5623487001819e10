"""Benchmark sets: the published folder layouts, read from a local root.

Nothing is ever downloaded: a missing dataset raises :class:`DatasetNotFoundError`
saying where the data comes from and where to put it. Readers never skip bad
input silently: an unreadable image, an unknown label or a malformed mask goes
into the set's :class:`~graft.rejections.Rejections` ledger with a short
stable reason key.

Layouts:

* **ImageFolder** (EuroSAT, UC Merced, RESISC45, AID, ``imagefolder``):
  ``root/<class>/*.jpg|jpeg|png|tif|tiff|bmp``. The class folders may sit one
  level down in the folder the official archive unpacks to (``EuroSAT_RGB/``,
  ``2750/``, ``UCMerced_LandUse/Images/``, ``NWPU-RESISC45/``, ``AID/``), so
  ``root`` may be either. Optional ``classnames.txt`` (one prompt name a
  line, in sorted class-folder order) and ``templates.txt`` (one prompt a
  line, with ``{}`` for the class name), in ``root`` or beside the class
  folders.
* **Multi-label CSV** (``csv_multilabel``, ``bigearthnet``): ``root/labels.csv``
  (or ``root`` is the CSV itself) with a header and columns ``path,labels``
  and optionally ``split``. ``path`` is relative to the CSV's folder;
  ``labels`` holds label names separated by ``;`` or ``|`` (never a comma,
  which would need quoting). The label vocabulary is ``classes.txt`` (one a
  line, fixing the order) if present, else the sorted set of labels seen.
* **Segmentation** (``segmentation``): ``root/images/<stem>.png|jpg|tif`` and
  ``root/masks/<stem>.png`` with the same stems, and ``root/classes.txt``
  (class ``i`` on line ``i``). A mask is a single-channel image whose values
  are class indices; 255 means "ignore".
* **GRAFT dataset** (``graft_pairs``, for the alignment task): a folder written
  by ``graft build`` and ``graft embed`` (docs/formats.md), read through
  :mod:`graft.dataset`; the tiles of one split, each paired with the mean of
  its cached ground-photo embeddings.

Multi-band GeoTIFFs go through :func:`graft.imagery.tile_to_rgb8` (uint16 is
taken as Sentinel-2 reflectance x 1e4); ``rgb_bands`` picks which bands are
red, green and blue (1-based, e.g. ``[4, 3, 2]`` for EuroSAT's 13-band tifs).

The package: :mod:`~graft.evaluation.datasets.base` (the :class:`EvalSet` base
class with ``subset()``, errors, the catalogue of known benchmarks, reading
RGB), one module per layout (``imagefolder``, ``multilabel``, ``segmentation``,
``pairs``), ``prompts`` (class names and templates), ``loaders`` (torch
adaptors) and ``registry`` (:func:`load_benchmark` by type name).
"""

from graft.evaluation.datasets.base import (
    BENCHMARKS,
    IGNORE_INDEX,
    IMAGE_EXTS,
    BenchmarkInfo,
    DatasetNotFoundError,
    EvalSet,
    ImageReadError,
    read_rgb,
)
from graft.evaluation.datasets.imagefolder import ClassificationSet, find_class_root, load_imagefolder
from graft.evaluation.datasets.loaders import (
    BandTensorDataset,
    Batch,
    ImageTensorDataset,
    LabelledTensorDataset,
    SegmentationTensorDataset,
    collate_images,
)
from graft.evaluation.datasets.multilabel import load_csv_multilabel
from graft.evaluation.datasets.pairs import PairSet, load_graft_pairs
from graft.evaluation.datasets.prompts import prettify_classname, read_class_list, read_lines
from graft.evaluation.datasets.registry import (
    ALL_KINDS,
    CLASSIFICATION_KINDS,
    MULTILABEL_KINDS,
    load_benchmark,
)
from graft.evaluation.datasets.segmentation import SegmentationSet, load_segmentation

__all__ = [
    "ALL_KINDS", "BENCHMARKS", "BandTensorDataset", "CLASSIFICATION_KINDS", "IGNORE_INDEX", "IMAGE_EXTS", "MULTILABEL_KINDS",
    "Batch", "BenchmarkInfo", "ClassificationSet", "DatasetNotFoundError", "EvalSet", "ImageReadError",
    "ImageTensorDataset", "LabelledTensorDataset", "PairSet", "SegmentationSet", "SegmentationTensorDataset",
    "collate_images", "find_class_root", "load_benchmark", "load_csv_multilabel", "load_graft_pairs",
    "load_imagefolder", "load_segmentation", "prettify_classname", "read_class_list", "read_lines", "read_rgb",
]
