"""RSVQA-LR and RSVQA-HR (Lobry et al., TGRS 2020): the file layout, the answer vocabularies, and scoring.

The official release (https://rsvqa.sylvainlobry.com/, Zenodo records 6344334
for LR and 6344367 for HR) is a folder of JSON files beside an image folder:

* **LR** (Sentinel-2, 10 m): ``LR_split_<split>_questions.json``,
  ``LR_split_<split>_answers.json``, ``LR_split_<split>_images.json`` and
  ``Images_LR/<image id>.tif``; splits ``train``, ``val``, ``test``;
  question types ``presence``, ``comp``, ``count``, ``rural_urban``.
* **HR** (USGS aerial, 15 cm): ``USGS_split_<split>_{questions,answers,images}.json``
  and ``Data/<image id>.tif``; splits ``train``, ``val``, ``test``, ``test_phili``;
  question types ``presence``, ``comp``, ``count``, ``area``.

Each file is one object holding a list: ``{"questions": [{"id", "img_id",
"type", "question", "answers_ids", "active", ...}]}``, ``{"answers": [{"id",
"question_id", "answer", "active", ...}]}``, ``{"images": [{"id",
"questions_ids", "active", ...}]}``. Only ``active`` entries belong to the split.

Answers are scored in RSVQA's vocabulary: ``yes``/``no``; ``rural``/``urban``;
LR counts in the buckets :data:`LR_COUNT_BUCKETS` (the raw integers in the
answers file are bucketed the same way); HR counts as exact integers; HR areas
(stored as ``"<n>m2"``) in the buckets :data:`AREA_BUCKETS`. Accuracy is
reported per question type, overall (all questions) and as the average of the
per-type accuracies, as in the RSVQA paper.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.evaluation.datasets import DatasetNotFoundError, read_rgb
from graft.rejections import Rejections
from graft.storage import atomic_write_json

QUESTION_TYPES = ("presence", "comp", "count", "area", "rural_urban")
LR_COUNT_BUCKETS = ("0", "between 1 and 10", "between 11 and 100", "between 101 and 1000", "more than 1000")
AREA_BUCKETS = ("0m2", "between 1m2 and 10m2", "between 11m2 and 100m2", "between 101m2 and 1000m2",
                "more than 1000m2")
IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg")


@dataclass(frozen=True)
class Variant:
    """One of the two RSVQA layouts."""

    name: str
    prefix: str  # of the JSON files
    images_dir: str
    gsd_m: float  # of the official images
    count_buckets: bool  # LR buckets counts; HR answers exact integers


VARIANTS = {
    "lr": Variant("lr", "LR", "Images_LR", 10.0, True),
    "hr": Variant("hr", "USGS", "Data", 0.15, False),
}


def bucket(value: float, buckets: tuple[str, ...]) -> str:
    """RSVQA's bucket of a non-negative number: 0, 1-10, 11-100, 101-1000, more (values rounded first)."""
    n = int(round(value))
    if n < 0:
        raise ValueError(f"cannot bucket a negative value {value}")
    for i, top in enumerate((0, 10, 100, 1000)):
        if n <= top:
            return buckets[i]
    return buckets[-1]


def normalise_answer(raw: str, qtype: str, variant: Variant) -> str:
    """An answer from the answers file, in the vocabulary it is scored in.

    Raises:
        ValueError: a count or area answer that is not a number.
    """
    raw = str(raw).strip()
    if qtype == "count":
        if raw in LR_COUNT_BUCKETS and variant.count_buckets:
            return raw
        n = int(raw)
        return bucket(n, LR_COUNT_BUCKETS) if variant.count_buckets else str(n)
    if qtype == "area":
        if raw in AREA_BUCKETS:
            return raw
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*m2", raw)
        if not m:
            raise ValueError(f"area answer {raw!r} is neither '<n>m2' nor one of {AREA_BUCKETS}")
        return bucket(float(m.group(1)), AREA_BUCKETS)
    return raw.lower()


