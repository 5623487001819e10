"""The label-free validation signal of a training run, and what it says at the end.

GRAFT's loss cannot tell a converged run from one stopped early: its floor
depends on how many photos share a batch, and a cosine schedule decaying to
zero flattens any curve. Held-out pairs can: on up to ``validation.max_tiles``
tiles of the val split, every ``validation.every`` steps and at every
checkpoint, the trainer measures

- pair retrieval: for each tile, whether one of its own ground photos is among
  the 1 (5) photos nearest to it, out of all those tiles' photos (recall@1, @5);
- mutual-kNN alignment between the tile embeddings and their photos' mean
  embedding;

and their mean, ``val_score``, which the end-of-run summary judges: still
rising (train longer), peaked early (the best checkpoint is named, and kept
from pruning), or levelled off. Pixel-level encoders are scored on the mean of
their patch embeddings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graft.embedding_metrics import mutual_knn_alignment, pair_recall
from graft.models.checkpoint import list_checkpoints, read_meta
from graft.training.config import TrainConfig
from graft.training.data import DataError, StreamSpec, TileStream, split_shards

log = logging.getLogger(__name__)

SCORE = "val_score"
# A change of the score (in [0, 1]) smaller than this counts as flat; on few tiles it is raised to
# the sampling noise of a recall (binomial std at p = 0.5): 0.5 / sqrt(tiles).
TOLERANCE = 0.02


def validation_metrics(sat: np.ndarray, ground: np.ndarray, owner: np.ndarray, k: int) -> dict[str, float]:
    """``val_recall@1``, ``val_recall@5``, ``val_alignment`` and their mean ``val_score`` for one set of pairs.

    Args:
        sat: (N, D) normalised tile embeddings.
        ground: (M, D) normalised ground-photo embeddings.
        owner: (M,) row of ``sat`` each photo belongs to.
        k: mutual-kNN neighbourhood, lowered to N - 1 for small sets.
    """
    recall = pair_recall(sat, ground, owner, ks=(1, 5))
    out = {"val_recall@1": recall[1], "val_recall@5": recall[5]}
    n = sat.shape[0]
    if n >= 3:
        mean = np.zeros((n, ground.shape[1]), dtype=np.float32)
        np.add.at(mean, owner, ground)
        mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        out["val_alignment"] = mutual_knn_alignment(sat, mean, k=min(k, n - 1))
    out[SCORE] = float(np.mean(list(out.values())))
    out["val_tiles"] = float(n)
    return out


class Validator:
    """Computes the validation signal for a :class:`graft.training.trainer.Trainer`.

    Args:
        cfg: the training config (its ``validation`` section).
        stream: the training stream spec; validation reads the same dataset without augmentation.
        encode_photos: for ``--live-ground`` runs, the frozen tower's image encoder (else None: cached
            embeddings are read).
    """

    def __init__(self, cfg: TrainConfig, stream: StreamSpec,
                 encode_photos: Callable[[torch.Tensor], torch.Tensor] | None = None):
        v = cfg.validation
        self.cfg, self.encode_photos = cfg, encode_photos
        self.every = v.every or max(1, cfg.train.max_steps // 10)
        self.spec: StreamSpec | None = None
        self._cache: tuple[torch.Tensor, np.ndarray, np.ndarray] | None = None
        if not v.enabled:
            return
        try:
            shards = split_shards(cfg.data.dataset, v.split)
        except DataError as e:
            log.warning("validation signal off: %s (set validation.split to a split the dataset has)", e)
            return
        # Tiles as the image-level model's positives see them, for either model: the centre crop and the
        # photos inside it (graft_pairs evaluation uses the same geometry).
        self.spec = replace(stream, shards=shards, split=v.split, train=False, rank=0, world_size=1,
                            shuffle_buffer=0, positives="crop", level="image")

    @property
    def active(self) -> bool:
        return self.spec is not None

    def due(self, step: int) -> bool:
        """Whether to validate after ``step``: every ``every`` steps, at checkpoints and at the last step."""
        t = self.cfg.train
        return self.active and (step % self.every == 0 or step % t.ckpt_every == 0 or step == t.max_steps)

    @torch.no_grad()
    def _load(self, device: torch.device) -> None:
        """Decode the validation tiles once (centre crops, no augmentation: the same every time).

        Tiles are kept as fp16 tensors (at most ``max_tiles``: 77 MB at 224 px), and the photos'
        embeddings are fixed (the tower is frozen), so each later check is only the encoder's forward.
        """
        assert self.spec is not None
        cap = self.cfg.validation.max_tiles
        images, grounds, owners, n = [], [], [], 0
        for batch in TileStream(self.spec, epoch=0):
            g = (self.encode_photos(batch["photos"].to(device)).cpu() if self.encode_photos is not None
                 else batch["ground"])
            images.append(batch["images"].half())
            grounds.append(g.float())
            owners.append(batch["owner"] + n)
            n += batch["images"].shape[0]
            if n >= cap:
                break
        owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        mine = owner < cap
        self._cache = (torch.cat(images)[:cap] if images else torch.zeros(0),
                       torch.cat(grounds)[mine].numpy() if grounds else np.zeros((0, 0), np.float32),
                       owner[mine].numpy())

    @torch.no_grad()
    def run(self, encoder: torch.nn.Module, device: torch.device) -> dict[str, float] | None:
        """The metrics of ``encoder`` on the validation tiles (at most ``max_tiles``)."""
        if self.spec is None:
            return None
        if self._cache is None:
            self._load(device)
        images, ground, owner = self._cache
        if images.shape[0] < 2:
            return None
        was_training = encoder.training
        encoder.eval()
        sats = []
        try:
            for s in range(0, images.shape[0], self.cfg.data.batch_size):
                x = images[s:s + self.cfg.data.batch_size].to(device).float()
                if getattr(encoder, "kind", "image") == "pixel":
                    emb = F.normalize(encoder(x).mean(dim=1), dim=-1)
                else:
                    emb = encoder.encode_image(x)
                sats.append(emb.float().cpu())
        finally:
            encoder.train(was_training)
        return validation_metrics(torch.cat(sats).numpy(), ground, owner, self.cfg.validation.k)


# --------------------------------------------------------------------------- the end-of-run summary


@dataclass
class ValidationVerdict:
    """What the validation history says about a run."""

    verdict: str  # "rising", "peaked", "flat" or "too_few"
    message: str
    best_step: int | None = None
    best_checkpoint: str | None = None


def score_history(run_dir: str | Path) -> list[tuple[int, float, int]]:
    """``(step, val_score, val_tiles)`` of every validation in the run's ``metrics.jsonl``, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    points: dict[int, tuple[float, int]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if SCORE in rec:
            points[int(rec["step"])] = (float(rec[SCORE]), int(rec.get("val_tiles", 0)))
    return [(step, score, tiles) for step, (score, tiles) in sorted(points.items())]


