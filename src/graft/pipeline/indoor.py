"""The indoor filter: keep ground photos taken outdoors.

GRAFT keeps only outdoor photos, because an indoor shot says nothing about
what a satellite sees above it. Four filters share one interface,
:class:`IndoorFilter`, whose ``score`` gives each photo a probability-like
outdoor score in [0, 1] and whose ``keep`` turns scores into a decision:

- ``resnet18-places365`` (the paper's choice): the CSAILVision ResNet18
  trained on Places365, with the reference indoor/outdoor rule of
  ``run_placesCNN_unified.py``: take the 10 most probable scene categories,
  look up whether each is an indoor (0) or outdoor (1) scene, and average;
  the photo is outdoors if that mean is >= 0.5. The mean is the score.
  Alternatively (``decision: threshold``) the score is the summed softmax
  probability of all outdoor categories. Preprocessing follows the same
  reference script: a plain resize to 224 x 224 and ImageNet mean/std.
- ``resnet18-binary``: a 2-class ResNet18 trained by ``graft filter-train``;
  the score is softmax P(outdoor).
- ``clip``: zero-shot with a frozen CLIP tower, prompts for "indoors" versus
  "outdoors" (``filter.prompts``, several each); the score is the softmax
  P(outdoor) with CLIP's own logit scale. Needs no extra weights.
- ``none``: keeps everything (score 1.0).

Weights never download at import or construction unless ``filter.weights``
is an http(s) URL, in which case they go to the torch hub cache (or
``filter.cache_dir``) once and are read from there afterwards.
"""

from __future__ import annotations

import io
import logging
import pickle
import urllib.parse
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, model_validator

from graft.config import StrictModel
from graft.models.clip_tower import ClipBundle, ClipSpec, FrozenClipTower, load_clip

log = logging.getLogger(__name__)

PLACES365_RESNET18_URL = "http://places2.csail.mit.edu/models_places365/resnet18_places365.pth.tar"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLACES_IMAGE_SIZE = 224
TOP_K_VOTE = 10
BINARY_CLASSES = ("indoor", "outdoor")
BINARY_FORMAT = "graft-indoor-binary-v1"

# Several phrasings per side, averaged in embedding space (CLIP's prompt
# ensembling): a single prompt is noticeably noisier for scene-level concepts.
INDOOR_PROMPTS = (
    "a photo taken indoors.",
    "a photo of an indoor scene.",
    "a photo of the inside of a building.",
    "a photo of a room.",
    "an indoor photo.",
)
OUTDOOR_PROMPTS = (
    "a photo taken outdoors.",
    "a photo of an outdoor scene.",
    "a photo of the outside world.",
    "a photo of a landscape.",
    "an outdoor photo.",
)

_MISSING_WEIGHTS_HELP = (
    "The resnet18-places365 filter needs the CSAILVision Places365 ResNet18 checkpoint "
    f"({PLACES365_RESNET18_URL}): download it and set filter.weights to the file, or set "
    "filter.weights to that URL to have it fetched once into the torch hub cache. "
    "Alternatives that need no download: filter.kind=clip (zero-shot with the CLIP tower), or train "
    "a small filter on your own labelled photos with 'graft filter-train FOLDER OUT.safetensors' and use "
    "filter.kind=resnet18-binary with filter.weights=OUT.safetensors."
)


class FilterPrompts(StrictModel):
    """The zero-shot prompts of ``kind: clip``; each list is averaged in embedding space.

    A domain or small custom CLIP may never have learned "indoors"; prompts naming what the
    photos show (``"a photo of a kitchen."``, ``"a photo of a forest."``) can fix its decisions.
    """

    indoor: list[str] = Field(default_factory=lambda: list(INDOOR_PROMPTS), min_length=1,
                              description="prompts describing indoor photos")
    outdoor: list[str] = Field(default_factory=lambda: list(OUTDOOR_PROMPTS), min_length=1,
                               description="prompts describing outdoor photos")


