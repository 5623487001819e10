"""The multi-label CSV layout (``csv_multilabel``, ``bigearthnet``): ``root/labels.csv`` with ``path,labels[,split]``."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graft.evaluation.datasets.base import not_found
from graft.evaluation.datasets.imagefolder import ClassificationSet
from graft.evaluation.datasets.prompts import read_class_list, resolve_classnames, resolve_templates
from graft.rejections import Rejections

_LABEL_SEP = re.compile(r"[;|]")


def load_csv_multilabel(
    root: str | os.PathLike,
    name: str | None = None,
    kind: str = "csv_multilabel",
    csv_name: str = "labels.csv",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
    bands: Sequence[str] | None = None,
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
        raise not_found(kind, root, f"{csv_path.name} does not exist")
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
        raise not_found(kind, root, f"{csv_path} lists no usable image ({rejections.to_json()['counts']})")
    classes = vocab if vocab is not None else sorted({x for _, labels, _ in rows for x in labels})
    col = {c: i for i, c in enumerate(classes)}
    targets = np.zeros((len(rows), len(classes)), dtype=bool)
    for n, (_, labels, _) in enumerate(rows):
        targets[n, [col[x] for x in labels]] = True
    has_split = any(s for _, _, s in rows)
    return ClassificationSet(
        name=name or kind, kind=kind, root=base, paths=[p for p, _, _ in rows], targets=targets, classes=classes,
        # CSV labels are written as names already ("Coniferous forest"): used in prompts unchanged.
        classnames=resolve_classnames(classes, classnames, [base], {c: c for c in classes}),
        templates=resolve_templates(templates, [base]), multilabel=True,
        splits=np.asarray([s for _, _, s in rows]) if has_split else None,
        rgb_bands=tuple(rgb_bands) if rgb_bands else None, rejections=rejections,
        bands=tuple(bands) if bands else None,
    )
