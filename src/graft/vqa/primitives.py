"""The primitives a VQA program calls: concept masks from the pixel-level model, regions, and their measures.

One :class:`Scene` holds one image already run through a model's patch
encoder. Everything a program asks about the image comes from it:

* :meth:`Scene.mask`: where a text concept is. **Threshold rule (no labels):** a
  pixel belongs to concept X when X's prompt is the most similar of a concept
  vocabulary at that pixel: X itself, the benchmark's other concepts and a set
  of background prompts (:data:`DEFAULT_BACKGROUND`, generic land-cover terms).
  The (C, g, g) patch-to-prompt cosine map is upsampled bilinearly to the
  image and the argmax taken, exactly as zero-shot segmentation does
  (:mod:`graft.evaluation.segmentation`); with a SAM refiner the coarse map is
  refined the same way. No threshold is fitted to any labelled data: a concept
  "wins" a pixel only against the other names the model is asked about.
* :meth:`Scene.regions`: the connected regions of a mask
  (:func:`regions_from_mask`, ``scipy.ndimage.label``, 4-connectivity).
  Regions smaller than ``min_region_patches`` times one patch's footprint are
  dropped: a patch model cannot resolve them, they are artefacts of the
  upsampling, not objects.
* measures on regions: :func:`count`, :func:`area_m2` (pixels x GSD^2),
  :func:`fraction` of the image, and :func:`exists` (at least one region);
* region filters: :func:`filter_size` (small/medium/large by area in m^2),
  :func:`filter_shape` (square/rectangular/circular from the region's fill of
  its bounding box) and :func:`filter_relation` (left of/right of/above/below/
  next to another set of regions, by centroids, or by distance for "next to");
* :meth:`Scene.choose`: the option whose prompt best matches the image as a
  whole (mean of the patch embeddings), e.g. "rural" vs "urban".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from graft.evaluation.segmentation import SamRefiner, scores_to_mask, segmentation_transform

DEFAULT_BACKGROUND: tuple[str, ...] = (
    "bare soil", "grassland", "trees", "cropland", "buildings", "road", "water", "sand", "snow and ice", "wetland",
)
"""Generic land-cover prompts a concept must beat to claim a pixel (ESA WorldCover-like classes)."""

SIZES = ("small", "medium", "large")
SHAPES = ("square", "rectangular", "circular")
RELATIONS = ("left_of", "right_of", "above", "below", "next_to")


@dataclass(frozen=True)
class PrimitiveSettings:
    """Knobs of the primitives; every default is a property of the method, not of a data set.

    Attributes:
        templates: prompt templates for a concept (``{}`` is the concept); the text embedding is their mean.
        background: prompts every concept competes with for a pixel (see the module docstring).
        min_region_patches: regions smaller than this many patch footprints are dropped.
        small_max_m2: a region of at most this area is "small".
        large_min_m2: a region of at least this area is "large"; in between is "medium".
        next_to_m: two regions closer than this are "next to" each other (RSVQA uses 1000 m).
        fill_square: a region filling at least this share of its bounding box is square or rectangular
            (a disc fills pi/4 = 0.785, a square 1.0).
        fill_circle: a region filling at least this share (and below ``fill_square``) is circular.
    """

    templates: tuple[str, ...] = ("a photo of a {}.",)
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    min_region_patches: float = 0.5
    small_max_m2: float = 100.0
    large_min_m2: float = 1000.0
    next_to_m: float = 1000.0
    fill_square: float = 0.9
    fill_circle: float = 0.7


# --------------------------------------------------------------------------- regions and their measures


@dataclass
class Regions:
    """A set of connected regions of one image.

    Attributes:
        labels: (H, W) int32, 0 outside every region, ``i`` inside region ``i``.
        ids: the region ids in the set (a filter keeps a subset of them).
        gsd_m: metres per pixel of the image.
    """

    labels: np.ndarray
    ids: list[int]
    gsd_m: float

    def pixels(self) -> np.ndarray:
        """Pixel count of every region in ``ids`` (same order)."""
        if not self.ids:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(ndimage.sum_labels(np.ones_like(self.labels), self.labels, self.ids), dtype=np.int64)

    def mask(self) -> np.ndarray:
        return np.isin(self.labels, self.ids) if self.ids else np.zeros(self.labels.shape, dtype=bool)

    def keep(self, keep: Sequence[bool]) -> Regions:
        return Regions(self.labels, [i for i, k in zip(self.ids, keep, strict=True) if k], self.gsd_m)


def regions_from_mask(mask: np.ndarray, gsd_m: float, min_pixels: float = 1.0) -> Regions:
    """Connected regions (4-connectivity) of a boolean mask, dropping those under ``min_pixels`` pixels."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool))
    regions = Regions(labels.astype(np.int32), list(range(1, n + 1)), float(gsd_m))
    return regions.keep(regions.pixels() >= min_pixels)