class IndoorFilterConfig(StrictModel):
    """Which indoor filter to run and how it decides.

    Attributes:
        kind: ``resnet18-places365``, ``resnet18-binary``, ``clip`` or ``none``.
        weights: local file or http(s) URL of the ResNet18 weights (the two resnet kinds only).
        decision: for ``resnet18-places365`` only: ``top10_vote`` (the reference rule) or
            ``threshold`` (summed outdoor probability). The other kinds always threshold
            their P(outdoor).
        threshold: keep a photo when its score is >= this. With ``top10_vote`` the score is a
            multiple of 0.1 and 0.5 is the reference rule.
        batch_size: images per forward pass.
        image_size: network input size; None means 224 for Places365, the trained size
            (stored with the weights) for the binary filter. CLIP always uses its own.
        device: ``cpu``, ``cuda``, ``cuda:1``...; None picks cuda when available.
        cache_dir: where URL weights are downloaded (default: the torch hub cache).
        clip: the CLIP tower for ``kind: clip``.
        prompts: the indoor and outdoor prompts for ``kind: clip``.
        max_reject_share: the build stops, before any tile is fetched, when the filter rejects more
            than this share of a sample of the build's photos (see
            :mod:`graft.pipeline.build.filter_guard` and data_pipeline/README.md for the default).
        check_sample: photos in that sample (0 turns the check off).
        check_clusters: clusters of the sample's colour-layout descriptors whose rejection shares the
            check reports, so that a filter rejecting whole kinds of scene shows as such.
    """

    kind: Literal["resnet18-places365", "resnet18-binary", "clip", "none"] = "resnet18-places365"
    weights: str | None = None
    decision: Literal["top10_vote", "threshold"] = "top10_vote"
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    batch_size: int = Field(default=64, ge=1)
    image_size: int | None = Field(default=None, ge=16)
    device: str | None = None
    cache_dir: str | None = None
    clip: ClipSpec = Field(default_factory=ClipSpec)
    prompts: FilterPrompts = Field(default_factory=FilterPrompts)
    max_reject_share: float = Field(default=0.35, ge=0.0, le=1.0)
    check_sample: int = Field(default=2000, ge=0)
    check_clusters: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _decision_fits_kind(self) -> IndoorFilterConfig:
        if self.kind != "clip" and "prompts" in self.model_fields_set:
            raise ValueError(f"filter.prompts applies to kind=clip only (got kind={self.kind})")
        if self.kind != "resnet18-places365" and "decision" in self.model_fields_set and self.decision == "top10_vote":
            raise ValueError(
                f"decision=top10_vote needs kind=resnet18-places365 (got kind={self.kind}); "
                "the other kinds threshold P(outdoor): use decision=threshold"
            )
        return self


# ---------------------------------------------------------------- weights


def places365_outdoor_labels() -> np.ndarray:
    """(365,) int array: 1 if the Places365 category (model output order) is an outdoor scene, else 0."""
    text = resources.files("graft").joinpath("data/places365_io.txt").read_text()
    labels = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        value = int(line.split()[-1])
        if value not in (1, 2):
            raise ValueError(f"graft/data/places365_io.txt line {n}: label {value}, expected 1 (indoor) or 2 (outdoor)")
        labels.append(value - 1)
    if len(labels) != 365:
        raise ValueError(f"graft/data/places365_io.txt has {len(labels)} categories, expected 365")
    return np.asarray(labels, dtype=np.int64)


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _cache_target(url: str, cache_dir: str | None) -> Path:
    """Where ``url`` is (or will be) downloaded: ``cache_dir`` or the torch hub cache."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    folder = Path(cache_dir).expanduser() if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / name


def _fetch(url: str, cache_dir: str | None) -> Path:
    """Download ``url`` once into the cache folder and return the local file."""
    dst = _cache_target(url, cache_dir)
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading filter weights %s -> %s", url, dst)
        # torch.hub writes to a temp file and renames it, so an interrupted download leaves no torn file.
        torch.hub.download_url_to_file(url, str(dst), progress=True)
    return dst


def cached_filter_weights(cfg: IndoorFilterConfig) -> tuple[bool, str]:
    """Whether a resnet kind's weights are on this machine (a file, or a URL already downloaded); no download."""
    if cfg.weights is None:
        return False, f"filter.weights is not set (filter.kind={cfg.kind})"
    if _is_url(cfg.weights):
        dst = _cache_target(cfg.weights, cfg.cache_dir)
        if dst.is_file():
            return True, f"{dst} (downloaded from {cfg.weights})"
        return False, f"{cfg.weights} is not downloaded yet (would go to {dst})"
    path = Path(cfg.weights).expanduser()
    return path.is_file(), str(path) if path.is_file() else f"file not found: {cfg.weights}"


