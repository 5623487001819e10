"""Benchmark loaders: the published folder layouts, read from a local root.

Nothing is ever downloaded: a missing dataset raises :class:`DatasetNotFoundError`
saying where the data comes from and where to put it. Readers never skip bad
input silently: an unreadable image, an unknown label or a malformed mask goes
into the set's :class:`~graft.sources.base.Rejections` ledger with a short
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
  by ``graft build`` and ``graft embed`` (docs/formats.md); the tiles of one
  split, each paired with the mean of its cached ground-photo embeddings.

Multi-band GeoTIFFs go through :func:`graft.imagery.tile_to_rgb8` (uint16 is
taken as Sentinel-2 reflectance x 1e4); ``rgb_bands`` picks which bands are
red, green and blue (1-based, e.g. ``[4, 3, 2]`` for EuroSAT's 13-band tifs).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graft.errors import GraftError
from graft.imagery import decode_geotiff, tile_to_rgb8
from graft.sources.base import Rejections

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
TIFF_EXTS = (".tif", ".tiff")
IGNORE_INDEX = 255


class DatasetNotFoundError(GraftError, FileNotFoundError):
    """A benchmark is not where the config says. The message says where to get it and how to lay it out."""


class ImageReadError(Exception):
    """One image could not be turned into RGB; ``reason`` is a short stable key for the rejection ledger."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BenchmarkInfo:
    """What graft knows about a published benchmark: where to get it and how it unpacks."""

    title: str
    url: str
    layout: str
    subdirs: tuple[str, ...] = ()
    classnames: dict[str, str] = field(default_factory=dict)


# Prompt names for folder names that are not readable words. EuroSAT's follow the CLIP paper's
# wording of its classes; UC Merced's folders run words together.
_EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "herbaceous vegetation land",
    "Highway": "highway or road", "Industrial": "industrial buildings", "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land", "Residential": "residential buildings", "River": "river",
    "SeaLake": "sea or lake",
}
_UCMERCED_NAMES = {
    "agricultural": "agricultural land", "baseballdiamond": "baseball diamond", "denseresidential":
    "dense residential area", "golfcourse": "golf course", "mediumresidential": "medium residential area",
    "mobilehomepark": "mobile home park", "parkinglot": "parking lot", "sparseresidential":
    "sparse residential area", "storagetanks": "storage tanks", "tenniscourt": "tennis court",
}

BENCHMARKS: dict[str, BenchmarkInfo] = {
    "eurosat": BenchmarkInfo(
        "EuroSAT (Sentinel-2, 10 classes)", "https://github.com/phelber/EuroSAT (EuroSAT_RGB.zip or EuroSAT_MS.zip)",
        "ROOT/<Class>/<Class>_<n>.jpg (RGB) or .tif (13-band; set rgb_bands: [4, 3, 2])",
        ("EuroSAT_RGB", "2750", "EuroSAT_MS", "EuroSAT", "EuroSATallBands", "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"),
        _EUROSAT_NAMES),
    "ucmerced": BenchmarkInfo(
        "UC Merced Land Use (21 classes)", "http://weegee.vision.ucmerced.edu/datasets/landuse.html",
        "ROOT/<class>/<class>NN.tif (the archive unpacks to UCMerced_LandUse/Images/)",
        ("Images", "UCMerced_LandUse/Images"), _UCMERCED_NAMES),
    "resisc45": BenchmarkInfo(
        "NWPU-RESISC45 (45 classes)", "https://gcheng-nwpu.github.io/#Datasets (Cheng et al., 2017)",
        "ROOT/<class>/<class>_NNN.jpg (the archive unpacks to NWPU-RESISC45/)", ("NWPU-RESISC45",)),
    "aid": BenchmarkInfo(
        "AID, Aerial Image Dataset (30 classes)", "https://captain-whu.github.io/AID/",
        "ROOT/<Class>/<class>_N.jpg (the archive unpacks to AID/)", ("AID",)),
    "imagefolder": BenchmarkInfo("an ImageFolder set", "(your own data)", "ROOT/<class>/*.jpg|png|tif"),
    "csv_multilabel": BenchmarkInfo(
        "a multi-label CSV set", "(your own data)",
        "ROOT/labels.csv with header 'path,labels[,split]', labels separated by ';' or '|'"),
    "bigearthnet": BenchmarkInfo(
        "BigEarthNet (multi-label, Sentinel-2)", "https://bigearth.net/",
        "ROOT/labels.csv with header 'path,labels[,split]' pointing at 3-band RGB images (e.g. B04,B03,B02 "
        "GeoTIFFs); the official per-band patch folders must be converted first (see eval/README.md)"),
    "segmentation": BenchmarkInfo(
        "a segmentation set", "(your own data)",
        "ROOT/images/<stem>.png|jpg|tif, ROOT/masks/<stem>.png (class index per pixel, 255 = ignore), "
        "ROOT/classes.txt"),
    "graft_pairs": BenchmarkInfo(
        "a GRAFT dataset folder", "'graft build' then 'graft embed'",
        "ROOT/tiles/*.tar with cached ground embeddings (docs/formats.md)"),
}


