"""Export a trained checkpoint as an open_clip ``local-dir:`` model folder.

``open_clip.create_model_and_transforms('local-dir:DIR')`` reads
``DIR/open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``) and loads
the first weights file it prefers, ``open_clip_model.safetensors``, strictly.
``open_clip.get_tokenizer('local-dir:DIR')`` reads the same config; for a
Hugging Face text tower (``text_cfg.hf_tokenizer_name``) it loads the
tokenizer from DIR itself, so its files are saved there too.

The exported model is CLIP with every ``visual.*`` tensor replaced by the
trained satellite encoder's: image tower = satellite encoder, text tower =
CLIP's, so CLIP tools (clip_benchmark, clip-retrieval) use it unchanged. A
pixel-level checkpoint also writes ``pixel_projector.safetensors`` (the patch
head), loaded with :func:`load_pixel_model`. ``graft_export.json`` records
where the export came from. The folder is written to a temporary sibling and
renamed into place when complete.

What loads where:

- **RGB encoder** (image- or pixel-level): the folder above. open_clip,
  clip_benchmark and clip-retrieval load it unchanged.
- **Multispectral encoder** (``model.bands`` with more than R, G, B): open_clip's
  ViT takes 3 channels, so no open_clip tool can run it. The folder holds the same
  ``open_clip_config.json`` (architecture, tokenizer, preprocessing) but the weights
  are ``multispectral_model.safetensors``, whose patch embedding reads N bands, and
  ``graft_export.json`` records the band list and per-band normalisation.
  :func:`load_multispectral_export` (graft's own loader) returns the model as an
  object with ``encode_image`` / ``encode_text`` (the CLIP_benchmark model
  interface) plus its tokenizer and band normalisation. open_clip's ``local-dir:``
  loader refuses the folder (its strict load names the N-band patch embedding
  keys) rather than loading something else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from graft.errors import GraftError
from graft.storage import atomic_dir

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MULTISPECTRAL_WEIGHTS_FILE = "multispectral_model.safetensors"
PROJECTOR_FILE = "pixel_projector.safetensors"
EXPORT_INFO = "graft_export.json"
_PROJECTOR_PREFIX = "projector."


class ExportError(GraftError, RuntimeError):
    """The checkpoint cannot be exported as an open_clip model; the message says why."""


def _json_ready(cfg: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; cloning makes each one its own.
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write an open_clip ``local-dir:`` folder for a checkpoint (or a run folder's newest valid one).

    Args:
        ckpt_path: checkpoint folder ``.../checkpoints/step-NNNNNNN`` or a run folder.
        out_dir: the export folder. If it exists it must be a previous export (it is replaced);
            any other non-empty folder is refused rather than deleted.

    Returns:
        ``out_dir``.

    Raises:
        ExportError: the CLIP config cannot be found, the encoder's ``visual.*`` keys do not match
            CLIP's, or ``out_dir`` is a non-empty folder that is not an export.
    """
    import copy

    import open_clip

    from graft.models.checkpoint import band_norm_of, load_encoder, resolve_checkpoint
    from graft.models.clip_tower import spec_record
    from graft.models.satellite import add_bands

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
        raise ExportError(f"{out_dir} exists and is not a graft/open_clip export; refusing to replace it. "
                          "Choose an empty or new folder.")
    ckpt = resolve_checkpoint(ckpt_path)
    encoder, bundle, meta = load_encoder(ckpt)
    spec = bundle.spec
    lookup = spec.model if spec.model.startswith(("local-dir:", "hf-hub:")) else spec.model.replace("/", "-")
    model_cfg = open_clip.get_model_config(lookup)
    if model_cfg is None:
        raise ExportError(f"open_clip has no config for CLIP model {spec.model!r}; the checkpoint's tower must be "
                          "a registered open_clip name, local-dir: or hf-hub: model")
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(bundle.model))
    norm = band_norm_of(meta)
    reference = bundle.model
    if norm is not None:  # CLIP with the encoder's N-band patch embedding: the keys the export must hold
        reference = copy.deepcopy(bundle.model)
        add_bands(reference.visual, norm.channels)

    clip_state = reference.state_dict()
    enc_state = encoder.state_dict()
    visual_keys = {k for k in clip_state if k.startswith("visual.")}
    enc_visual = {k for k in enc_state if k.startswith("visual.")}
    if visual_keys != enc_visual:
        raise ExportError(f"checkpoint {ckpt}: encoder visual keys differ from {spec.model}'s "
                          f"(missing {sorted(visual_keys - enc_visual)[:5]}, extra {sorted(enc_visual - visual_keys)[:5]})")
    other = set(enc_state) - enc_visual - {k for k in enc_state if k.startswith(_PROJECTOR_PREFIX)}
    if other:
        raise ExportError(f"checkpoint {ckpt}: unexpected encoder keys {sorted(other)[:5]}")
    for k in visual_keys:
        if clip_state[k].shape != enc_state[k].shape:
            raise ExportError(f"{k}: shape {tuple(enc_state[k].shape)} in the checkpoint vs "
                              f"{tuple(clip_state[k].shape)} in {spec.model}")
    merged = {k: (enc_state[k] if k in visual_keys else v) for k, v in clip_state.items()}
    projector = {k: v for k, v in enc_state.items() if k.startswith(_PROJECTOR_PREFIX)}
    if meta["kind"] == "pixel" and not projector:
        raise ExportError(f"checkpoint {ckpt} is pixel-level but holds no projector.* weights")

    info = {
        "format": "graft-export-1",
        "kind": meta["kind"],
        "step": meta.get("step"),
        "source_checkpoint": str(Path(ckpt).resolve()),
        "base_clip": spec.model_dump(),
        "base_clip_record": spec_record(bundle),
        "grid_size": getattr(encoder, "grid_size", None) if meta["kind"] == "pixel" else None,
        "bands": norm.to_json() if norm else None,
        "loads_with": ("graft.evaluation.export.load_multispectral_export" if norm else
                       "open_clip.create_model_and_transforms('local-dir:DIR')"),
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(
            _json_ready({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}), indent=2))
        weights = MULTISPECTRAL_WEIGHTS_FILE if norm else WEIGHTS_FILE
        save_file(_tensors(merged), str(tmp / weights), metadata={"format": "pt"})
        if projector:
            save_file(_tensors(projector), str(tmp / PROJECTOR_FILE), metadata={"format": "pt"})
        hf_name = model_cfg.get("text_cfg", {}).get("hf_tokenizer_name")
        if hf_name:
            # open_clip loads an HF tokenizer for local-dir: models from the folder itself.
            hf_tok = getattr(bundle.tokenizer, "tokenizer", None)
            if hf_tok is None or not hasattr(hf_tok, "save_pretrained"):
                raise ExportError(f"{spec.model} uses HF tokenizer {hf_name!r} but it cannot be saved into the export")
            hf_tok.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(_json_ready(info), indent=2, sort_keys=True))
    log.info("exported %s (%s-level, step %s) to %s", ckpt, meta["kind"], meta.get("step"), out_dir)
    return out_dir