def resolve_weights(cfg: IndoorFilterConfig) -> Path:
    """The local weights file for a resnet kind (downloading a URL once). Raises FileNotFoundError with help."""
    if cfg.weights is None:
        raise FileNotFoundError(f"filter.weights is not set (filter.kind={cfg.kind}). {_MISSING_WEIGHTS_HELP}")
    if _is_url(cfg.weights):
        return _fetch(cfg.weights, cfg.cache_dir)
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"filter.weights: file not found: {cfg.weights} (filter.kind={cfg.kind}). "
                                f"{_MISSING_WEIGHTS_HELP}")
    return path


def load_resnet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ResNet state dict from ``.safetensors``, a plain ``torch.save`` state dict, or the
    CSAILVision format (``{"state_dict": {"module.conv1.weight": ...}, ...}``), without unpickling code.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"filter.weights {path}: cannot be read as a state dict with weights_only=True ({e}). "
            "If this is CSAILVision's 'whole_resnet18_places365.pth.tar' (a pickled model), use "
            f"'resnet18_places365.pth.tar' instead ({PLACES365_RESNET18_URL})."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"filter.weights {path}: expected a state dict of tensors (optionally under 'state_dict')")
    # Checkpoints saved from nn.DataParallel prefix every key with 'module.'.
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def resnet18_model(num_classes: int) -> torch.nn.Module:
    """An untrained torchvision ResNet18 with ``num_classes`` outputs."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, expected: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise ValueError(f"filter.weights {source} does not match {expected}: " + " ".join(first[:3])[:600]) from None


def _binary_meta(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# ---------------------------------------------------------------- images


def _decode_rgb(data: bytes, index: int) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - re-raised with the image's position in the batch
        raise ValueError(
            f"indoor filter: image {index} ({len(data)} bytes) cannot be decoded: {type(e).__name__}: {e}; "
            "photos must pass graft.pipeline.photos.prepare_photo first"
        ) from None


def resnet_input(img: Image.Image, size: int) -> torch.Tensor:
    """PIL RGB image -> (3, size, size) float tensor: plain resize (no crop), ImageNet mean/std.

    Same as the Places365 reference ``trn.Resize((224, 224))`` (PIL bilinear) + ``Normalize``.
    """
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# ---------------------------------------------------------------- the filter


class IndoorFilter:
    """Scores photos by how likely they are outdoors, and keeps the outdoor ones.

    Args:
        cfg: the filter config.
        clip: an already-loaded CLIP bundle for ``kind: clip`` (loaded from ``cfg.clip`` if omitted).

    Raises:
        FileNotFoundError: a resnet kind without its weights file (the message says where to get it).
        ValueError: weights that do not match the architecture (strict load).
    """

    def __init__(self, cfg: IndoorFilterConfig, clip: ClipBundle | None = None):
        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model: torch.nn.Module | None = None
        self.image_size: int | None = None
        self._outdoor = torch.from_numpy(places365_outdoor_labels()) if cfg.kind == "resnet18-places365" else None
        self._tower: FrozenClipTower | None = None
        self._text: torch.Tensor | None = None

        if cfg.kind == "resnet18-places365":
            path = resolve_weights(cfg)
            model = resnet18_model(365)
            _strict_load(model, load_resnet_state(path), str(cfg.weights),
                         "a torchvision ResNet18 with 365 Places365 classes (resnet18_places365.pth.tar)")
            self.model, self.image_size = model, cfg.image_size or PLACES_IMAGE_SIZE
        elif cfg.kind == "resnet18-binary":
            path = resolve_weights(cfg)
            meta = _binary_meta(path)
            if meta.get("classes", ",".join(BINARY_CLASSES)) != ",".join(BINARY_CLASSES):
                raise ValueError(f"filter.weights {cfg.weights}: classes {meta['classes']!r}, expected indoor,outdoor")
            model = resnet18_model(2)
            _strict_load(model, load_resnet_state(path), str(cfg.weights),
                         "a 2-class ResNet18 written by 'graft filter-train'")
            trained = int(meta["image_size"]) if "image_size" in meta else None
            if cfg.image_size and trained and cfg.image_size != trained:
                log.warning("filter.image_size=%d differs from the size the filter was trained at (%d)",
                            cfg.image_size, trained)
            self.model, self.image_size = model, cfg.image_size or trained or PLACES_IMAGE_SIZE
        elif cfg.kind == "clip":
            bundle = clip if clip is not None else load_clip(cfg.clip, device=self.device)
            self._tower = FrozenClipTower(bundle).to(self.device)
            self.image_size = bundle.image_size
            self._text = self._prompt_embeddings()
        if self.model is not None:
            self.model.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        """What ran, for ``stats.json``."""
        d: dict[str, Any] = {"kind": self.cfg.kind, "threshold": self.cfg.threshold}
        if self.cfg.kind.startswith("resnet18"):
            d.update(weights=self.cfg.weights, image_size=self.image_size)
        if self.cfg.kind == "resnet18-places365":
            d["decision"] = self.cfg.decision
        if self.cfg.kind == "clip":
            d.update(clip_model=self.cfg.clip.model, clip_pretrained=self.cfg.clip.pretrained,
                     prompts=self.cfg.prompts.model_dump())
        return d

    # ------------------------------------------------------------ scoring

    def _prompt_embeddings(self) -> torch.Tensor:
        """(2, D) normalised mean text embedding for [indoor, outdoor]."""
        assert self._tower is not None
        rows = []
        for prompts in (self.cfg.prompts.indoor, self.cfg.prompts.outdoor):
            emb = self._tower.encode_texts(list(prompts)).mean(dim=0)
            rows.append(F.normalize(emb, dim=-1))
        return torch.stack(rows)

    def scores_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Outdoor scores from a resnet kind's raw logits (N, 365) or (N, 2)."""
        logits = logits.detach().float().cpu()
        if self.cfg.kind == "resnet18-places365":
            assert self._outdoor is not None
            probs = logits.softmax(dim=1)
            if self.cfg.decision == "top10_vote":
                # Reference rule: the top-10 categories vote; the count is exact in float64.
                top = probs.topk(TOP_K_VOTE, dim=1).indices
                return (self._outdoor[top].sum(dim=1).double() / TOP_K_VOTE).numpy()
            return (probs * self._outdoor.float()).sum(dim=1).clamp(0, 1).double().numpy()
        if self.cfg.kind == "resnet18-binary":
            return logits.softmax(dim=1)[:, 1].double().numpy()
        raise ValueError(f"scores_from_logits needs a resnet kind, filter.kind is {self.cfg.kind}")

    @torch.inference_mode()
    def _score_batch(self, images: Sequence[bytes], offset: int) -> np.ndarray:
        pil = [_decode_rgb(b, offset + i) for i, b in enumerate(images)]
        if self._tower is not None:
            assert self._text is not None
            x = torch.stack([self._tower.bundle.preprocess(im) for im in pil]).to(self.device)
            emb = self._tower.encode_images(x)
            scale = self._tower.clip.logit_scale.exp().float()
            return (scale * emb @ self._text.T).softmax(dim=1)[:, 1].double().cpu().numpy()
        assert self.model is not None and self.image_size is not None
        x = torch.stack([resnet_input(im, self.image_size) for im in pil]).to(self.device)
        return self.scores_from_logits(self.model(x))

    def score(self, images: Sequence[bytes], progress: bool = False) -> np.ndarray:
        """Outdoor score in [0, 1] for each encoded image (float64, same order).

        Args:
            images: encoded photos (JPEG/PNG bytes), e.g. ``PreparedPhoto.jpeg``.
            progress: show a tqdm bar over batches.
        """
        if self.cfg.kind == "none" or not images:
            return np.ones(len(images), dtype=np.float64)
        from tqdm import tqdm

        bs = self.cfg.batch_size
        starts = range(0, len(images), bs)
        out = [self._score_batch(images[s:s + bs], s)
               for s in tqdm(starts, desc=f"indoor filter ({self.cfg.kind})", unit="batch", disable=not progress)]
        return np.concatenate(out)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask: True where the photo counts as outdoors (score >= threshold)."""
        return np.asarray(scores, dtype=np.float64) >= self.cfg.threshold
