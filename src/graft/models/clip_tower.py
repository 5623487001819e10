"""The frozen CLIP tower: any open_clip model spec, loaded once, used without gradients.

A spec is a model name plus ``pretrained``, exactly as open_clip takes them:
``("ViT-B-16-quickgelu", "openai")``, ``("ViT-B-16", "/path/weights.bin")``,
``("local-dir:/models/clip", None)`` or ``("hf-hub:org/repo", None)``.
graft's own tiny architectures (``graft-tiny-vit`` ...) live as JSON in
``graft/models/model_configs`` and are registered with open_clip on import,
the same way open_clip ships its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from pydantic import field_validator

from graft.config import StrictModel

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


class ClipSpec(StrictModel):
    """Which CLIP tower to use. Defaults follow the paper: ViT-B/16 (QuickGELU), OpenAI weights."""

    model: str = "ViT-B-16-quickgelu"
    pretrained: str | None = "openai"
    precision: str = "fp32"

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v.startswith(("local-dir:", "hf-hub:")):
            if v.startswith("local-dir:") and not (Path(v[len("local-dir:"):]) / "open_clip_config.json").is_file():
                raise ValueError(f"{v}: folder has no open_clip_config.json")
            return v
        if v.replace("/", "-") not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {v!r}; see open_clip.list_models() or use local-dir:/hf-hub:")
        return v

    def fingerprint(self) -> str:
        """Identifies the weights: changes whenever the model or its weights file changes."""
        h = hashlib.sha256(f"{self.model}|{self.pretrained}".encode())
        p = Path(self.pretrained) if self.pretrained else None
        if p is not None and p.is_file():
            st = p.stat()
            h.update(f"{st.st_size}|{int(st.st_mtime)}".encode())
        elif self.model.startswith("local-dir:"):
            for f in sorted(Path(self.model[len("local-dir:"):]).glob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.name}|{st.st_size}|{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]


@dataclass
class ClipBundle:
    model: Any  # open_clip.CLIP
    preprocess: Any  # torchvision transform for PIL images (eval)
    tokenizer: Any
    spec: ClipSpec

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) is not None \
            else int(self.model.visual.output_dim)

    def preprocess_info(self) -> dict:
        """What the cache must agree on besides the weights: the image transform."""
        return {"image_size": self.image_size, "transform": repr(self.preprocess)}


def load_clip(spec: ClipSpec, device: str | torch.device = "cpu") -> ClipBundle:
    """Load an open_clip model from any spec; raises FileNotFoundError naming a missing local file."""
    pretrained = spec.pretrained
    if pretrained and not spec.model.startswith(("local-dir:", "hf-hub:")):
        is_tag = open_clip.get_pretrained_cfg(spec.model.replace("/", "-"), pretrained)
        if not is_tag and not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"clip.pretrained={pretrained!r} is neither a pretrained tag of {spec.model} "
                f"({open_clip.list_pretrained_tags_by_model(spec.model)}) nor an existing file"
            )
    kwargs = {} if spec.model.startswith(("local-dir:", "hf-hub:")) else {"pretrained": pretrained}
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.model, precision=spec.precision, device=device, **kwargs
    )
    tokenizer = open_clip.get_tokenizer(spec.model)
    model.eval()
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, spec=spec)


class FrozenClipTower(torch.nn.Module):
    """CLIP's image and text towers, in eval mode, with every parameter frozen.

    ``encode_images`` returns L2-normalised (N, D) float32 embeddings.
    """

    def __init__(self, bundle: ClipBundle):
        super().__init__()
        self.bundle = bundle
        self.clip = bundle.model
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    def train(self, mode: bool = True):  # noqa: D401 - the tower never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        tokens = self.bundle.tokenizer(texts).to(device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)


def spec_record(bundle: ClipBundle) -> dict:
    """What a ground-embedding cache stores about the tower that made it.

    Two records are compared by :func:`graft.dataset.embeddings.cache_spec_mismatch`.
    """
    return {
        "model": bundle.spec.model,
        "pretrained": bundle.spec.pretrained,
        "fingerprint": bundle.spec.fingerprint(),
        "preprocess": bundle.preprocess_info(),
        "embed_dim": bundle.embed_dim,
    }
