"""The ImageFolder layout (EuroSAT, UC Merced, RESISC45, AID, ``imagefolder``): ``root/<class>/*.jpg|png|tif``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from graft.evaluation.datasets.base import (
    BENCHMARKS,
    IMAGE_EXTS,
    EvalSet,
    not_found,
    read_image_bands,
    read_rgb,
)
from graft.evaluation.datasets.prompts import read_lines, resolve_classnames, resolve_templates
from graft.rejections import Rejections

# EuroSAT_MS.zip's 13-band GeoTIFFs, in file order (TorchGeo's order: B08A after B08).
EUROSAT_MS_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B08A", "B09", "B10", "B11", "B12")


@dataclass
class ClassificationSet(EvalSet):
    """A labelled image set, single- or multi-label.

    Attributes:
        targets: (N,) int64 class indices, or (N, C) bool for multi-label sets.
        classes: label identifiers (class folders, CSV labels).
        classnames: the names used in prompts, aligned with ``classes``.
        templates: prompt templates from ``templates.txt``, or None for the defaults.
        splits: (N,) split name of each image from the benchmark's own split files/column, or None.
        bands: names of the images' bands in file order (multi-band TIFFs), or None.
    """

    name: str
    kind: str
    root: Path
    paths: list[Path]
    targets: np.ndarray
    classes: list[str]
    classnames: list[str]
    templates: list[str] | None = None
    multilabel: bool = False
    splits: np.ndarray | None = None
    rgb_bands: tuple[int, ...] | None = None
    rejections: Rejections = field(default_factory=Rejections)
    bands: tuple[str, ...] | None = None

    per_item: ClassVar[tuple[str, ...]] = ("paths", "targets", "splits")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read_rgb(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i], self.rgb_bands, self.bands)

    def read_bands(self, i: int) -> tuple[np.ndarray, list[str]]:
        return read_image_bands(self.paths[i], self.bands)

    def relevance(self) -> np.ndarray:
        """(N, C) bool: image n carries class c."""
        if self.multilabel:
            return self.targets.astype(bool)
        return self.targets[:, None] == np.arange(self.num_classes)[None, :]


def _has_class_folders(d: Path) -> bool:
    if not d.is_dir():
        return False
    for sub in d.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in sub.iterdir() if f.is_file()):
            return True
    return False


def find_class_root(root: Path, kind: str) -> Path:
    """The folder holding the class folders: ``root`` itself or the known folder an archive unpacks to."""
    if not root.exists():
        raise not_found(kind, root, "the root folder does not exist")
    if _has_class_folders(root):
        return root
    for sub in BENCHMARKS[kind].subdirs:
        if _has_class_folders(root / sub):
            return root / sub
    looked = [str(root)] + [str(root / s) for s in BENCHMARKS[kind].subdirs]
    raise not_found(kind, root, f"no class folders with images (looked in {looked})")



def _apply_split_files(paths: list[Path], base: Path, split_files: dict[str, str] | None,
                       rejections: Rejections) -> np.ndarray | None:
    """Split name per image from files listing image paths (relative to ``base``) or file stems."""
    if not split_files:
        return None
    rel = {p.relative_to(base).as_posix(): i for i, p in enumerate(paths)}
    stems: dict[str, int] = {}
    dup = set()
    for i, p in enumerate(paths):
        if p.stem in stems:
            dup.add(p.stem)
        stems[p.stem] = i
    splits = np.full(len(paths), "", dtype=object)
    for split, file in split_files.items():
        f = Path(file)
        if not f.is_absolute() and not f.is_file():
            f = base / f
        if not f.is_file():
            raise FileNotFoundError(f"split file for {split!r} not found: {file} (relative paths are tried "
                                    f"from the working directory, then from {base})")
        for entry in read_lines(f):
            i = rel.get(entry.replace("\\", "/"))
            if i is None and Path(entry).stem not in dup:
                # TorchGeo's EuroSAT lists name the .tif files; match the RGB .jpg by stem.
                i = stems.get(Path(entry).stem)
            if i is None:
                rejections.add("split_entry_not_found", entry, f"listed in {f}")
            else:
                splits[i] = split
    return splits.astype(str)


def load_imagefolder(
    root: str | os.PathLike,
    name: str | None = None,
    kind: str = "imagefolder",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
    split_files: dict[str, str] | None = None,
    bands: Sequence[str] | None = None,
) -> ClassificationSet:
    """Read an ImageFolder-layout benchmark (EuroSAT, UC Merced, RESISC45, AID or any ``root/<class>/*``).

    Args:
        root: the dataset folder (or the folder its archive unpacks into).
        name: name used in reports; defaults to ``kind``.
        kind: ``eurosat``, ``ucmerced``, ``resisc45``, ``aid`` or ``imagefolder`` (sets the subfolders looked
            for, the built-in prompt names and the download hint).
        classnames: prompt names in sorted class-folder order; overrides ``classnames.txt``.
        templates: prompt templates; overrides ``templates.txt``.
        rgb_bands: 1-based bands of multi-band TIFFs to use as R, G, B.
        split_files: ``{split: file}``; each file lists image paths relative to the class root, or stems.
        bands: names of multi-band TIFFs' bands in file order (default for ``eurosat_ms``:
            :data:`EUROSAT_MS_BANDS`); multispectral models read theirs by name, RGB models R, G, B.

    Raises:
        DatasetNotFoundError: no class folders with images under ``root``.
    """
    root = Path(root)
    class_root = find_class_root(root, kind)
    rejections = Rejections()
    classes = []
    for d in sorted(class_root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir() if f.is_file()):
            classes.append(d.name)
        else:
            # e.g. __MACOSX/ from a zip made on a Mac: not a class, but not silently ignored either.
            rejections.add("folder_without_images", str(d), "not used as a class")
    paths: list[Path] = []
    labels: list[int] = []
    for ci, c in enumerate(classes):
        for f in sorted((class_root / c).iterdir()):
            if f.is_dir():
                rejections.add("nested_folder_ignored", str(f), "class folders must hold images directly")
            elif f.suffix.lower() in IMAGE_EXTS:
                paths.append(f)
                labels.append(ci)
            else:
                rejections.add("not_an_image", str(f), f"extension {f.suffix!r} not in {IMAGE_EXTS}")
    for f in class_root.iterdir():
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            rejections.add("image_outside_class_folder", str(f))
    search = [root, class_root] if class_root != root else [root]
    return ClassificationSet(
        name=name or kind, kind=kind, root=class_root, paths=paths, targets=np.asarray(labels, dtype=np.int64),
        classes=classes,
        classnames=resolve_classnames(classes, classnames, search, BENCHMARKS[kind].classnames),
        templates=resolve_templates(templates, search),
        splits=_apply_split_files(paths, class_root, split_files, rejections),
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
        bands=tuple(bands) if bands else (EUROSAT_MS_BANDS if kind == "eurosat_ms" else None),
    )