def best_checkpoint(run_dir: str | Path) -> tuple[Path, float] | None:
    """The kept checkpoint with the highest validation score (the later one on a tie), and that score."""
    best = None
    for ckpt in list_checkpoints(run_dir):
        try:
            score = (read_meta(ckpt).get("validation") or {}).get(SCORE)
        except (OSError, ValueError):
            continue
        if score is not None and (best is None or score >= best[1]):
            best = (ckpt, float(score))
    return best


def judge(points: list[tuple[int, float, int]], run_dir: str | Path) -> ValidationVerdict:
    """Whether the validation score was still rising, peaked early, or levelled off.

    With ``tol`` = ``TOLERANCE``, or the sampling noise on few tiles:

    - peaked: the last check is more than ``tol`` below the best;
    - rising: otherwise, if the score rose by more than ``tol`` over the second half of the run;
    - flat: otherwise.
    """
    if len(points) < 3:
        return ValidationVerdict("too_few", f"validation: {len(points)} check(s), too few to judge the run; "
                                 "lower validation.every")
    steps = [s for s, _, _ in points]
    scores = np.array([v for _, v, _ in points])
    tol = max(TOLERANCE, 0.5 / np.sqrt(max(points[-1][2], 1)))
    best_i = int(len(scores) - 1 - np.argmax(scores[::-1]))  # the latest of equal maxima
    last_step, last = steps[-1], float(scores[-1])
    best_step, best = steps[best_i], float(scores[best_i])
    ckpt = best_checkpoint(run_dir)
    if last < best - tol:
        where = (f"the best checkpoint kept is {ckpt[0]} (val_score {ckpt[1]:.3f})" if ckpt
                 else "no checkpoint holds it: lower train.ckpt_every")
        return ValidationVerdict(
            "peaked", f"validation: val_score peaked at {best:.3f} at step {best_step} and fell to {last:.3f} by "
            f"step {last_step}; {where}. Use that checkpoint, or train shorter / with a lower optim.lr.",
            best_step, str(ckpt[0]) if ckpt else None)
    mid = next(i for i, s in enumerate(steps) if s >= last_step / 2)
    rise = last - float(scores[mid])
    if rise > tol:
        return ValidationVerdict(
            "rising", f"validation: val_score was still rising at the end ({scores[mid]:.3f} at step {steps[mid]} "
            f"-> {last:.3f} at step {last_step}): the run is not converged; train longer (raise train.max_steps).",
            best_step, str(ckpt[0]) if ckpt else None)
    return ValidationVerdict(
        "flat", f"validation: val_score levelled off at {last:.3f} (best {best:.3f} at step {best_step}); more "
        "steps of this schedule are unlikely to help.", best_step, str(ckpt[0]) if ckpt else None)


def protected_steps(run_dir: str | Path, current: dict[str, Any] | None, step: int) -> tuple[int, ...]:
    """Checkpoint steps pruning must keep: the best by validation score, counting the one being written."""
    best = best_checkpoint(run_dir)
    if best is None:
        return ()
    if current is not None and current.get(SCORE) is not None and current[SCORE] >= best[1]:
        return (step,)
    return (int(read_meta(best[0])["step"]),)
