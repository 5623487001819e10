"""The frozen CLIP tower: any open_clip model spec, loaded once, used without gradients.

A spec is a model name plus ``pretrained``, exactly as open_clip takes them:
``("ViT-B-16-quickgelu", "openai")``, ``("ViT-B-16", "/path/weights.bin")``,
``("local-dir:/models/clip", None)`` or ``("hf-hub:org/repo", None)``.
graft's own tiny architectures (``graft-tiny-vit`` ...) live as JSON in
``graft/models/model_configs`` and are registered with open_clip on import,
the same way open_clip ships its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from graft.models.clip_spec import MODEL_CONFIG_DIR, ClipSpec

open_clip.add_model_config(MODEL_CONFIG_DIR)


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


def cached_weights(spec: ClipSpec) -> tuple[bool, str]:
    """Whether the tower's weights are on this machine (a file, a folder, or open_clip's download cache).

    Nothing is downloaded. Returns ``(present, detail)``; ``detail`` names the file found or what
    would have to be downloaded.
    """
    import os

    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    def in_hf_cache(repo: str, names: list[str]) -> str | None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return hit
        return None

    def hf_names(filename: str) -> list[str]:
        names = [filename]
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        return names

    if spec.model.startswith("local-dir:"):
        folder = Path(spec.model[len("local-dir:"):])
        found = [p for pat in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(pat)]
        return (bool(found), f"{found[0]}" if found else f"{folder} has no .safetensors/.bin/.pth weights file")
    if spec.model.startswith("hf-hub:"):
        repo = spec.model[len("hf-hub:"):]
        config = in_hf_cache(repo, [HF_CONFIG_NAME])
        weights = in_hf_cache(repo, hf_names(HF_WEIGHTS_NAME))
        if config and weights:
            return True, f"{weights} (Hugging Face cache)"
        return False, f"{spec.model} is not in the Hugging Face cache; it would be downloaded"
    if not spec.pretrained:
        return True, f"{spec.model} with random weights (no pretrained weights needed)"
    if Path(spec.pretrained).is_file():
        return True, spec.pretrained
    cfg = open_clip.get_pretrained_cfg(spec.model.replace("/", "-"), spec.pretrained)
    if not cfg:
        return False, f"clip.pretrained={spec.pretrained!r} is neither a pretrained tag of {spec.model} nor a file"
    if cfg.get("hf_hub"):
        # open_clip's convention: 'org/repo/file.bin', or 'org/repo/' for the default file name.
        filename = os.path.basename(cfg["hf_hub"]) or HF_WEIGHTS_NAME
        repo = os.path.dirname(cfg["hf_hub"]) if os.path.basename(cfg["hf_hub"]) else cfg["hf_hub"].rstrip("/")
        hit = in_hf_cache(repo, hf_names(filename))
        if hit:
            return True, f"{hit} (Hugging Face cache)"
    if cfg.get("url"):
        target = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if target.is_file():
            return True, str(target)
    where = cfg.get("hf_hub") or cfg.get("url")
    return False, (f"{spec.model} ({spec.pretrained}) weights are not cached; they would be downloaded from {where}. "
                   "Download them where there is network, or set clip.pretrained to a local weights file")
