"""Checkpoint folders: written by the trainer, read by resume, evaluation and export.

This module lives under ``models`` (not ``training``) so that evaluating or
exporting a checkpoint never imports the training stack.

Layout (docs/formats.md): ``step-NNNNNNN/`` holding ``model.safetensors``,
``trainer.pt``, ``meta.json`` (with a sha256 of every other file) and
``config.yaml``. The folder is renamed into place only when complete, and its
checksums are verified on load, so a torn or corrupted checkpoint is detected
and the previous good one used instead.

A multispectral encoder's ``meta.json`` holds ``bands``: the band list and the
per-channel normalisation (:class:`graft.imagery.BandNorm`) it was trained
with; an RGB encoder's has none (it reads the tile's R, G, B bands with CLIP's
normalisation).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from graft.errors import GraftError
from graft.imagery import BandNorm
from graft.storage import atomic_dir, clean_stale_temps, sha256_file

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
CHECKSUMMED = ("model.safetensors", "trainer.pt", "config.yaml")


class CheckpointError(GraftError, RuntimeError):
    """No usable checkpoint where one was asked for."""


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any] | None,
    meta: dict[str, Any],
    config_yaml: str,
    keep_last: int | None = None,
    keep_steps: tuple[int, ...] = (),
) -> Path:
    """Write one checkpoint folder atomically; optionally prune older ones, keeping ``keep_last``
    (and the checkpoints of ``keep_steps``, e.g. the best by validation score)."""
    final = checkpoint_dir(run_dir, step)
    # A temp folder beside the checkpoints can only be a save that was killed mid-write (one process,
    # rank 0, writes a run's checkpoints); each holds a whole checkpoint, so preemptions would pile them up.
    clean_stale_temps(final.parent)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        torch.save(trainer_state or {}, tmp / "trainer.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        meta = dict(meta, step=step, sha256={n: sha256_file(tmp / n) for n in CHECKSUMMED})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if keep_last:
        prune_checkpoints(run_dir, step, keep_last, keep_steps)
    return final


def checkpoint_step(path: str | Path) -> int:
    """The step of a ``step-NNNNNNN`` checkpoint folder."""
    return int(_STEP_DIR.match(Path(path).name).group(1))


def prune_checkpoints(run_dir: str | Path, step: int, keep_last: int, keep_steps: tuple[int, ...] = ()) -> list[Path]:
    """Remove all but the ``keep_last`` newest checkpoints up to ``step`` (the one just written),
    sparing those of ``keep_steps``.

    Checkpoints of higher steps are never removed here: they are not older than the one just
    written but belong to another run (the trainer refuses such a folder without ``--overwrite``),
    and pruning by step number would otherwise delete the new run's own checkpoints as it writes them.
    """
    mine = [c for c in list_checkpoints(run_dir) if checkpoint_step(c) <= step]
    removed = [c for c in mine[:-keep_last] if checkpoint_step(c) not in keep_steps]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def verify_checkpoint(path: str | Path) -> str | None:
    """None if the checkpoint at ``path`` is complete and its checksums match, else what is wrong."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        return "meta.json missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"meta.json unreadable ({e})"
    for name, digest in meta.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        if sha256_file(f) != digest:
            return f"{name} checksum mismatch (truncated or corrupt)"
    if set(meta.get("sha256", {})) != set(CHECKSUMMED):
        return "meta.json lists the wrong files"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint whose checksums verify; corrupt ones are skipped with a warning."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        warnings.warn(f"skipping corrupt checkpoint {ckpt}: {problem}; falling back to the previous one",
                      stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (-> its newest valid checkpoint). Raises CheckpointError."""
    path = Path(path)
    if (path / "meta.json").is_file():
        problem = verify_checkpoint(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is unusable: {problem}")
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"no valid checkpoint in {path} (expected {path}/checkpoints/step-*/meta.json)")
    return latest


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "meta.json").read_text())


def load_model_state(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"), device=device)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    return torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=True)


def band_norm_of(meta: dict[str, Any]) -> BandNorm | None:
    """The band list and normalisation of a multispectral checkpoint's meta; None for an RGB encoder."""
    return BandNorm.from_json(meta["bands"]) if meta.get("bands") else None


def load_encoder(path: str | Path, device: str = "cpu"):
    """Rebuild a trained satellite encoder from a checkpoint (or run) folder.

    Returns ``(encoder, clip_bundle, meta)``; the CLIP bundle supplies the text
    tower and preprocessing, :func:`band_norm_of` (meta) the input bands of a
    multispectral encoder. Weights load strictly: a missing or unexpected key
    is an error, never silently dropped.
    """
    from graft.models.clip_tower import ClipSpec, load_clip
    from graft.models.satellite import build_encoder

    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    bundle = load_clip(ClipSpec(**meta["clip"]), device=device)
    norm = band_norm_of(meta)
    encoder = build_encoder(meta["kind"], bundle.model.visual, in_chans=norm.channels if norm else 3)
    encoder.load_state_dict(load_model_state(ckpt, device=device), strict=True)
    encoder.to(device).eval()
    return encoder, bundle, meta
