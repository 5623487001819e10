"""The GRAFT trainer: a plain PyTorch loop, run as is or under ``torchrun``.

One step: satellite tiles through the trainable encoder; their ground photos'
frozen-CLIP embeddings (cached, or computed live) gathered from every rank;
the image- or pixel-level 1:N loss; AdamW with linear warm-up and cosine
decay. Checkpoints are atomic and hold everything needed to continue exactly
(model, optimiser, RNG, each rank's data position), so ``--resume latest``
after a kill ends bitwise equal to an uninterrupted run on CPU. SIGTERM or
SIGUSR1 (preemption, a SLURM time-limit warning) ends a run at the next step
boundary with a checkpoint, and ``graft train`` exits with 128 + the signal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from graft.config import dump_config, load_config
from graft.dataset.band_stats import band_mean_std, read_band_stats
from graft.errors import GraftError
from graft.imagery import BandNorm
from graft.losses import image_level_loss, pixel_level_loss
from graft.models.checkpoint import (
    find_latest_checkpoint,
    load_model_state,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from graft.models.clip_tower import FrozenClipTower, load_clip, spec_record
from graft.models.satellite import build_encoder
from graft.storage import atomic_write_text, clean_stale_temps
from graft.training import distributed as D
from graft.training.config import TrainConfig
from graft.training.data import BatchIterator, StreamSpec, check_embedding_cache, split_shards
from graft.training.run_dir import check_resume_config, drop_metrics_after, prepare_run_dir
from graft.training.validation import Validator, judge, protected_steps, score_history

log = logging.getLogger(__name__)


class TrainingDiverged(GraftError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals after which the trainer checkpoints at the next step boundary and exits with 128 + the signal."""