def _not_found(kind: str, root: Path, what: str) -> DatasetNotFoundError:
    info = BENCHMARKS[kind]
    return DatasetNotFoundError(
        f"{info.title}: {what} under {root}. Get it from {info.url} and unpack it so that the layout is "
        f"{info.layout}; then point the benchmark's 'root' there. Nothing is downloaded automatically."
    )


def prettify_classname(folder: str) -> str:
    """``AnnualCrop`` -> ``annual crop``, ``baseball_diamond`` -> ``baseball diamond``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", folder)
    return re.sub(r"[_\-]+", " ", s).strip().lower()


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, stripped."""
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_class_list(path: Path) -> list[str]:
    """A ``classes.txt``: one class a line. A class listed twice is an error: its index would be ambiguous."""
    names = read_lines(path)
    first: dict[str, int] = {}
    dups = []
    for i, n in enumerate(names, start=1):
        if n in first:
            dups.append(f"{n!r} (entries {first[n]} and {i})")
        else:
            first[n] = i
    if dups:
        raise ValueError(f"{path}: duplicate class(es) {', '.join(dups[:5])}; list every class exactly once")
    return names


def _read_templates(path: Path) -> list[str]:
    lines = read_lines(path)
    bad = [t for t in lines if "{}" not in t]
    if bad or not lines:
        raise ValueError(f"{path}: every template needs '{{}}' where the class name goes; bad lines: {bad[:3]}")
    return lines


def read_rgb(path: str | os.PathLike, rgb_bands: Sequence[int] | None = None) -> np.ndarray:
    """Any benchmark image -> (H, W, 3) uint8 RGB.

    TIFFs are read with rasterio so multi-band and 16-bit GeoTIFFs work; they go through
    :func:`graft.imagery.tile_to_rgb8`. Other formats are read with PIL.

    Raises:
        ImageReadError: with reason ``unreadable_image`` or ``unsupported_image``.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_EXTS:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                # Plain TIFFs (UC Merced) carry no CRS; that is fine for classification.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    count = src.count
                    if rgb_bands:
                        if max(rgb_bands) > count:
                            raise ImageReadError("unsupported_image",
                                                 f"{path}: rgb_bands {list(rgb_bands)} but the file has {count} bands")
                        arr = src.read(indexes=list(rgb_bands))
                    elif count >= 3:
                        arr = src.read(indexes=[1, 2, 3])
                    elif count == 1:
                        arr = np.repeat(src.read(indexes=[1]), 3, axis=0)
                    else:
                        raise ImageReadError("unsupported_image", f"{path}: {count} bands; set rgb_bands")
        except RasterioIOError as e:
            raise ImageReadError("unreadable_image", f"{path}: {e}") from None
        try:
            return tile_to_rgb8(arr)
        except ValueError as e:
            raise ImageReadError("unsupported_image", f"{path}: {e}") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError("unreadable_image", f"{path}: {e}") from None


# --------------------------------------------------------------------------- classification sets


@dataclass
class ClassificationSet:
    """A labelled image set, single- or multi-label.

    Attributes:
        targets: (N,) int64 class indices, or (N, C) bool for multi-label sets.
        classes: label identifiers (class folders, CSV labels).
        classnames: the names used in prompts, aligned with ``classes``.
        templates: prompt templates from ``templates.txt``, or None for the defaults.
        splits: (N,) split name of each image from the benchmark's own split files/column, or None.
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

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def read_rgb(self, i: int) -> np.ndarray:
        return read_rgb(self.paths[i], self.rgb_bands)

    def relevance(self) -> np.ndarray:
        """(N, C) bool: image n carries class c."""
        if self.multilabel:
            return self.targets.astype(bool)
        return self.targets[:, None] == np.arange(self.num_classes)[None, :]

    def subset(self, idx: np.ndarray) -> ClassificationSet:
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, paths=[self.paths[i] for i in idx], targets=self.targets[idx],
                       splits=None if self.splits is None else self.splits[idx])


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
        raise _not_found(kind, root, "the root folder does not exist")
    if _has_class_folders(root):
        return root
    for sub in BENCHMARKS[kind].subdirs:
        if _has_class_folders(root / sub):
            return root / sub
    looked = [str(root)] + [str(root / s) for s in BENCHMARKS[kind].subdirs]
    raise _not_found(kind, root, f"no class folders with images (looked in {looked})")


