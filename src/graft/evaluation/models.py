"""The models an evaluation compares, each behind the same CLIP-style interface.

Every evaluation function takes a model exposing ``encode_image(images)`` and
``encode_text(tokens)`` (the open_clip ``CLIP`` interface, as CLIP_benchmark
does), a tokenizer, data, class names and templates. This module turns each
kind of entry in an evaluation config into such a model:

* a training **checkpoint** (``graft.models.checkpoint.load_encoder``): the
  trained satellite encoder as image tower, CLIP's text tower;
* an **export** folder (``graft export``): loaded through open_clip's own
  ``local-dir:`` path, exactly as outside tools load it;
* a **CLIP spec**: the frozen CLIP model itself (the baseline).

For segmentation each model also supplies a patch encoder: the trained pixel
head of a pixel-level model, otherwise the ViT's own patch tokens through its
``ln_post`` + ``proj`` (:class:`~graft.models.satellite.PixelLevelEncoder`
untrained), which for frozen CLIP is the standard dense baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graft.imagery import BandNorm, tile_to_channels
from graft.models.clip_tower import ClipSpec, load_clip, spec_record
from graft.models.satellite import PixelLevelEncoder


class ImageTextModel(Protocol):
    """What every evaluation needs from a model (the open_clip ``CLIP`` interface)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...


class GraftClipModel(nn.Module):
    """A trained satellite encoder as the image tower, next to CLIP's (frozen) text tower."""

    def __init__(self, encoder: nn.Module, clip_model: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.clip = clip_model

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encoder.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        out = self.clip.encode_text(tokens)
        return F.normalize(out, dim=-1) if normalize else out


@dataclass
class LoadedModel:
    """One model under evaluation, with everything the tasks need to run it.

    Attributes:
        model: exposes ``encode_image`` / ``encode_text``.
        tokenizer: ``list[str] -> LongTensor`` for ``encode_text``.
        preprocess: the model's CLIP eval transform (PIL -> tensor).
        preprocess_cfg: ``{"size", "mean", "std", "interpolation", ...}`` (open_clip's preprocess config).
        clip_record: spec record of the CLIP tower whose text/ground space the model lives in.
        patch_source: ``trained`` (a pixel-level head) or ``clip_patch_tokens``.
        band_norm: a multispectral model's bands and their normalisation; None for an RGB model
            (it reads images' R, G, B through ``preprocess``).
    """

    name: str
    model: Any
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable
    preprocess_cfg: dict[str, Any]
    clip_record: dict[str, Any]
    description: str
    patch_source: str
    _patch_factory: Callable[[], PixelLevelEncoder]
    _patch: PixelLevelEncoder | None = None
    band_norm: BandNorm | None = None

    def tile_input(self, array: np.ndarray, tile_bands: Sequence[str] | None) -> torch.Tensor:
        """A (bands, H, W) tile or benchmark image -> the model's normalised (C, size, size) input.

        A multispectral model reads its band list (R, G, B stretched as for RGB, further bands in the
        file's units) with the normalisation it was trained with; an RGB model reads the image's R, G, B
        with CLIP's. The image is resized (shorter side, bicubic, antialiased) and centre-cropped to the
        model's input size, as CLIP's preprocessing does.

        Raises:
            graft.imagery.BandError: the image lacks a band the model reads.
        """
        norm = self.band_norm
        channels = tile_to_channels(array, tile_bands, norm.bands if norm else None)
        x = torch.from_numpy(channels)
        size = int(self.preprocess_cfg["size"])
        if x.shape[-2:] != (size, size):
            from torchvision.transforms.v2 import functional as TF

            x = TF.center_crop(TF.resize(x, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True),
                               [size, size])
        mean = norm.mean if norm else self.preprocess_cfg["mean"]
        std = norm.std if norm else self.preprocess_cfg["std"]
        return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)

    def patch_encoder(self) -> PixelLevelEncoder:
        """The (B, P, D) patch encoder, built on first use (copying a ViT is not free)."""
        if self._patch is None:
            self._patch = self._patch_factory().eval()
        return self._patch

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        if self._patch is not None:
            self._patch.to(device)
        return self


def _patch_from_visual(visual: nn.Module) -> Callable[[], PixelLevelEncoder]:
    return lambda: PixelLevelEncoder(visual)


def _preprocess_cfg(clip_model: nn.Module) -> dict[str, Any]:
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(clip_model))
    size = cfg.get("size")
    cfg["size"] = int(size[0] if isinstance(size, (tuple, list)) else size)
    return cfg