def exists(regions: Regions) -> bool:
    return len(regions.ids) > 0


def count(regions: Regions) -> int:
    return len(regions.ids)


def area_m2(regions: Regions) -> float:
    """Total area of the regions: pixels x GSD^2, in square metres."""
    return float(regions.pixels().sum()) * regions.gsd_m ** 2


def fraction(regions: Regions) -> float:
    """Share of the image the regions cover, in [0, 1]."""
    return float(regions.pixels().sum()) / float(regions.labels.size)


def filter_size(regions: Regions, size: str, settings: PrimitiveSettings) -> Regions:
    """Regions whose own area is small (<= ``small_max_m2``), large (>= ``large_min_m2``) or medium (between)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} not in {SIZES}")
    a = regions.pixels() * regions.gsd_m ** 2
    keep = {"small": a <= settings.small_max_m2, "large": a >= settings.large_min_m2,
            "medium": (a > settings.small_max_m2) & (a < settings.large_min_m2)}[size]
    return regions.keep(keep)


def filter_shape(regions: Regions, shape: str, settings: PrimitiveSettings) -> Regions:
    """Regions of a shape, judged by how much of its (axis-aligned) bounding box a region fills and its aspect.

    square: fill >= ``fill_square`` and aspect <= 1.25; rectangular: fill >= ``fill_square`` and aspect
    > 1.25; circular: ``fill_circle`` <= fill < ``fill_square`` and aspect <= 1.25.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r} not in {SHAPES}")
    boxes = ndimage.find_objects(regions.labels)
    keep = []
    for rid, px in zip(regions.ids, regions.pixels(), strict=True):
        sl = boxes[rid - 1]
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        fill, aspect = px / float(h * w), max(h, w) / float(min(h, w))
        keep.append({"square": fill >= settings.fill_square and aspect <= 1.25,
                     "rectangular": fill >= settings.fill_square and aspect > 1.25,
                     "circular": settings.fill_circle <= fill < settings.fill_square and aspect <= 1.25}[shape])
    return regions.keep(keep)