def _resolve_classnames(
    classes: list[str], explicit: Sequence[str] | None, search: list[Path], builtin: dict[str, str]
) -> list[str]:
    if explicit is not None:
        names, source = list(explicit), "the config's classnames"
    else:
        f = next((d / "classnames.txt" for d in search if (d / "classnames.txt").is_file()), None)
        if f is None:
            names, source = [builtin.get(c, prettify_classname(c)) for c in classes], "the class list"
        else:
            names, source = read_lines(f), str(f)
    if len(names) != len(classes):
        raise ValueError(f"{source} has {len(names)} names but there are {len(classes)} classes {classes[:5]}...; "
                         "give one name per class, in sorted class order")
    # Two classes with the same prompt name get identical text embeddings: zero-shot can never tell
    # them apart, and the metrics silently count every image of the second as wrong. The CLIP
    # tokenizer lowercases and collapses spaces, so "Forest" and "forest " are the same name too.
    seen: dict[str, str] = {}
    dups = []
    for n, c in zip(names, classes, strict=True):
        key = " ".join(n.casefold().split())
        if key in seen:
            dups.append(f"{n!r} ({seen[key]} and {c})")
        seen.setdefault(key, c)
    if dups:
        raise ValueError(f"{source}: duplicate class name(s) {', '.join(dups[:5])}; every class needs its own "
                         "name, or zero-shot prompts cannot tell the classes apart")
    return names


def _resolve_templates(explicit: Sequence[str] | None, search: list[Path]) -> list[str] | None:
    if explicit is not None:
        return list(explicit)
    f = next((d / "templates.txt" for d in search if (d / "templates.txt").is_file()), None)
    return _read_templates(f) if f else None


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
        classnames=_resolve_classnames(classes, classnames, search, BENCHMARKS[kind].classnames),
        templates=_resolve_templates(templates, search),
        splits=_apply_split_files(paths, class_root, split_files, rejections),
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
    )


_LABEL_SEP = re.compile(r"[;|]")


def load_csv_multilabel(
    root: str | os.PathLike,
    name: str | None = None,
    kind: str = "csv_multilabel",
    csv_name: str = "labels.csv",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
) -> ClassificationSet:
    """Read a multi-label set: a CSV with columns ``path,labels[,split]`` (labels split on ``;`` or ``|``).

    Rows whose image is missing or whose label is not in ``classes.txt`` are rejected with a reason.

    Raises:
        DatasetNotFoundError: the CSV is missing.
        ValueError: the CSV lacks the ``path``/``labels`` columns.
    """
    root = Path(root)
    csv_path = root if root.is_file() else root / csv_name
    base = csv_path.parent
    if not csv_path.is_file():
        raise _not_found(kind, root, f"{csv_path.name} does not exist")
    vocab_file = base / "classes.txt"
    vocab = read_class_list(vocab_file) if vocab_file.is_file() else None
    rejections = Rejections()
    rows: list[tuple[Path, list[str], str]] = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "labels"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; expected a header 'path,labels[,split]' "
                             f"(got {reader.fieldnames})")
        for line_no, rec in enumerate(reader, start=2):
            rel = (rec.get("path") or "").strip()
            if not rel:
                rejections.add("empty_path", f"{csv_path}:{line_no}")
                continue
            p = Path(rel) if Path(rel).is_absolute() else base / rel
            if not p.is_file():
                rejections.add("missing_file", str(p), f"{csv_path}:{line_no}")
                continue
            labels = [s.strip() for s in _LABEL_SEP.split(rec.get("labels") or "") if s.strip()]
            unknown = [x for x in labels if vocab is not None and x not in vocab]
            if unknown:
                rejections.add("unknown_label", str(p), f"{unknown} not in {vocab_file}")
                continue
            rows.append((p, labels, (rec.get("split") or "").strip()))
    if not rows:
        raise _not_found(kind, root, f"{csv_path} lists no usable image ({rejections.to_json()['counts']})")
    classes = vocab if vocab is not None else sorted({x for _, labels, _ in rows for x in labels})
    col = {c: i for i, c in enumerate(classes)}
    targets = np.zeros((len(rows), len(classes)), dtype=bool)
    for n, (_, labels, _) in enumerate(rows):
        targets[n, [col[x] for x in labels]] = True
    has_split = any(s for _, _, s in rows)
    return ClassificationSet(
        name=name or kind, kind=kind, root=base, paths=[p for p, _, _ in rows], targets=targets, classes=classes,
        # CSV labels are written as names already ("Coniferous forest"): used in prompts unchanged.
        classnames=_resolve_classnames(classes, classnames, [base], {c: c for c in classes}),
        templates=_resolve_templates(templates, [base]), multilabel=True,
        splits=np.asarray([s for _, _, s in rows]) if has_split else None,
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
    )