def load_checkpoint_model(name: str, checkpoint: str | Path, device: str = "cpu") -> LoadedModel:
    """A training checkpoint (or run folder: its newest valid checkpoint)."""
    from graft.models.checkpoint import band_norm_of, load_encoder

    encoder, bundle, meta = load_encoder(checkpoint, device=device)
    norm = band_norm_of(meta)
    bundle.model.eval()
    model = GraftClipModel(encoder, bundle.model).eval()
    if meta["kind"] == "pixel":
        factory, source = (lambda: encoder), "trained"
    else:
        factory, source = _patch_from_visual(encoder.visual), "clip_patch_tokens"
    return LoadedModel(
        name=name, model=model, tokenizer=bundle.tokenizer, preprocess=bundle.preprocess,
        preprocess_cfg=_preprocess_cfg(bundle.model), clip_record=spec_record(bundle),
        description=f"{meta['kind']}-level checkpoint {checkpoint} (step {meta.get('step')}), "
        f"text tower {bundle.spec.model} (pretrained={bundle.spec.pretrained})"
        + (f", bands {', '.join(norm.bands)}" if norm else ""),
        patch_source=source, _patch_factory=factory, band_norm=norm,
    )


def load_export_model(name: str, export_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """A ``graft export`` folder, loaded through open_clip's ``local-dir:`` path."""
    from graft.evaluation.export import PROJECTOR_FILE, load_pixel_model, read_export_info

    export_dir = Path(export_dir)
    info = read_export_info(export_dir)
    if info.get("bands"):
        return _load_multispectral_export_model(name, export_dir, info, device)
    bundle = load_clip(ClipSpec(model=f"local-dir:{export_dir}", pretrained=None), device=device)
    if (export_dir / PROJECTOR_FILE).is_file():
        factory, source = (lambda: load_pixel_model(export_dir, device=device)), "trained"
    else:
        factory, source = _patch_from_visual(bundle.model.visual), "clip_patch_tokens"
    return LoadedModel(
        name=name, model=bundle.model.eval(), tokenizer=bundle.tokenizer, preprocess=bundle.preprocess,
        preprocess_cfg=_preprocess_cfg(bundle.model),
        # The export's own weights differ from the CLIP its ground cache was made with; the record of
        # that base CLIP (written at export time) is what alignment must compare against.
        clip_record=info.get("base_clip_record", spec_record(bundle)),
        description=f"export {export_dir} ({info.get('kind', 'unknown')}-level)",
        patch_source=source, _patch_factory=factory,
    )


def _load_multispectral_export_model(name: str, export_dir: Path, info: dict[str, Any], device: str) -> LoadedModel:
    from graft.evaluation.export import PROJECTOR_FILE, load_multispectral_export, load_pixel_model

    loaded = load_multispectral_export(export_dir, device=device)
    if (export_dir / PROJECTOR_FILE).is_file():
        factory, source = (lambda: load_pixel_model(export_dir, device=device)), "trained"
    else:
        factory, source = _patch_from_visual(loaded.model.visual), "clip_patch_tokens"
    return LoadedModel(
        name=name, model=loaded.model, tokenizer=loaded.tokenizer, preprocess=None,
        preprocess_cfg=_preprocess_cfg(loaded.model), clip_record=info["base_clip_record"],
        description=f"multispectral export {export_dir} ({info.get('kind')}-level, bands "
        f"{', '.join(loaded.band_norm.bands)})",
        patch_source=source, _patch_factory=factory, band_norm=loaded.band_norm,
    )


def load_clip_model(name: str, spec: ClipSpec, device: str = "cpu") -> LoadedModel:
    """The frozen CLIP model itself, applied to satellite images (the baseline)."""
    bundle = load_clip(spec, device=device)
    return LoadedModel(
        name=name, model=bundle.model.eval(), tokenizer=bundle.tokenizer, preprocess=bundle.preprocess,
        preprocess_cfg=_preprocess_cfg(bundle.model), clip_record=spec_record(bundle),
        description=f"frozen CLIP {spec.model} (pretrained={spec.pretrained})",
        patch_source="clip_patch_tokens", _patch_factory=_patch_from_visual(bundle.model.visual),
    )


@torch.no_grad()
def encode_texts(model: Any, tokenizer: Callable, texts: list[str], device: str | torch.device = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N, D), float32, on CPU."""
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        out.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def class_embeddings(model: Any, tokenizer: Callable, classnames: list[str], templates: list[str],
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Zero-shot classifier weights (C, D): per class, the mean over templates of normalised text
    embeddings, renormalised (Radford et al., 2021)."""
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be non-empty and each contain '{{}}', got {templates}")
    texts = [t.replace("{}", c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)