def format_answer(value: Any, qtype: str, variant: Variant) -> str:
    """A program's answer (bool, count, area in m^2, label) in RSVQA's vocabulary for ``qtype``."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if qtype == "area":
        return bucket(float(value), AREA_BUCKETS)
    if qtype == "count":
        return bucket(float(value), LR_COUNT_BUCKETS) if variant.count_buckets else str(int(round(value)))
    return str(value)


@dataclass(frozen=True)
class VqaItem:
    question_id: int
    image_id: int
    type: str
    question: str
    answer: str  # normalised (see normalise_answer)


@dataclass
class RsvqaSet:
    """The active questions of one RSVQA split whose image and answer were found."""

    name: str
    root: Path
    variant: Variant
    split: str
    items: list[VqaItem]
    images: dict[int, Path]
    gsd_m: float
    rejections: Rejections = field(default_factory=Rejections)

    kind = "rsvqa"

    def __len__(self) -> int:
        return len(self.items)

    def read_rgb(self, image_id: int) -> np.ndarray:
        return read_rgb(self.images[image_id])

    def subset_images(self, keep: list[int]) -> RsvqaSet:
        """The questions about the images in ``keep`` only."""
        keep_set = set(keep)
        return RsvqaSet(self.name, self.root, self.variant, self.split,
                        [q for q in self.items if q.image_id in keep_set],
                        {i: p for i, p in self.images.items() if i in keep_set}, self.gsd_m, self.rejections)


def detect_variant(root: Path, split: str) -> Variant:
    found = [v for v in VARIANTS.values() if (root / f"{v.prefix}_split_{split}_questions.json").is_file()]
    if len(found) != 1:
        what = "both LR_ and USGS_ files" if found else "no questions file"
        raise DatasetNotFoundError(
            f"RSVQA benchmark at {root}: {what} for split {split!r}. Expected LR_split_{split}_questions.json "
            f"(RSVQA-LR, https://zenodo.org/records/6344334) or USGS_split_{split}_questions.json (RSVQA-HR, "
            "https://zenodo.org/records/6344367) beside Images_LR/ or Data/; see eval/README.md")
    return found[0]


def _read_list(path: Path, key: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetNotFoundError(f"RSVQA file {path} does not exist; the official release has "
                                   f"{path.name} beside the questions file (see eval/README.md)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetNotFoundError(f"{path} is not valid JSON ({e}); re-download it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise DatasetNotFoundError(f"{path}: expected a JSON object with a list under {key!r}")
    return doc[key]


def load_rsvqa(root: str | os.PathLike, name: str | None = None, split: str = "test", variant: str | None = None,
               gsd_m: float | None = None) -> RsvqaSet:
    """Read one split of an RSVQA-LR or -HR folder (official layout, see the module docstring).

    Args:
        variant: ``lr`` or ``hr``; detected from the file names when omitted.
        gsd_m: metres per pixel of the images (for areas); default the variant's (LR 10 m, HR 0.15 m).

    Raises:
        DatasetNotFoundError: the folder, a JSON file or the image folder is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"RSVQA benchmark root {root} does not exist; download RSVQA-LR "
                                   "(https://zenodo.org/records/6344334) or -HR (https://zenodo.org/records/6344367) "
                                   "and point root at the folder holding the *_split_*.json files")
    v = VARIANTS[variant] if variant else detect_variant(root, split)
    stem = f"{v.prefix}_split_{split}"
    questions = _read_list(root / f"{stem}_questions.json", "questions")
    answers = {a.get("id"): a for a in _read_list(root / f"{stem}_answers.json", "answers")}
    image_rows = _read_list(root / f"{stem}_images.json", "images")
    active_images = {im.get("id") for im in image_rows if im.get("active", True)}
    img_dir = root / v.images_dir
    if not img_dir.is_dir():
        raise DatasetNotFoundError(f"RSVQA image folder {img_dir} does not exist; it comes with the release "
                                   f"({v.images_dir}/<image id>.tif)")
    files = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    rejections = Rejections()
    items, images = [], {}
    for q in questions:
        if not q.get("active", True):
            continue  # not part of this split, by the release's own design
        qid = q.get("id")
        where = f"{stem}_questions.json id {qid}"
        ans_ids = q.get("answers_ids") or []
        ans = answers.get(ans_ids[0]) if ans_ids else None
        qtype = q.get("type")
        if qtype not in QUESTION_TYPES:
            rejections.add("unknown_question_type", where, f"type {qtype!r} not in {QUESTION_TYPES}")
            continue
        if ans is None or not ans.get("active", True):
            rejections.add("no_active_answer", where, f"answers_ids {ans_ids} not among the active answers")
            continue
        img_id = q.get("img_id")
        if img_id not in active_images:
            rejections.add("inactive_image", where, f"img_id {img_id} is not an active image of {stem}_images.json")
            continue
        path = files.get(str(img_id))
        if path is None:
            rejections.add("missing_image", where, f"no {v.images_dir}/{img_id}.tif")
            continue
        try:
            answer = normalise_answer(ans.get("answer"), qtype, v)
        except ValueError as e:
            rejections.add("bad_answer", where, str(e))
            continue
        images[img_id] = path
        items.append(VqaItem(int(qid), int(img_id), qtype, str(q.get("question", "")), answer))
    if not items:
        raise DatasetNotFoundError(f"RSVQA {root} split {split}: no active question with an answer and an image "
                                   f"({rejections.total} rejected: {dict(rejections.counts)})")
    return RsvqaSet(name=name or f"rsvqa-{v.name}", root=root, variant=v, split=split, items=items, images=images,
                    gsd_m=float(gsd_m or v.gsd_m), rejections=rejections)