# --------------------------------------------------------------------------- segmentation sets


@dataclass
class SegmentationSet:
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

    def __len__(self) -> int:
        return len(self.images)

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
            raise _not_found("segmentation", root, f"the folder {need}/ does not exist")
    if not (root / "classes.txt").is_file():
        raise _not_found("segmentation", root, "classes.txt does not exist")
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
        raise _not_found("segmentation", root, "no image has a mask with the same stem")
    return SegmentationSet(
        name=name or "segmentation", root=root, images=images, masks=mask_paths, classes=classes,
        classnames=_resolve_classnames(classes, classnames, [root], {}),
        templates=_resolve_templates(templates, [root]),
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
    )


# --------------------------------------------------------------------------- GRAFT pairs (alignment)


@dataclass
class PairSet:
    """Satellite tiles of one split, each with the mean of its cached ground-photo embeddings.

    Attributes:
        ground_mean: (N, D) float32, row i the mean of tile i's normalised ground embeddings.
        cache_record: the CLIP spec record stored with the embeddings (``emb.json``), used to check
            that a model's text/ground space is the one the cache was made in.
    """

    name: str
    root: Path
    tile_ids: list[str]
    locations: list[tuple[Path, int, int]]  # (shard, byte offset of the tif member, its size)
    ground_mean: np.ndarray
    cache_record: dict[str, Any]
    rgb_bands: tuple[int, ...] | None = None
    rejections: Rejections = field(default_factory=Rejections)

    kind = "graft_pairs"

    def __len__(self) -> int:
        return len(self.tile_ids)

    def read_rgb(self, i: int) -> np.ndarray:
        shard, offset, size = self.locations[i]
        with open(shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        try:
            arr, _ = decode_geotiff(data)
            if self.rgb_bands:
                arr = arr[[b - 1 for b in self.rgb_bands]]
            return tile_to_rgb8(arr)
        except Exception as e:  # rasterio raises several types for a torn tile
            raise ImageReadError("unreadable_tile", f"{self.tile_ids[i]} in {shard}: {e}") from None


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext


def load_graft_pairs(root: str | os.PathLike, name: str | None = None, split: str = "test",
                     rgb_bands: Sequence[int] | None = None) -> PairSet:
    """Index the tiles of ``split`` in a GRAFT dataset folder and average their cached ground embeddings.

    Tiles of the split without cached embeddings are rejected (``no_ground_embeddings``): run
    ``graft embed`` first.

    Raises:
        DatasetNotFoundError: no ``tiles/*.tar`` under ``root``, or no tile of ``split`` has embeddings.
    """
    root = Path(root)
    shards = sorted((root / "tiles").glob("*.tar")) if (root / "tiles").is_dir() else []
    if not shards:
        raise _not_found("graft_pairs", root, "no tiles/*.tar shards")
    rejections = Rejections()
    tile_ids: list[str] = []
    locations: list[tuple[Path, int, int]] = []
    means: list[np.ndarray] = []
    records: dict[str, dict] = {}
    for shard in shards:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tarfile.open(shard, "r:") as tf:
            for m in tf:
                if m.isfile():
                    key, ext = _split_member(m.name)
                    groups.setdefault(key, {})[ext] = m
            for key, members in groups.items():
                if "json" not in members or "tif" not in members:
                    rejections.add("incomplete_tile_sample", key, f"{shard}: members {sorted(members)}")
                    continue
                info = json.loads(tf.extractfile(members["json"]).read())
                if info.get("split") != split:
                    continue
                if "emb.npy" not in members:
                    rejections.add("no_ground_embeddings", key, f"{shard}: run 'graft embed' on {root}")
                    continue
                emb = np.load(io.BytesIO(tf.extractfile(members["emb.npy"]).read())).astype(np.float32)
                if emb.ndim != 2 or emb.shape[0] == 0:
                    rejections.add("no_ground_embeddings", key, f"emb.npy has shape {emb.shape}")
                    continue
                if "emb.json" in members:
                    rec = json.loads(tf.extractfile(members["emb.json"]).read())
                    rec = {k: v for k, v in rec.items() if k not in ("photo_ids", "photos")}
                    records[json.dumps(rec, sort_keys=True)] = rec
                emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                tile_ids.append(key)
                locations.append((shard, members["tif"].offset_data, members["tif"].size))
                means.append(emb.mean(axis=0))
    if not tile_ids:
        raise _not_found("graft_pairs", root, f"no tile of split {split!r} has cached ground embeddings "
                         f"({rejections.to_json()['counts']})")
    if len(records) > 1:
        raise ValueError(f"{root}: tiles were embedded with {len(records)} different CLIP specs; "
                         "re-run 'graft embed --force' so the cache is consistent")
    return PairSet(name=name or root.name, root=root, tile_ids=tile_ids, locations=locations,
                   ground_mean=np.stack(means), cache_record=next(iter(records.values()), {}),
                   rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections)


# --------------------------------------------------------------------------- torch adaptors


class ImageTensorDataset:
    """Torch dataset over any set with ``read_rgb(i)``: yields ``(tensor, index, failure)``.

    A failing image yields ``(None, index, (reason, detail))`` instead of raising, so one bad file
    does not kill a DataLoader worker; :func:`collate_images` separates the failures.
    """

    def __init__(self, source: Any, transform: Callable[[Image.Image], Any]):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return self.transform(Image.fromarray(self.source.read_rgb(i))), i, None
        except ImageReadError as e:
            return None, i, (e.reason, e.detail)


class LabelledTensorDataset:
    """Torch dataset yielding ``(tensor, target)`` like torchvision's ImageFolder, for CLIP_benchmark-style
    loops (:func:`graft.evaluation.zeroshot.evaluate_zeroshot`). A bad image raises :class:`ImageReadError`."""

    def __init__(self, source: ClassificationSet, transform: Callable[[Image.Image], Any]):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.source.read_rgb(i))), self.source.targets[i]


class SegmentationTensorDataset:
    """Yields ``(tensor, mask, index, failure)``; images are resized (not cropped) so the mask stays aligned."""

    def __init__(self, source: SegmentationSet, transform: Callable[[Image.Image], Any]):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

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


# --------------------------------------------------------------------------- one entry point

CLASSIFICATION_KINDS = ("eurosat", "ucmerced", "resisc45", "aid", "imagefolder")
MULTILABEL_KINDS = ("csv_multilabel", "bigearthnet")
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
) -> ClassificationSet | SegmentationSet | PairSet:
    """Load any supported benchmark by its type name (see :data:`ALL_KINDS`)."""
    if kind in CLASSIFICATION_KINDS:
        return load_imagefolder(root, name, kind, classnames, templates, rgb_bands, split_files)
    if kind in MULTILABEL_KINDS:
        return load_csv_multilabel(root, name, kind, csv_name, classnames, templates, rgb_bands)
    if kind == "segmentation":
        return load_segmentation(root, name, classnames, templates, rgb_bands)
    if kind == "graft_pairs":
        return load_graft_pairs(root, name, pairs_split, rgb_bands)
    raise ValueError(f"unknown benchmark type {kind!r}; expected one of {ALL_KINDS}")