class StopRequest:
    """Records SIGTERM/SIGUSR1 while installed, for the loop to act on at a step boundary.

    A handler only sets a flag: checkpointing inside a signal handler could interrupt a half-done
    optimiser step or a collective. Installed only in the main thread (Python's rule for handlers);
    the previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum = signum
            log.warning("received %s: saving a checkpoint after this step, then exiting",
                        signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class GraftModel(nn.Module):
    """The trainable part: the satellite encoder plus the (optionally learned) temperature.

    Returning the temperature from ``forward`` keeps it inside DDP's graph, so
    its gradient is averaged across ranks like every other parameter's.
    """

    def __init__(self, encoder: nn.Module, temperature: float, learn: bool, image_head: bool = True):
        super().__init__()
        self.encoder = encoder
        if not image_head:
            # A pixel-only loss never reaches the pooled head (ln_post, proj). Freeze it: DDP must not
            # hold parameters that never get a gradient (their bucket would never be all-reduced).
            for p in (*encoder.visual.ln_post.parameters(), encoder.visual.proj):
                p.requires_grad_(False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn)

    def forward(self, images: torch.Tensor, need_image: bool):
        t = self.log_temperature.exp()
        if self.encoder.kind == "pixel":
            if need_image:
                image, patches = self.encoder.forward_both(images)
                return image, patches, t
            return None, self.encoder(images), t
        return self.encoder(images), None, t


@dataclass
class StepGround:
    """The ground embeddings of one optimiser step, every micro-batch of every rank, gathered once.

    ``rows[m]`` is, for a photo of this rank, its tile's row in the concatenation of this rank's
    micro-batches, and -1 for another rank's photo (a negative only). ``n_sat`` counts the satellite
    rows that own at least one photo, over all micro-batches and ranks: the loss's mean runs over them.
    """

    ground: torch.Tensor
    rows: torch.Tensor
    patch_index: torch.Tensor
    n_sat: int

    @classmethod
    def gather(cls, grounds: list[torch.Tensor], owners: list[torch.Tensor], patch_indices: list[torch.Tensor],
               sizes: list[int], info: D.DistInfo, inside_only: bool = False) -> StepGround:
        """Concatenate this rank's micro-batches (owners offset to step rows) and gather across ranks.

        ``inside_only`` keeps only photos inside their crop (``patch_index >= 0``): the pixel loss's set.
        """
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        parts = []
        for g, o, p, off in zip(grounds, owners, patch_indices, offsets, strict=True):
            keep = p >= 0 if inside_only else torch.ones_like(o, dtype=torch.bool)
            parts.append((g[keep], o[keep] + off, p[keep]))
        g, o, p, n_sat = D.gather_ground(*(torch.cat(x) for x in zip(*parts, strict=True)), info)
        return cls(g, o, p, n_sat)

    def owner_for(self, start: int, size: int) -> torch.Tensor:
        """``owner`` for the micro-batch holding step rows [start, start + size): photos of others are -1."""
        mine = (self.rows >= start) & (self.rows < start + size)
        return torch.where(mine, self.rows - start, torch.full_like(self.rows, -1))


def micro_batch_loss(forward, kind: str, images: torch.Tensor, start: int, info: D.DistInfo,
                     image_set: StepGround | None, pixel_set: StepGround | None, image_loss_weight: float = 0.0,
                     bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch's share of the step's loss, and its own loss value (for logging and checks).

    ``forward`` is the (possibly DDP-wrapped) :class:`GraftModel`; the micro-batch's tiles are step
    rows [start, start + len(images)). Every ground embedding of the step (all micro-batches, all
    ranks) joins the softmax denominator. The softmax runs over ground embeddings only, which are
    frozen, so each satellite row's term depends on nothing else that is trained: the step's loss is
    a sum over micro-batches, each forwarded once. Each mean is rescaled by its share of the step's
    satellite rows (times the world size, which DDP's gradient average divides out), so the summed
    gradients equal those of the single-process mean over the whole step.
    """
    dev = images.device
    b = images.shape[0]
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
        image, patches, t = forward(images, need_image=(kind == "image" or image_loss_weight > 0))
    # The loss runs in at least fp32 (bf16 autocast outputs are promoted; float64 stays float64).
    image, patches, t = (None if x is None else x.to(torch.promote_types(x.dtype, torch.float32))
                         for x in (image, patches, t))

    def share(sg: StepGround, owner: torch.Tensor) -> float:
        return info.world_size * int(torch.unique(owner[owner >= 0]).numel()) / max(sg.n_sat, 1)

    if kind == "image":
        o = image_set.owner_for(start, b)
        raw = image_level_loss(image, image_set.ground, o, t)
        scaled = raw * share(image_set, o)
    else:
        o = pixel_set.owner_for(start, b)
        raw = pixel_level_loss(patches, pixel_set.ground, o, pixel_set.patch_index, t)
        scaled = raw * share(pixel_set, o)
        if image_loss_weight > 0:
            oi = image_set.owner_for(start, b)
            extra = image_loss_weight * image_level_loss(image, image_set.ground, oi, t)
            raw, scaled = raw + extra, scaled + extra * share(image_set, oi)
    return scaled, raw.detach()


def step_ground_sets(kind: str, grounds: list[torch.Tensor], owners: list[torch.Tensor],
                     patch_indices: list[torch.Tensor], sizes: list[int], info: D.DistInfo,
                     image_loss_weight: float = 0.0) -> tuple[StepGround | None, StepGround | None]:
    """The (image-loss, pixel-loss) ground sets of a step; None for a loss the step does not use.

    A photo the crop left out (``positives: tile``) leaves the pixel loss and its denominator.
    """
    need_image = kind == "image" or image_loss_weight > 0
    image_set = StepGround.gather(grounds, owners, patch_indices, sizes, info) if need_image else None
    pixel_set = (StepGround.gather(grounds, owners, patch_indices, sizes, info, inside_only=True)
                 if kind == "pixel" else None)
    return image_set, pixel_set