@dataclass
class MultispectralExport:
    """A multispectral export, loaded.

    Attributes:
        model: open_clip's CLIP with an N-band image tower: ``encode_image(images)`` on
            (B, N, H, W) batches normalised with ``band_norm``, ``encode_text(tokens)``.
        tokenizer: ``list[str] -> LongTensor`` for ``encode_text``.
        band_norm: the bands the image tower reads (R, G, B first) and each one's normalisation:
            ``band_norm.normalize(graft.imagery.tile_to_channels(tile, tile_bands, band_norm.bands))``.
        preprocess_cfg: open_clip's preprocessing config (``size`` is the input side).
        info: ``graft_export.json``.
    """

    model: Any
    tokenizer: Any
    band_norm: Any  # graft.imagery.BandNorm
    preprocess_cfg: dict[str, Any]
    info: dict[str, Any]


def read_export_info(export_dir: str | Path) -> dict[str, Any]:
    """``graft_export.json`` of an export folder ({} for a folder without one)."""
    f = Path(export_dir) / EXPORT_INFO
    return json.loads(f.read_text()) if f.is_file() else {}


def load_multispectral_export(export_dir: str | Path, device: str | torch.device = "cpu") -> MultispectralExport:
    """Load a multispectral export (graft's loader; open_clip's ViT takes 3 channels only).

    Raises:
        ExportError: the folder is not a multispectral export (an RGB export loads with open_clip).
    """
    import open_clip

    from graft.imagery import BandNorm
    from graft.models.satellite import add_bands

    export_dir = Path(export_dir)
    info = read_export_info(export_dir)
    weights = export_dir / MULTISPECTRAL_WEIGHTS_FILE
    if not info.get("bands") or not weights.is_file():
        raise ExportError(f"{export_dir} is not a multispectral graft export (no {MULTISPECTRAL_WEIGHTS_FILE} and "
                          f"band list); an RGB export loads with open_clip.create_model_and_transforms"
                          f"('local-dir:{export_dir}')")
    norm = BandNorm.from_json(info["bands"])
    # The architecture (and tokenizer) from the folder's open_clip config; the weights are graft's N-band ones.
    model = open_clip.create_model(f"local-dir:{export_dir}", load_weights=False, pretrained_text=False,
                                   device="cpu")
    add_bands(model.visual, norm.channels)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return MultispectralExport(model=model.to(device).eval(), tokenizer=open_clip.get_tokenizer(f"local-dir:{export_dir}"),
                               band_norm=norm, preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)),
                               info=info)


