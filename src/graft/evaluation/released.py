"""``graft import``: the GRAFT authors' released checkpoints, converted into graft's checkpoint format.

The released files are PyTorch (Lightning) checkpoints whose state dict holds

* ``satellite_image_backbone.*``: a Hugging Face ``CLIPVisionModelWithProjection``
  (``openai/clip-vit-base-patch16`` architecture, QuickGELU);
* ``projector.0.*`` (LayerNorm(width)) and ``projector.1.*`` (Linear(width -> D),
  with or without bias): the pixel-level patch head;
* sometimes ``logit_scale``, sometimes everything under ``model.``, sometimes the
  whole dict under a ``state_dict`` key.

Image-level features are the backbone's ``image_embeds``
(``visual_projection(post_layernorm(CLS))``); pixel-level features are
``projector(last_hidden_state)`` of the patch tokens, L2-normalised. Both are
exactly what graft's :class:`~graft.models.satellite.PixelLevelEncoder` computes
once the Hugging Face weights sit in open_clip's ``VisionTransformer``:
``pre_layrnorm`` is ``ln_pre``, ``post_layernorm`` is ``ln_post``, the separate
q/k/v projections are concatenated into ``in_proj_weight`` and
``visual_projection.weight`` is ``proj`` transposed. The mapping is written once,
in :func:`hf_vision_to_open_clip`; a key it does not know, or one it needs and
does not find, stops the import with an error naming the key.

The text tower, tokenizer and preprocessing come from an open_clip spec
(default ``ViT-B-16-quickgelu`` / ``openai``, the tower GRAFT was trained
against). That spec's image tower fixes the architecture (width, depth, heads,
patch and image size); the released weights must fit it shape for shape.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from graft.models.clip_tower import ClipSpec

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "satellite_image_backbone."
PROJECTOR_PREFIX = "projector."
LOGIT_SCALE = "logit_scale"
_WRAPPER_PREFIXES = ("model.",)
# Older transformers versions saved this non-persistent buffer; it holds no weights (checked to be arange).
_POSITION_IDS = "vision_model.embeddings.position_ids"

# Hugging Face CLIP vision key -> open_clip VisionTransformer key, outside the encoder layers.
_HF_TO_OPEN_CLIP = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
# Within encoder layer i (HF ``vision_model.encoder.layers.i.``, open_clip ``transformer.resblocks.i.``).
_LAYER_HF_TO_OPEN_CLIP = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_QKV = ("q_proj", "k_proj", "v_proj")  # open_clip's in_proj stacks them in this order
_HF_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)$")


class ReleasedCheckpointError(ValueError):
    """A released checkpoint cannot be imported; the message names the key or file at fault."""


@dataclass
class ReleasedState:
    """The parts of a released checkpoint, prefixes stripped."""

    backbone: dict[str, torch.Tensor]  # Hugging Face CLIPVisionModelWithProjection keys
    projector: dict[str, torch.Tensor]  # '0.weight', '0.bias', '1.weight'[, '1.bias']
    logit_scale: float | None
    step: int | None  # the Lightning global_step, when the file records one


def read_released_state(path: str | Path, trust_pickle: bool = False) -> ReleasedState:
    """Read a released GRAFT checkpoint (``.ckpt``/``.pt``/``.pth`` pickle or ``.safetensors``).

    Args:
        path: the released file.
        trust_pickle: load a pickle that holds more than tensors and plain containers (some Lightning
            files keep hyper-parameters as objects). Only for files from a source you trust.

    Raises:
        ReleasedCheckpointError: the file is not a GRAFT checkpoint, or holds a key outside the layout.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released checkpoint {path} not found")
    step = None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as e:  # noqa: BLE001 - pickle errors have many types; say what to do
            if trust_pickle:
                raise ReleasedCheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({e})") from e
            raise ReleasedCheckpointError(
                f"{path}: not loadable as tensors only ({type(e).__name__}: {str(e).splitlines()[0]}). If the "
                "file comes from a source you trust, re-run with --trust-pickle") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning
        step = state.get("global_step")
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReleasedCheckpointError(f"{path}: expected a state dict of tensors (optionally under 'state_dict'), "
                                      f"got {type(state).__name__}")
    return split_released_state(state, str(path), step)


