"""BigEarthNet-S2 in its official layout: one folder per patch, one GeoTIFF per band (``bigearthnet_s2``).

Two archive versions are read as they unpack:

* **v1.0** (``BigEarthNet-v1.0/``): ``<patch>/<patch>_B01.tif`` ... ``<patch>_B12.tif`` (12 bands: B01-B09,
  B8A, B11, B12; no B10) and ``<patch>/<patch>_labels_metadata.json`` whose ``labels`` lists the patch's
  CORINE (level-3, 43-class) labels.
* **v2.0** (reBEN, ``BigEarthNet-S2/``): ``<tile>/<patch>/<patch>_B01.tif`` ..., labels and the official
  split in ``metadata.parquet`` beside it (columns ``patch_id``, ``labels``, ``split``; 19 classes).

The bands come at 10 m (120 x 120 px), 20 m (60 x 60) and 60 m (20 x 20); every band is resampled
bilinearly onto the 10 m grid when read, and they are stacked in :data:`BIGEARTHNET_S2_BANDS` order.
Reflectance is uint16 DN = reflectance x 1e4, as Sentinel-2 tiles in graft. A patch folder with a
band file missing, or without labels, is rejected with a reason.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.evaluation.datasets.base import ImageReadError, not_found
from graft.evaluation.datasets.imagefolder import ClassificationSet
from graft.evaluation.datasets.prompts import read_class_list, resolve_classnames, resolve_templates
from graft.imagery import tile_to_rgb8
from graft.rejections import Rejections

BIGEARTHNET_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_SUBDIRS = ("BigEarthNet-v1.0", "BigEarthNet-S2")
_METADATA = "metadata.parquet"


@dataclass
class BandFolderSet(ClassificationSet):
    """A multi-label set whose items are patch folders holding one single-band GeoTIFF per band."""

    def band_file(self, i: int, band: str) -> Path:
        return self.paths[i] / f"{self.paths[i].name}_{band}.tif"

    def read_bands(self, i: int) -> tuple[np.ndarray, list[str]]:
        """Patch ``i`` as (12, H, W) uint16, every band on the finest band's grid, and the band names."""
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        bands = list(self.bands or BIGEARTHNET_S2_BANDS)
        out, size = [], None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                srcs = [rasterio.open(self.band_file(i, b)) for b in bands]
                try:
                    size = max(s.height for s in srcs)
                    for s in srcs:
                        out.append(s.read(1, out_shape=(size, size), resampling=Resampling.bilinear))
                finally:
                    for s in srcs:
                        s.close()
        except RasterioIOError as e:
            raise ImageReadError("unreadable_image", f"{self.paths[i]}: {e}") from None
        return np.stack(out), bands

    def read_rgb(self, i: int) -> np.ndarray:
        array, bands = self.read_bands(i)
        return tile_to_rgb8(array, bands)


def _patch_folders(root: Path) -> list[Path]:
    """Folders holding ``<name>_B02.tif`` (v1: root/<patch>; v2: root/<tile>/<patch>), sorted."""
    return sorted(f.parent for f in root.glob("*/*_B02.tif")) or sorted(f.parent for f in root.glob("*/*/*_B02.tif"))


def load_bigearthnet_s2(
    root: str | os.PathLike,
    name: str | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
) -> BandFolderSet:
    """Read BigEarthNet-S2 (v1.0 or v2.0) from the folder its archive unpacks to.

    Args:
        root: the archive's folder (``BigEarthNet-v1.0``/``BigEarthNet-S2``) or the folder holding it.
        classnames, templates: as for every classification set (``classes.txt`` fixes the label order).
        bands: the band files to read, in order (default all 12, :data:`BIGEARTHNET_S2_BANDS`).

    Raises:
        DatasetNotFoundError: no patch folder under ``root``.
    """
    root = Path(root)
    if not root.exists():
        raise not_found("bigearthnet_s2", root, "the root folder does not exist")
    base = next((root / s for s in _SUBDIRS if (root / s).is_dir()), root)
    folders = _patch_folders(base)
    if not folders:
        raise not_found("bigearthnet_s2", root, f"no patch folder (<patch>/<patch>_B02.tif) in {base}")
    bands = tuple(bands or BIGEARTHNET_S2_BANDS)
    rejections = Rejections()
    meta = _v2_metadata(base, root)
    rows: list[tuple[Path, list[str], str]] = []
    for d in folders:
        missing = [b for b in bands if not (d / f"{d.name}_{b}.tif").is_file()]
        if missing:
            rejections.add("missing_band_file", str(d), f"no {d.name}_{missing[0]}.tif ({len(missing)} missing)")
            continue
        if meta is not None:
            rec = meta.get(d.name)
            if rec is None:
                rejections.add("not_in_metadata", str(d), f"{d.name} not in {_METADATA}")
                continue
            rows.append((d, rec[0], rec[1]))
            continue
        label_file = d / f"{d.name}_labels_metadata.json"
        try:
            labels = json.loads(label_file.read_text())["labels"]
        except (OSError, ValueError, KeyError) as e:
            rejections.add("unreadable_labels", str(label_file), f"{type(e).__name__}: {e}")
            continue
        rows.append((d, list(labels), ""))
    if not rows:
        raise not_found("bigearthnet_s2", root, f"no usable patch ({rejections.to_json()['counts']})")
    vocab_file = next((p / "classes.txt" for p in (root, base) if (p / "classes.txt").is_file()), None)
    classes = read_class_list(vocab_file) if vocab_file else sorted({x for _, labels, _ in rows for x in labels})
    col = {c: i for i, c in enumerate(classes)}
    keep = []
    for r in rows:
        unknown = [x for x in r[1] if x not in col]
        if unknown:
            rejections.add("unknown_label", str(r[0]), f"{unknown} not in {vocab_file}")
        else:
            keep.append(r)
    targets = np.zeros((len(keep), len(classes)), dtype=bool)
    for n, (_, labels, _) in enumerate(keep):
        targets[n, [col[x] for x in labels]] = True
    search = [root, base] if base != root else [root]
    return BandFolderSet(
        name=name or "bigearthnet_s2", kind="bigearthnet_s2", root=base, paths=[p for p, _, _ in keep],
        targets=targets, classes=classes,
        classnames=resolve_classnames(classes, classnames, search, {c: c for c in classes}),
        templates=resolve_templates(templates, search), multilabel=True,
        splits=np.asarray([s for _, _, s in keep]) if any(s for _, _, s in keep) else None,
        bands=bands, rejections=rejections,
    )


def _v2_metadata(base: Path, root: Path) -> dict[str, tuple[list[str], str]] | None:
    """v2.0's ``metadata.parquet``: patch_id -> (labels, split); None for v1.0 (labels in each folder)."""
    f = next((p / _METADATA for p in (base, base.parent, root) if (p / _METADATA).is_file()), None)
    if f is None:
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(f).to_pydict()
    missing = {"patch_id", "labels"} - set(table)
    if missing:
        raise ValueError(f"{f}: missing column(s) {sorted(missing)}; expected BigEarthNet v2.0's metadata.parquet "
                         f"(patch_id, labels, split)")
    splits = table.get("split", [""] * len(table["patch_id"]))
    return {p: (list(lab), s or "") for p, lab, s in zip(table["patch_id"], table["labels"], splits, strict=True)}