def filter_relation(regions: Regions, relation: str, anchors: Regions, settings: PrimitiveSettings) -> Regions:
    """Regions standing in ``relation`` to at least one anchor region.

    left_of / right_of / above / below compare centroids (image rows grow downwards, north up);
    next_to keeps regions within ``settings.next_to_m`` of an anchor (distance transform of the anchors).
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation {relation!r} not in {RELATIONS}")
    if not regions.ids or not anchors.ids:
        return regions.keep([False] * len(regions.ids))
    if relation == "next_to":
        dist_px = ndimage.distance_transform_edt(~anchors.mask())
        near = ndimage.minimum(dist_px, regions.labels, regions.ids)
        return regions.keep(np.atleast_1d(near) * regions.gsd_m <= settings.next_to_m)
    ours = np.atleast_2d(ndimage.center_of_mass(np.ones_like(regions.labels), regions.labels, regions.ids))
    theirs = np.atleast_2d(ndimage.center_of_mass(np.ones_like(anchors.labels), anchors.labels, anchors.ids))
    axis, sign = {"left_of": (1, -1), "right_of": (1, 1), "above": (0, -1), "below": (0, 1)}[relation]
    keep = [(sign * (theirs[:, axis] - c[axis]) < 0).any() for c in ours]
    return regions.keep(keep)


# --------------------------------------------------------------------------- one image through one model


ConceptEncoder = Callable[[list[str]], torch.Tensor]
"""Concepts -> (N, D) L2-normalised text embeddings (prompt templates already applied)."""


@dataclass
class Scene:
    """One image seen through one model's patch encoder; answers where a concept is.

    Build it with :meth:`from_image`. ``text_cache`` may be shared across scenes of the same model so
    each concept is encoded once.
    """

    rgb: np.ndarray
    patch_feats: torch.Tensor  # (g, g, D), L2-normalised
    encode_concepts: ConceptEncoder
    gsd_m: float
    vocabulary: tuple[str, ...] = ()
    settings: PrimitiveSettings = field(default_factory=PrimitiveSettings)
    refiner: SamRefiner | None = None
    text_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    _masks: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def from_image(cls, rgb: np.ndarray, patch_encoder: torch.nn.Module, preprocess_cfg: dict,
                   encode_concepts: ConceptEncoder, gsd_m: float, device: str | torch.device = "cpu",
                   **kwargs) -> Scene:
        """Run ``rgb`` (H, W, 3 uint8) through ``patch_encoder`` (resized to its input, not cropped)."""
        from PIL import Image

        if gsd_m <= 0:
            raise ValueError(f"gsd_m={gsd_m}: the ground sampling distance must be a positive number of metres")
        x = segmentation_transform(preprocess_cfg)(Image.fromarray(rgb))[None].to(device)
        feats = F.normalize(patch_encoder(x).float(), dim=-1)[0].cpu()
        g = int(patch_encoder.grid_size)
        return cls(rgb=rgb, patch_feats=feats.reshape(g, g, -1), encode_concepts=encode_concepts, gsd_m=gsd_m,
                   **kwargs)

    @property
    def grid_size(self) -> int:
        return int(self.patch_feats.shape[0])

    def _text(self, concepts: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(concepts) if c not in self.text_cache]
        if missing:
            for c, e in zip(missing, self.encode_concepts(missing), strict=True):
                self.text_cache[c] = e.float().cpu()
        return torch.stack([self.text_cache[c] for c in concepts])

    def competitors(self, concept: str) -> list[str]:
        """The concept first, then every other name it competes with for a pixel."""
        others = [c for c in (*self.vocabulary, *self.settings.background) if c != concept]
        return [concept, *dict.fromkeys(others)]

    def mask(self, concept: str) -> np.ndarray:
        """(H, W) bool: pixels where ``concept`` beats every competitor (see the module docstring)."""
        if concept not in self._masks:
            names = self.competitors(concept)
            scores = torch.einsum("ijd,cd->cij", self.patch_feats, self._text(names))
            labels = scores_to_mask(scores, self.rgb.shape[:2])
            if self.refiner is not None:
                labels = self.refiner.refine(self.rgb, scores.numpy(), labels)
            self._masks[concept] = labels == 0
        return self._masks[concept]

    def regions(self, concept: str) -> Regions:
        h, w = self.rgb.shape[:2]
        patch_px = (h / self.grid_size) * (w / self.grid_size)
        return regions_from_mask(self.mask(concept), self.gsd_m, self.settings.min_region_patches * patch_px)

    def choose(self, options: Sequence[str]) -> int:
        """Index of the option whose prompt is closest to the whole image (mean patch embedding)."""
        if not options:
            raise ValueError("choose needs at least one option")
        image = F.normalize(self.patch_feats.reshape(-1, self.patch_feats.shape[-1]).mean(0), dim=-1)
        return int(torch.argmax(self._text(list(options)) @ image))
