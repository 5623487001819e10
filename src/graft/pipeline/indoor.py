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
import math
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
from graft.sources.base import Rejections
from graft.storage import atomic_path, atomic_write_json

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


def _resnet18(num_classes: int) -> torch.nn.Module:
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
            model = _resnet18(365)
            _strict_load(model, load_resnet_state(path), str(cfg.weights),
                         "a torchvision ResNet18 with 365 Places365 classes (resnet18_places365.pth.tar)")
            self.model, self.image_size = model, cfg.image_size or PLACES_IMAGE_SIZE
        elif cfg.kind == "resnet18-binary":
            path = resolve_weights(cfg)
            meta = _binary_meta(path)
            if meta.get("classes", ",".join(BINARY_CLASSES)) != ",".join(BINARY_CLASSES):
                raise ValueError(f"filter.weights {cfg.weights}: classes {meta['classes']!r}, expected indoor,outdoor")
            model = _resnet18(2)
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


# ---------------------------------------------------------------- graft filter-train

_TRAIN_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _load_rgb_file(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - name the file that broke training
        raise ValueError(f"filter-train: cannot decode {path}: {type(e).__name__}: {e}") from None


class _Split(torch.utils.data.Dataset):
    """A subset of an ImageFolder's samples with its own transform."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(_load_rgb_file(path)), label


def _stratified_split(targets: list[int], val_fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == cls]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        n_val = min(len(idx) - 1, max(1, math.ceil(val_fraction * len(idx))))
        val_idx += perm[:n_val]
        train_idx += perm[n_val:]
    return sorted(train_idx), sorted(val_idx)


def _load_init(model: torch.nn.Module, init: str) -> None:
    """Load every weight but the classification head from ``init``; anything else missing is an error."""
    path = Path(init).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--init: file not found: {init} (a ResNet18 state dict, e.g. "
                                f"resnet18_places365.pth.tar from {PLACES365_RESNET18_URL})")
    state = {k: v for k, v in load_resnet_state(path).items() if not k.startswith("fc.")}
    try:
        # strict=False only so that the (replaced) head may be absent; everything else is checked below.
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        raise ValueError(f"--init {init} is not a torchvision ResNet18 state dict: "
                         + " ".join(str(e).splitlines()[:3])[:600]) from None
    missing = sorted(set(result.missing_keys) - {"fc.weight", "fc.bias"})
    if missing or result.unexpected_keys:
        raise ValueError(f"--init {init} is not a torchvision ResNet18 state dict: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_binary_filter(
    folder: str | Path,
    out: str | Path,
    epochs: int = 3,
    batch_size: int = 32,
    image_size: int = 128,
    lr: float = 1e-3,
    init: str | None = None,
    seed: int = 0,
    device: str | None = None,
    val_fraction: float = 0.15,
) -> dict[str, Any]:
    """Fine-tune a 2-class (indoor, outdoor) ResNet18 on ``folder/indoor`` and ``folder/outdoor``.

    A stratified ``val_fraction`` of each class is held out for the validation
    accuracy. Training uses light augmentation (random resized crop, flip,
    colour jitter), AdamW with a cosine schedule, and is deterministic for a
    given seed on CPU. The caller's global RNG state is left untouched.

    Args:
        folder: folder with ``indoor/`` and ``outdoor/`` sub-folders of images.
        out: output ``.safetensors`` file; ``out + ".json"`` gets the metadata.
        epochs: passes over the training split.
        batch_size: images per step.
        image_size: square training and inference input size.
        lr: peak learning rate.
        init: optional ResNet18 weights (e.g. Places365) for everything but the head; random if None.
        seed: seed for the split, the initialisation, shuffling and augmentation.
        device: torch device; None picks cuda when available.
        val_fraction: share of each class held out.

    Returns:
        The metadata written to ``out + ".json"`` (classes, sizes, accuracies, paths, rejections).
    """
    from safetensors.torch import save_file
    from torchvision import datasets, transforms
    from tqdm import tqdm

    folder, out = Path(folder), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"filter-train: output {out} must end in .safetensors")
    for cls in BINARY_CLASSES:
        if not (folder / cls).is_dir():
            raise FileNotFoundError(f"filter-train: {folder / cls} not found; FOLDER must hold indoor/ and outdoor/")
    if epochs < 1 or batch_size < 1 or image_size < 16 or lr <= 0:
        raise ValueError(f"filter-train: need epochs>=1, batch_size>=1, image_size>=16, lr>0 "
                         f"(got {epochs}, {batch_size}, {image_size}, {lr})")

    rejections = Rejections()

    def usable(path: str) -> bool:
        if not path.lower().endswith(_TRAIN_EXTENSIONS):
            rejections.add("not_an_image", path, "extension not in " + " ".join(_TRAIN_EXTENSIONS))
            return False
        try:
            with Image.open(path):  # header only: cheap, and catches non-images early
                return True
        except Exception as e:  # noqa: BLE001
            rejections.add("corrupt_image", path, f"{type(e).__name__}: {e}")
            return False

    base = datasets.ImageFolder(str(folder), is_valid_file=usable, allow_empty=True)
    if base.classes != list(BINARY_CLASSES):
        raise ValueError(f"filter-train: {folder} must hold exactly the sub-folders indoor/ and outdoor/, "
                         f"found {base.classes}")
    counts = [base.targets.count(i) for i in range(2)]
    if min(counts) < 2:
        raise ValueError(f"filter-train: need at least 2 usable images per class, found indoor={counts[0]}, "
                         f"outdoor={counts[1]} (rejected: {dict(rejections.counts)})")

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.2, 0.2, 0.2),
        transforms.ToTensor(),
        norm,
    ])

    def eval_tf(img: Image.Image) -> torch.Tensor:
        return resnet_input(img, image_size)  # exactly what IndoorFilter feeds at inference

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        train_idx, val_idx = _stratified_split(base.targets, val_fraction, gen)
        train_ds = _Split([base.samples[i] for i in train_idx], train_tf)
        val_ds = _Split([base.samples[i] for i in val_idx], eval_tf)
        # BatchNorm cannot train on a batch of one: drop a lone trailing sample.
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen,
                                                   drop_last=len(train_ds) % batch_size == 1)
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)

        model = _resnet18(2)
        if init:
            _load_init(model, init)
        model.to(dev)
        # foreach: one fused op per step instead of ~60 per-tensor ops (torch only defaults to it on GPU).
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
        total_steps = epochs * len(train_loader)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))

        train_acc = 0.0
        with tqdm(total=total_steps, desc="filter-train", unit="step") as bar:
            for epoch in range(epochs):
                model.train()
                correct = seen = 0
                for x, y in train_loader:
                    x, y = x.to(dev), y.to(dev)
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    correct += int((logits.argmax(dim=1) == y).sum())
                    seen += len(y)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
                train_acc = correct / max(seen, 1)
        val_acc = _accuracy(model, val_loader, dev)

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta_st = {"format": BINARY_FORMAT, "arch": "resnet18", "classes": ",".join(BINARY_CLASSES),
               "image_size": str(image_size)}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta_st)
    meta = {
        "format": BINARY_FORMAT,
        "arch": "resnet18",
        "classes": list(BINARY_CLASSES),
        "image_size": image_size,
        "train_accuracy_last_epoch": train_acc,
        "val_accuracy": val_acc,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "per_class": dict(zip(BINARY_CLASSES, counts, strict=True)),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "init": str(init) if init else None,
        "weights": str(out),
        "rejections": rejections.to_json(),
    }
    atomic_write_json(str(out) + ".json", meta)
    return meta


def run_filter_train_command(args: Any) -> int:
    """``graft filter-train FOLDER OUT``: train the binary indoor filter and print a summary."""
    meta = train_binary_filter(
        folder=args.folder, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, lr=args.lr, init=args.init, seed=args.seed,
    )
    rej = meta["rejections"]
    print(f"filter-train: {meta['n_train']} train / {meta['n_val']} val images "
          f"(indoor={meta['per_class']['indoor']}, outdoor={meta['per_class']['outdoor']})")
    if rej["total"]:
        print(f"  skipped {rej['total']} unusable files: {rej['counts']}")
    print(f"  train accuracy (last epoch, augmented): {meta['train_accuracy_last_epoch']:.3f}")
    print(f"  val accuracy: {meta['val_accuracy']:.3f}")
    print(f"  weights: {meta['weights']}  (metadata: {meta['weights']}.json)")
    print(f"  use it with: filter.kind=resnet18-binary filter.weights={meta['weights']}")
    return 0
