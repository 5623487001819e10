"""Satellite encoders: trainable copies of CLIP's image tower.

* :class:`ImageLevelEncoder`: one L2-normalised embedding per tile (CLIP's
  pooled output).
* :class:`PixelLevelEncoder`: the same backbone; every patch token goes through
  a projector (LayerNorm + Linear) initialised from CLIP's ``ln_post`` and
  ``proj``, giving one normalised embedding per patch, (B, P, D). At
  initialisation a patch token is therefore projected exactly as CLIP projects
  its class token.

Both keep the open_clip ``VisionTransformer`` as ``self.visual`` so its state
dict drops straight into an open_clip model on export.

Both take N input channels (``in_chans``; 3 for RGB). A multispectral encoder's
patch embedding (:class:`MultispectralPatchEmbedding`) keeps CLIP's weights on
R, G, B and starts every further band at zero, so at step 0 it computes exactly
what the RGB CLIP tower computes on the R, G, B channels, whatever the other
bands hold; training grows the use of the extra bands from there. Everything
after the patch embedding is the same network for any N.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _check_vit(visual: nn.Module) -> None:
    missing = [a for a in ("conv1", "transformer", "ln_post", "proj", "_embeds") if not hasattr(visual, a)]
    if missing:
        raise TypeError(
            f"satellite encoders need an open_clip VisionTransformer image tower; {type(visual).__name__} "
            f"lacks {missing}. Use a ViT CLIP model (e.g. ViT-B-16-quickgelu)."
        )


class MultispectralPatchEmbedding(nn.Module):
    """CLIP's patch embedding on R, G, B plus a zero-initialised one on every further band, summed.

    Keeping CLIP's 3-channel convolution as it is (rather than widening it) makes
    step 0 exact, not merely close: the RGB term is the very computation of the
    RGB tower, and the extra term adds exact zeros.
    """

    def __init__(self, rgb: nn.Conv2d, extra_bands: int):
        super().__init__()
        self.rgb = rgb
        self.extra = nn.Conv2d(extra_bands, rgb.out_channels, kernel_size=rgb.kernel_size, stride=rgb.stride,
                               padding=rgb.padding, bias=False).to(rgb.weight.device, rgb.weight.dtype)
        nn.init.zeros_(self.extra.weight)

    @property
    def in_channels(self) -> int:
        return self.rgb.in_channels + self.extra.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the encoder reads {self.in_channels} bands (R, G, B + {self.extra.in_channels}); "
                             f"got a ({', '.join(map(str, x.shape))}) batch")
        return self.rgb(x[:, :3]) + self.extra(x[:, 3:])


def add_bands(visual: nn.Module, in_chans: int) -> None:
    """Make ``visual`` read ``in_chans`` channels, R, G, B first (see :class:`MultispectralPatchEmbedding`)."""
    if in_chans == 3:
        return
    if in_chans < 3:
        raise ValueError(f"in_chans={in_chans}: an encoder reads at least R, G, B")
    visual.conv1 = MultispectralPatchEmbedding(visual.conv1, in_chans - 3)


class ImageLevelEncoder(nn.Module):
    """One L2-normalised embedding per tile; ``in_chans`` input channels (R, G, B first)."""

    kind = "image"

    def __init__(self, clip_visual: nn.Module, in_chans: int = 3):
        super().__init__()
        _check_vit(clip_visual)
        self.visual = copy.deepcopy(clip_visual)
        add_bands(self.visual, in_chans)
        for p in self.visual.parameters():
            p.requires_grad_(True)

    @property
    def in_chans(self) -> int:
        return int(self.visual.conv1.in_channels)

    @property
    def patch_size(self) -> int:
        ps = self.visual.patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    @property
    def image_size(self) -> int:
        s = self.visual.image_size
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    # CLIP_benchmark-style interface, so evaluation treats every model alike.
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        out = self.visual(images)
        return F.normalize(out, dim=-1) if normalize else out


class PixelLevelEncoder(ImageLevelEncoder):
    """One normalised embedding per patch, (B, P, D); ``in_chans`` input channels (R, G, B first)."""

    kind = "pixel"

    def __init__(self, clip_visual: nn.Module, in_chans: int = 3):
        super().__init__(clip_visual, in_chans)
        proj = self.visual.proj  # (width, embed_dim)
        width, dim = proj.shape
        self.projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        with torch.no_grad():
            self.projector[0].load_state_dict(self.visual.ln_post.state_dict())
            self.projector[1].weight.copy_(proj.t())
            self.projector[1].bias.zero_()

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Final-layer tokens before pooling: (B, 1 + P, width)."""
        x = self.visual._embeds(images)
        return self.visual.transformer(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised patch embeddings, (B, P, D), patches in row-major order."""
        tokens = self.patch_tokens(images)
        return F.normalize(self.projector(tokens[:, 1:]), dim=-1)

    def forward_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embedding (B, D), patch embeddings (B, P, D)) from one pass."""
        tokens = self.patch_tokens(images)
        pooled, _ = self.visual._pool(tokens)
        image = F.normalize(pooled @ self.visual.proj, dim=-1)
        return image, F.normalize(self.projector(tokens[:, 1:]), dim=-1)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.forward_both(images)[0] if normalize else self.visual(images)


ENCODERS = {"image": ImageLevelEncoder, "pixel": PixelLevelEncoder}


def build_encoder(kind: str, clip_visual: nn.Module, in_chans: int = 3) -> ImageLevelEncoder:
    """A satellite encoder of ``kind`` (``image`` or ``pixel``) from CLIP's image tower, reading ``in_chans`` channels."""
    if kind not in ENCODERS:
        raise ValueError(f"model.kind must be one of {sorted(ENCODERS)}, got {kind!r}")
    return ENCODERS[kind](clip_visual, in_chans)