def write_rsvqa_split(root: str | os.PathLike, variant: str, split: str, images: dict[int, np.ndarray],
                      questions: list[tuple[int, str, str, str]]) -> Path:
    """Write one split in the official layout (for generated sets and test fixtures).

    Args:
        images: image id -> (H, W, 3) uint8, written as ``<images_dir>/<id>.tif``.
        questions: ``(image id, type, question, raw answer)``; raw answers as the release stores them
            (``yes``/``no``, an integer for counts, ``"<n>m2"`` for areas, ``rural``/``urban``).
    """
    from PIL import Image

    v = VARIANTS[variant]
    root = Path(root)
    (root / v.images_dir).mkdir(parents=True, exist_ok=True)
    for img_id, rgb in images.items():
        Image.fromarray(rgb).save(root / v.images_dir / f"{img_id}.tif")
    qs, ans, by_image = [], [], {i: [] for i in images}
    for qid, (img_id, qtype, text, answer) in enumerate(questions):
        qs.append({"id": qid, "img_id": img_id, "type": qtype, "question": text, "answers_ids": [qid],
                   "active": True, "people_id": 0, "date_added": 0.0})
        ans.append({"id": qid, "question_id": qid, "answer": answer, "active": True, "people_id": 0,
                    "date_added": 0.0})
        by_image[img_id].append(qid)
    stem = f"{v.prefix}_split_{split}"
    atomic_write_json(root / f"{stem}_questions.json", {"questions": qs})
    atomic_write_json(root / f"{stem}_answers.json", {"answers": ans})
    atomic_write_json(root / f"{stem}_images.json", {"images": [
        {"id": i, "questions_ids": q, "active": True, "people_id": 0, "date_added": 0.0}
        for i, q in by_image.items()]})
    return root


def score(types: list[str], correct: list[bool]) -> dict[str, float]:
    """RSVQA's accuracies: ``accuracy[<type>]`` per question type, ``overall_accuracy``, ``average_accuracy``."""
    if not types:
        raise ValueError("no answered question to score")
    total, right = Counter(types), Counter(t for t, c in zip(types, correct, strict=True) if c)
    per_type = {t: right[t] / total[t] for t in QUESTION_TYPES if total[t]}
    out = {f"accuracy[{t}]": a for t, a in per_type.items()}
    out["overall_accuracy"] = sum(right.values()) / len(types)
    out["average_accuracy"] = float(np.mean(list(per_type.values())))
    return out