def load_pixel_model(export_dir: str | Path, device: str | torch.device = "cpu"):
    """The pixel-level encoder of an export: open_clip's image tower plus ``pixel_projector.safetensors``.

    Returns:
        A :class:`graft.models.satellite.PixelLevelEncoder` in eval mode; ``forward(images)`` gives
        normalised (B, P, D) patch embeddings.

    Raises:
        FileNotFoundError: the folder has no projector (it was exported from an image-level checkpoint).
    """
    import open_clip

    from graft.models.satellite import PixelLevelEncoder

    export_dir = Path(export_dir)
    proj_file = export_dir / PROJECTOR_FILE
    if not proj_file.is_file():
        raise FileNotFoundError(f"{proj_file} not found: {export_dir} is not a pixel-level export "
                                "(export a checkpoint trained with model.kind=pixel)")
    if read_export_info(export_dir).get("bands"):
        model = load_multispectral_export(export_dir).model
    else:
        model = open_clip.create_model(f"local-dir:{export_dir}", device="cpu")
    encoder = PixelLevelEncoder(model.visual)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(_PROJECTOR_PREFIX)}
    state.update(load_file(str(proj_file)))
    encoder.load_state_dict(state, strict=True)
    return encoder.to(device).eval()


def run_export_command(args) -> int:
    """``graft export CHECKPOINT OUT_DIR``."""
    out = export_checkpoint(args.checkpoint, args.out_dir)
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {args.checkpoint} -> {out}\n  files: {', '.join(files)}")
    bands = read_export_info(out).get("bands")
    if bands:
        print(f"  multispectral ({', '.join(bands['bands'])}): open_clip's ViT takes 3 channels, so load it with\n"
              f"  graft.evaluation.export.load_multispectral_export('{out}') (encode_image / encode_text)")
        return 0
    print(f"  load with: open_clip.create_model_and_transforms('local-dir:{out}')")
    if (out / PROJECTOR_FILE).is_file():
        print(f"  patch model: graft.evaluation.export.load_pixel_model('{out}')")
    return 0