def split_released_state(state: dict[str, torch.Tensor], source: str = "checkpoint",
                         step: int | None = None) -> ReleasedState:
    """Strip a ``model.`` wrapper and split a released state dict into backbone / projector / logit scale.

    Raises:
        ReleasedCheckpointError: naming the first key that belongs to none of them.
    """
    for wrapper in _WRAPPER_PREFIXES:
        if state and all(k.startswith(wrapper) for k in state):
            state = {k[len(wrapper):]: v for k, v in state.items()}
    backbone, projector, logit_scale = {}, {}, None
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX):]] = value
        elif key.startswith(PROJECTOR_PREFIX):
            projector[key[len(PROJECTOR_PREFIX):]] = value
        elif key == LOGIT_SCALE:
            logit_scale = float(value.reshape(-1)[0])
        else:
            raise ReleasedCheckpointError(
                f"{source}: key {key!r} is not part of a released GRAFT checkpoint (expected "
                f"{BACKBONE_PREFIX}*, {PROJECTOR_PREFIX}* or {LOGIT_SCALE}, optionally under 'model.')")
    if not backbone:
        raise ReleasedCheckpointError(f"{source}: no {BACKBONE_PREFIX}* keys; this is not a released GRAFT "
                                      "checkpoint")
    allowed = {"0.weight", "0.bias", "1.weight", "1.bias"}
    for k in projector:
        if k not in allowed:
            raise ReleasedCheckpointError(f"{source}: key {PROJECTOR_PREFIX + k!r} does not map; the projector is "
                                          "LayerNorm (projector.0) + Linear (projector.1)")
    if projector and not {"0.weight", "0.bias", "1.weight"} <= set(projector):
        missing = sorted({"0.weight", "0.bias", "1.weight"} - set(projector))
        raise ReleasedCheckpointError(f"{source}: projector incomplete, missing {PROJECTOR_PREFIX}{missing[0]}")
    return ReleasedState(backbone=backbone, projector=projector, logit_scale=logit_scale, step=step)


def hf_vision_to_open_clip(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``CLIPVisionModelWithProjection`` state dict onto open_clip's ``VisionTransformer``.

    Raises:
        ReleasedCheckpointError: naming a key that does not map, or one the tower needs and lacks.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        layer = _HF_LAYER.match(key)
        if key in _HF_TO_OPEN_CLIP:
            out[_HF_TO_OPEN_CLIP[key]] = value
        elif key == "visual_projection.weight":
            out["proj"] = value.t().contiguous()  # nn.Linear (out, in) -> open_clip's x @ proj, (in, out)
        elif key == _POSITION_IDS:
            if not torch.equal(value.reshape(-1).long(), torch.arange(value.numel())):
                raise ReleasedCheckpointError(f"{BACKBONE_PREFIX}{key} is not 0..N-1; positions were permuted "
                                              "and cannot be mapped onto open_clip's positional embedding")
        elif layer and layer.group(2) in _LAYER_HF_TO_OPEN_CLIP:
            out[f"transformer.resblocks.{layer.group(1)}.{_LAYER_HF_TO_OPEN_CLIP[layer.group(2)]}"] = value
        elif layer and re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", layer.group(2)):
            qkv.setdefault(int(layer.group(1)), {})[layer.group(2)[len("self_attn."):]] = value
        else:
            raise ReleasedCheckpointError(f"{BACKBONE_PREFIX}{key} does not map onto open_clip's ViT image tower")
    for i, parts in sorted(qkv.items()):
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in _QKV]
            missing = [n for n in names if n not in parts]
            if missing:
                raise ReleasedCheckpointError(f"{BACKBONE_PREFIX}vision_model.encoder.layers.{i}.self_attn."
                                              f"{missing[0]} missing (q, k and v are needed together)")
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts[n] for n in names], dim=0)
    return out


def _check_quickgelu(visual: torch.nn.Module, spec: ClipSpec) -> None:
    from open_clip.transformer import QuickGELU

    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks or not isinstance(blocks[0].mlp.gelu, QuickGELU):
        raise ReleasedCheckpointError(
            f"clip spec {spec.model!r} builds an image tower without QuickGELU; the released GRAFT backbones "
            "are OpenAI CLIP ViTs (QuickGELU), and GELU would change every feature. Use a -quickgelu model "
            "such as ViT-B-16-quickgelu")