def graft_loss(forward, kind: str, images: torch.Tensor, ground: torch.Tensor, owner: torch.Tensor,
               patch_index: torch.Tensor, info: D.DistInfo, image_loss_weight: float = 0.0,
               bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a one-micro-batch step's global loss, and the loss value itself.

    The same as :func:`micro_batch_loss` for a step of one micro-batch; see there.
    """
    sets = step_ground_sets(kind, [ground], [owner], [patch_index], [images.shape[0]], info, image_loss_weight)
    return micro_batch_loss(forward, kind, images, 0, info, *sets, image_loss_weight=image_loss_weight, bf16=bf16)


def encoder_band_norm(cfg: TrainConfig, clip_preprocess: dict[str, Any]) -> BandNorm | None:
    """What a multispectral encoder reads and how (None for an RGB encoder).

    R, G, B keep CLIP's normalisation (its weights were trained on it); every further band is
    normalised with its mean and std over the training split, from the dataset's band statistics.
    """
    bands = cfg.model.bands
    if bands is None:
        return None
    mean, std = list(clip_preprocess["mean"]), list(clip_preprocess["std"])
    if len(bands) > 3:
        extra_mean, extra_std = band_mean_std(read_band_stats(cfg.data.dataset), cfg.data.split, bands[3:])
        mean, std = mean + extra_mean, std + extra_std
    return BandNorm(tuple(bands), tuple(mean), tuple(std))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``optim.lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    o, total = cfg.optim, cfg.train.max_steps
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cos)


EXTRA_BANDS_PARAM = "visual.conv1.extra."  # a multispectral encoder's zero-initialised patch embedding


def _param_groups(model: GraftModel, weight_decay: float, extra_bands_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    decay, no_decay, extra = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if EXTRA_BANDS_PARAM in name:
            extra.append(p)
        # Biases, norms, embeddings and the temperature are not decayed (standard for ViT/CLIP).
        elif p.ndim < 2 or "embedding" in name or "log_temperature" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if extra:
        groups.append({"params": extra, "weight_decay": weight_decay, "lr_scale": extra_bands_lr_scale})
    return groups


@dataclass
class TrainSummary:
    steps: int
    final_loss: float
    bad_steps: int
    checkpoint: str | None
    seconds: float
    tiles_per_s: float
    stopped_by: int = 0  # the signal (SIGTERM/SIGUSR1) that ended the run early after a checkpoint; 0 if none
    validation: str | None = None  # the end-of-run verdict of the validation signal, with its hint


class Trainer:
    def __init__(self, cfg: TrainConfig, live_ground: bool = False, info: D.DistInfo | None = None):
        self.cfg, self.live = cfg, live_ground
        self.info = info or D.DistInfo()
        self.run_dir = Path(cfg.run_dir)
        torch.manual_seed(cfg.train.seed)
        dev = self.info.device
        shards = split_shards(cfg.data.dataset, cfg.data.split)
        if not live_ground:
            # Before the tower loads (minutes for a large one): a missing or foreign cache fails at once.
            check_embedding_cache(shards, cfg.clip.weights_record())
        self.bundle = load_clip(cfg.clip, device="cpu")
        pcfg = self.bundle.model.visual.preprocess_cfg
        self.band_norm = encoder_band_norm(cfg, pcfg)
        encoder = build_encoder(cfg.model.kind, self.bundle.model.visual,
                                in_chans=self.band_norm.channels if self.band_norm else 3)
        if cfg.model.grad_checkpointing:
            encoder.set_grad_checkpointing(True)
        self.model = GraftModel(encoder, cfg.loss.temperature, cfg.loss.learn_temperature,
                                image_head=cfg.model.kind == "image" or cfg.loss.image_loss_weight > 0).to(dev)
        self.tower = FrozenClipTower(self.bundle).to(dev) if live_ground else None
        if not live_ground:
            # The text tower is not needed for training on cached embeddings.
            self.bundle.model.transformer = None
        self.ddp = DDP(self.model) if self.info.enabled else self.model
        self.forward = torch.compile(self.ddp) if cfg.model.compile else self.ddp
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, cfg.optim.weight_decay, cfg.optim.extra_bands_lr_scale), lr=cfg.optim.lr,
            betas=cfg.optim.betas, eps=cfg.optim.eps,
        )
        self.step = 0
        self.stop_request = StopRequest()  # installed by train() around fit()
        self.bad_total = 0
        self.bad_run = 0
        self.data_state = {"epoch": 0, "batch_in_epoch": 0}
        norm = self.band_norm
        if not live_ground:
            check_embedding_cache(shards, spec_record(self.bundle))
        self.stream = StreamSpec(
            shards=shards, split=cfg.data.split, batch_size=cfg.data.batch_size,
            crop_size=encoder.image_size, patch_size=encoder.patch_size,
            mean=norm.mean if norm else tuple(pcfg["mean"]), std=norm.std if norm else tuple(pcfg["std"]),
            bands=norm.bands if norm else None, seed=cfg.train.seed,
            rank=self.info.rank, world_size=self.info.world_size, flips=cfg.data.flips, rot90=cfg.data.rot90,
            shuffle_buffer=cfg.data.shuffle_buffer, max_photos=cfg.data.max_photos_per_tile,
            positives=cfg.data.positives, level=encoder.kind, interleave=cfg.data.shards_per_worker,
            live_ground=live_ground, photo_transform=self.bundle.preprocess if live_ground else None,
        )
        self.validator = Validator(cfg, self.stream, self.tower.encode_images if live_ground else None)
        self.last_validation: dict[str, float] | None = None

    # -- checkpoints --------------------------------------------------------------------------
    def _encoder_state(self) -> dict[str, torch.Tensor]:
        return self.model.encoder.state_dict()

    def save(self) -> Path | None:
        data_states = D.all_gather_objects(self.data_state, self.info)
        path = None
        if self.info.is_main:
            trainer_state = {
                "optimizer": self.optimizer.state_dict(),
                "log_temperature": self.model.log_temperature.detach().cpu(),
                "torch_rng": torch.get_rng_state(),
                "data": [[s["epoch"], s["batch_in_epoch"]] for s in data_states],
                "world_size": self.info.world_size,
                "bad_total": self.bad_total,
            }
            meta = {"kind": self.cfg.model.kind, "clip": self.cfg.clip.model_dump(),
                    "embed_dim": self.bundle.embed_dim, "input_size": self.model.encoder.image_size,
                    "patch_size": self.model.encoder.patch_size, "validation": self.last_validation,
                    "bands": self.band_norm.to_json() if self.band_norm else None}
            path = save_checkpoint(self.run_dir, self.step, self._encoder_state(), trainer_state, meta,
                                   dump_config(self.cfg), keep_last=self.cfg.train.keep_last,
                                   keep_steps=protected_steps(self.run_dir, self.last_validation, self.step))
        if self.info.enabled:
            torch.distributed.barrier()
        return path

    def resume(self, which: str) -> bool:
        ckpt = find_latest_checkpoint(self.run_dir) if which == "latest" else resolve_checkpoint(which)
        if ckpt is None:
            log.info("no checkpoint in %s yet; starting from step 0", self.run_dir)
            return False
        check_resume_config(ckpt, dump_config(self.cfg))
        self.model.encoder.load_state_dict(load_model_state(ckpt, device=str(self.info.device)), strict=True)
        st = load_trainer_state(ckpt)
        self.optimizer.load_state_dict(st["optimizer"])
        with torch.no_grad():
            self.model.log_temperature.copy_(st["log_temperature"])
        torch.set_rng_state(st["torch_rng"])
        self.step = int(json.loads((ckpt / "meta.json").read_text())["step"])
        self.bad_total = int(st.get("bad_total", 0))
        if int(st["world_size"]) == self.info.world_size:
            epoch, b = st["data"][self.info.rank]
            self.data_state = {"epoch": int(epoch), "batch_in_epoch": int(b)}
        else:
            log.warning("checkpoint was written with world size %s, now %s: data restarts at the next epoch",
                        st["world_size"], self.info.world_size)
            self.data_state = {"epoch": max(int(e) for e, _ in st["data"]) + 1, "batch_in_epoch": 0}
        log.info("resumed from %s at step %d", ckpt, self.step)
        return True

    # -- one step -----------------------------------------------------------------------------
    def _ground(self, batch: dict[str, Any]) -> torch.Tensor:
        dev = self.info.device
        if self.live:
            return self.tower.encode_images(batch["photos"].to(dev))
        return batch["ground"].to(dev)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A one-micro-batch step's (scaled loss, loss value); see :func:`graft_loss`."""
        dev = self.info.device
        use_bf16 = self.cfg.train.precision == "bf16" and dev.type == "cuda"
        return graft_loss(self.forward, self.cfg.model.kind, batch["images"].to(dev, non_blocking=True),
                          self._ground(batch), batch["owner"].to(dev), batch["patch_index"].to(dev), self.info,
                          image_loss_weight=self.cfg.loss.image_loss_weight, bf16=use_bf16)

    def _grads_finite(self) -> bool:
        for p in self.model.parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return False
        return True

    def train_step(self, batches: list[dict[str, Any]]) -> float | None:
        """One optimiser step over ``grad_accum`` micro-batches; None if the step was skipped."""
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        dev, kind = self.info.device, self.cfg.model.kind
        use_bf16 = self.cfg.train.precision == "bf16" and dev.type == "cuda"
        w = self.cfg.loss.image_loss_weight
        # The ground embeddings of every micro-batch first (frozen: no graph), so that each micro-batch's
        # softmax spans the whole step, as one batch of grad_accum x batch_size tiles would.
        with torch.no_grad():
            grounds = [self._ground(b) for b in batches]
        sizes = [b["images"].shape[0] for b in batches]
        sets = step_ground_sets(kind, grounds, [b["owner"].to(dev) for b in batches],
                                [b["patch_index"].to(dev) for b in batches], sizes, self.info, w)
        total = 0.0
        finite = True
        start = 0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            ctx = self.ddp.no_sync() if (self.info.enabled and not last) else _nullctx()
            with ctx:
                scaled, raw = micro_batch_loss(self.forward, kind, batch["images"].to(dev, non_blocking=True), start,
                                               self.info, *sets, image_loss_weight=w, bf16=use_bf16)
                finite = finite and bool(torch.isfinite(raw))
                scaled.backward()
            # Summed over micro-batches, the scaled losses are this rank's estimate of the step's loss.
            total += float(scaled.detach())
            start += sizes[i]
        ok = D.all_true(finite and self._grads_finite(), self.info)
        if not ok:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_total += 1
            self.bad_run += 1
            log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)", self.step, self.bad_run)
            if self.bad_run >= self.cfg.train.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad_run} consecutive steps with a non-finite loss or gradient at step {self.step}; "
                    f"stopping. The last good checkpoint in {self.run_dir / 'checkpoints'} is intact. "
                    f"Lower optim.lr, set optim.grad_clip, or check the dataset for corrupt tiles."
                )
            return None
        self.bad_run = 0
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        return total

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainSummary:
        """Train to ``max_steps`` (or ``stop_after`` more steps, for tests)."""
        cfg = self.cfg
        it = BatchIterator(self.stream, cfg.data.workers, cfg.data.prefetch_factor,
                           epoch=self.data_state["epoch"], skip=self.data_state["batch_in_epoch"])
        writer = _tb_writer(self.run_dir) if self.info.is_main else None
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.run_dir)  # a config.yaml write killed in a previous run
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        end = cfg.train.max_steps if stop_after is None else min(cfg.train.max_steps, self.step + stop_after)
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc=f"train[{cfg.model.kind}]",
                   disable=not self.info.is_main, dynamic_ncols=True)
        t0, tiles, loss, ema = time.time(), 0, float("nan"), None
        last_ckpt = None
        while self.step < end:
            batches = [next(it) for _ in range(cfg.train.grad_accum)]
            self.data_state = it.state()
            out = self.train_step(batches)
            self.step += 1
            tiles += sum(b["images"].shape[0] for b in batches) * self.info.world_size
            if out is not None:
                loss = out
                ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            rate = tiles / max(time.time() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}" if ema is not None else "nan", lr=f"{lr_at(self.step - 1, cfg):.2e}",
                            tiles_s=f"{rate:.1f}")
            if self.info.is_main and (self.step % cfg.train.log_every == 0 or self.step == end):
                self._log(writer, {"loss": loss, "lr": lr_at(self.step - 1, cfg), "tiles_per_s": rate,
                                   "temperature": float(self.model.log_temperature.exp()),
                                   "bad_steps": self.bad_total})
            if self.info.is_main and self.validator.due(self.step):
                self.last_validation = self.validator.run(self.model.encoder, self.info.device)
                if self.last_validation is not None:
                    self._log(writer, self.last_validation)
            saved = self.step % cfg.train.ckpt_every == 0 or self.step == cfg.train.max_steps
            if saved:
                last_ckpt = self.save()
            # Every rank stops at the same step boundary, even if the signal reached only some of them.
            stopped_by = D.all_max(self.stop_request.signum, self.info)
            if stopped_by and self.step < cfg.train.max_steps:
                last_ckpt = last_ckpt if saved else self.save()
                log.warning("stopped by %s at step %d; checkpoint %s", signal.Signals(stopped_by).name, self.step,
                            last_ckpt)
                break
        else:
            stopped_by = 0
        bar.close()
        if writer is not None:
            writer.close()
        secs = time.time() - t0
        verdict = judge(score_history(self.run_dir), self.run_dir).message if self.validator.active else None
        if verdict and self.info.is_main:
            log.info("%s", verdict)
        return TrainSummary(steps=self.step, final_loss=loss, bad_steps=self.bad_total,
                            checkpoint=str(last_ckpt) if last_ckpt else None, seconds=secs,
                            tiles_per_s=tiles / max(secs, 1e-9), stopped_by=stopped_by, validation=verdict)

    def _log(self, writer, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, self.step)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **scalars}) + "\n")


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _tb_writer(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tb"))


def train(cfg: TrainConfig, resume: str | None = None, live_ground: bool = False,
          stop_after: int | None = None, overwrite: bool = False) -> TrainSummary:
    """Python API: set up (DDP if under torchrun), optionally resume, train.

    Args:
        cfg: the validated training config.
        resume: ``"latest"`` (the newest valid checkpoint of ``cfg.run_dir``, if any) or a checkpoint folder.
        live_ground: embed ground photos with the frozen tower on the fly instead of reading the cache.
        stop_after: stop after this many more steps (tests).
        overwrite: start again in a run folder that holds a run; the old one is moved to ``previous-N/``.

    Raises:
        RunFolderInUse: ``cfg.run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is given.

    SIGTERM/SIGUSR1 during training end it early after a checkpoint: the summary's ``stopped_by`` is
    then the signal, and a caller must not treat the run as finished.
    """
    prepare_run_dir(cfg.run_dir, resume, overwrite)
    info = D.setup(cfg.train.device)
    try:
        np.random.seed(cfg.train.seed)
        trainer = Trainer(cfg, live_ground=live_ground, info=info)
        if resume and trainer.resume(resume) and info.is_main:
            drop_metrics_after(cfg.run_dir, trainer.step)
        with trainer.stop_request:
            return trainer.fit(stop_after=stop_after)
    finally:
        D.teardown()


def run_train_command(args) -> int:
    cfg = load_config(TrainConfig, args.config, args.overrides)
    summary = train(cfg, resume=args.resume, live_ground=args.live_ground, overwrite=args.overwrite)
    if summary.stopped_by:
        # 128 + signal: how a shell reports a process ended by that signal, so schedulers and scripts see an
        # unfinished run (not COMPLETED), here with its state saved. train/slurm.sbatch requeues the job.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"\nstopped by {signal.Signals(summary.stopped_by).name} at step {summary.steps} of "
                  f"{cfg.train.max_steps}; checkpoint: {summary.checkpoint}\ncontinue with the same command and "
                  f"--resume latest")
        return 128 + summary.stopped_by
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"\ntrained {cfg.model.kind}-level encoder: {summary.steps} steps, final loss {summary.final_loss:.4f}, "
            f"{summary.bad_steps} skipped steps, {summary.tiles_per_s:.1f} tiles/s, {summary.seconds:.0f} s\n"
            f"checkpoint: {summary.checkpoint}\nrun folder: {cfg.run_dir} (TensorBoard: tensorboard --logdir "
            f"{cfg.run_dir}/tb)"
        )
        if summary.validation:
            print(summary.validation)
    return 0