def released_encoder_state(released: ReleasedState, encoder_state: dict[str, torch.Tensor],
                           kind: str) -> dict[str, torch.Tensor]:
    """The graft encoder state dict (``visual.*`` [+ ``projector.*``]) for a released checkpoint.

    Args:
        released: the split released checkpoint.
        encoder_state: the state dict of the graft encoder it goes into (names and shapes to fill).
        kind: ``image`` or ``pixel``.

    Raises:
        ReleasedCheckpointError: a needed key is missing or a shape differs from the encoder's.
    """
    state = {f"visual.{k}": v for k, v in hf_vision_to_open_clip(released.backbone).items()}
    if kind == "pixel":
        proj = dict(released.projector)
        # A projector Linear without bias computes exactly what one with a zero bias does.
        proj.setdefault("1.bias", torch.zeros_like(encoder_state["projector.1.bias"]))
        state.update({f"{PROJECTOR_PREFIX}{k}": v for k, v in proj.items()})
    for key, want in encoder_state.items():
        if key not in state:
            raise ReleasedCheckpointError(f"released checkpoint lacks the weights for {key} (the open_clip tower "
                                          "needs it; was the file cut short, or is it another architecture?)")
        if tuple(state[key].shape) != tuple(want.shape):
            raise ReleasedCheckpointError(
                f"{key}: released weights have shape {tuple(state[key].shape)}, the clip spec's tower "
                f"{tuple(want.shape)}; pick the --clip-model whose image tower matches the released backbone")
    extra = sorted(set(state) - set(encoder_state))
    if extra:
        raise ReleasedCheckpointError(f"released weights for {extra[0]} have no place in the clip spec's tower "
                                      "(it has fewer layers than the released backbone); pick a matching --clip-model")
    return {k: state[k].to(encoder_state[k].dtype) for k in encoder_state}


def import_released(src: str | Path, out_dir: str | Path, kind: str | None = None, clip: ClipSpec | None = None,
                    trust_pickle: bool = False) -> Path:
    """Convert a released GRAFT checkpoint into a graft checkpoint under ``out_dir/checkpoints/``.

    Args:
        src: the released file.
        out_dir: the run folder to write (``graft eval``/``graft export``/``graft map`` take it).
        kind: ``image`` or ``pixel``; default ``pixel`` when the file has a projector, else ``image``.
        clip: text tower, tokenizer and preprocessing (default ``ViT-B-16-quickgelu`` / ``openai``).
        trust_pickle: see :func:`read_released_state`.

    Returns:
        The checkpoint folder written.

    Raises:
        ReleasedCheckpointError: the file does not fit the layout or the clip spec's image tower.
    """
    from graft.models.checkpoint import save_checkpoint
    from graft.models.clip_tower import load_clip
    from graft.models.satellite import build_encoder

    clip = clip or ClipSpec()
    released = read_released_state(src, trust_pickle=trust_pickle)
    kind = kind or ("pixel" if released.projector else "image")
    if kind == "pixel" and not released.projector:
        raise ReleasedCheckpointError(f"{src}: --kind pixel needs {PROJECTOR_PREFIX}* weights and the file has none")
    if kind == "image" and released.projector:
        raise ReleasedCheckpointError(f"{src}: the file holds a pixel-level projector ({PROJECTOR_PREFIX}*); import it "
                                      "with --kind pixel (an image-level import would drop it)")
    bundle = load_clip(clip)
    encoder = build_encoder(kind, bundle.model.visual)  # refuses a tower that is not an open_clip ViT
    _check_quickgelu(encoder.visual, clip)
    state = released_encoder_state(released, encoder.state_dict(), kind)
    encoder.load_state_dict(state, strict=True)
    record = {"source": str(Path(src).resolve()), "kind": kind, "released_step": released.step,
              "logit_scale": released.logit_scale,
              "projector_bias": "1.bias" in released.projector if released.projector else None}
    meta = {"kind": kind, "clip": clip.model_dump(), "imported_from": record}
    ckpt = save_checkpoint(out_dir, int(released.step or 0), encoder.state_dict(), {}, meta,
                           yaml.safe_dump({"imported_from": record, "clip": clip.model_dump()}, sort_keys=False))
    log.info("imported %s (%s-level) -> %s", src, kind, ckpt)
    return ckpt


def run_import_command(args) -> int:
    """``graft import RELEASED OUT_DIR``."""
    clip = ClipSpec(model=args.clip_model, pretrained=args.clip_pretrained)
    ckpt = import_released(args.released, args.out_dir, kind=args.kind, clip=clip, trust_pickle=args.trust_pickle)
    meta = json.loads((ckpt / "meta.json").read_text())
    print(f"imported {args.released} -> {ckpt}\n  {meta['kind']}-level, text tower {clip.model} "
          f"(pretrained={clip.pretrained})\n  next: graft eval (checkpoint: {args.out_dir}), "
          f"graft export {args.out_dir} OUT, graft map {args.out_dir} REGION")
    return 0
