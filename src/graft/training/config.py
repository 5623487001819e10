"""The training config (train/sentinel2_image.yaml, train/naip_pixel.yaml, ...).

This module imports neither torch nor open_clip, so ``graft train`` reports a
bad config in well under a second. Every field carries a description
(``TrainConfig.model_json_schema()`` lists them all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from graft.config import StrictModel
from graft.dataset.layout import MANIFEST_FILE
from graft.models.clip_spec import ClipSpec


class ModelSection(StrictModel):
    """The satellite encoder trained against the frozen CLIP tower."""

    kind: Literal["image", "pixel"] = Field(
        "image", description="image: one embedding per tile; pixel: one per patch (each photo pulls its patch)")
    bands: list[str] | None = Field(
        None, description="tile bands the encoder reads, R, G, B first (e.g. [B4, B3, B2, B8]); None: the tiles' "
        "R, G, B. R, G, B start from CLIP's weights, every further band from zero, normalised with the dataset's "
        "band statistics")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30% slower")
    compile: bool = Field(False, description="run the encoder through torch.compile (PyTorch 2.x)")

    @field_validator("bands")
    @classmethod
    def _rgb_first_no_repeats(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) < 3 or len(set(v)) != len(v)):
            raise ValueError(f"model.bands lists R, G, B first, then any further bands, each once "
                             f"(e.g. [B4, B3, B2, B8]); got {v}")
        return v


class OptimSection(StrictModel):
    """AdamW with linear warm-up and cosine decay. GRAFT's peak rates: 1e-5 image-level, 5e-5 pixel-level."""

    lr: float = Field(1e-5, gt=0, description="peak learning rate, reached after warmup_steps")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (not applied to biases, norms, temperature)")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    eps: float = Field(1e-6, description="AdamW epsilon")
    warmup_steps: int = Field(500, ge=0, description="steps of linear warm-up from 0 to lr")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the cosine decays to lr * min_lr_ratio at max_steps")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this; None = off")
    extra_bands_lr_scale: float = Field(
        1.0, gt=0, description="lr multiplier of a multispectral encoder's extra-band patch embedding (it starts at "
        "zero, so a short schedule may need it to move faster than the pretrained weights)")


class LossSection(StrictModel):
    """The 1:N contrastive loss (graft.losses)."""

    temperature: float = Field(0.07, gt=0, description="softmax temperature; GRAFT keeps 0.07 fixed")
    learn_temperature: bool = Field(False, description="learn the temperature (as CLIP does) instead of fixing it")
    image_loss_weight: float = Field(
        0.0, ge=0, description="pixel-level runs only: add this times the image-level loss on the pooled embedding")


class DataSection(StrictModel):
    """Where the training tiles and their ground embeddings come from, and how they are batched."""

    dataset: str = Field(description="folder written by `graft build` (then `graft embed`)")
    split: str = Field("train", description="manifest split to train on")
    batch_size: int = Field(32, ge=1, description="tiles per rank per micro-step (each brings its ground photos)")
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    shuffle_buffer: int = Field(256, ge=0, description="tiles held in the shuffle buffer of each worker")
    shards_per_worker: int = Field(4, ge=1, description="shards each loader worker interleaves, so that a batch "
                                   "mixes tiles of several blocks")
    prefetch_factor: int = Field(2, ge=1, description="batches prefetched per worker")
    flips: bool = Field(True, description="random horizontal/vertical flips (photo positions follow)")
    rot90: bool = Field(True, description="random 90-degree rotations (photo positions follow)")
    max_photos_per_tile: int = Field(25, ge=1, description="ground photos used per tile (a random subset if more)")
    # "crop": a tile's positives are the photos inside its augmented crop, and crops are drawn to hold
    # at least one (GRAFT's alignment of an image with the photos taken inside it). "tile": every
    # photo of the tile, wherever the crop fell (the behaviour before; for ablations). Image-level
    # models only: a pixel-level model keeps uniform crops, and its loss's positives are the patches of
    # the photos inside the crop (a photo-aware crop only biased which patches it learnt from, and cost
    # the quick demo's segmentation mIoU; train/README.md).
    positives: Literal["crop", "tile"] = Field(
        "crop", description="image-level models: crop = a tile's positives are the photos inside its crop, drawn "
        "to hold one; tile = every photo of the tile (ablations). Pixel-level models ignore it: uniform crops, "
        "positives the patches of the photos inside the crop")

    @field_validator("dataset")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not (Path(v) / MANIFEST_FILE).is_file():  # not graft.dataset.manifest: it imports pyarrow
            raise ValueError(f"{v} has no {MANIFEST_FILE}; run `graft build` first")
        return v


class TrainSection(StrictModel):
    """Length, precision, logging and checkpoints of the run."""

    max_steps: int = Field(10_000, ge=1, description="optimiser steps of the whole run")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    precision: Literal["fp32", "bf16"] = Field("bf16", description="bf16 autocast applies on CUDA only")
    log_every: int = Field(10, ge=1, description="steps between lines of metrics.jsonl / TensorBoard")
    ckpt_every: int = Field(500, ge=1, description="steps between checkpoints (the last step always gets one)")
    keep_last: int = Field(3, ge=1, description="checkpoints kept (plus the best by validation score)")
    seed: int = Field(0, description="seed of initialisation, data order and augmentation")
    max_bad_steps: int = Field(10, ge=1, description="consecutive non-finite steps before the run stops")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ...; None: cuda if available (torchrun: per rank)")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: object) -> object:
        moved = sorted({"alignment_every", "alignment_split"} & set(data)) if isinstance(data, dict) else []
        if moved:
            raise ValueError(f"train.{moved[0]} moved to the validation section (validation.every, "
                             "validation.split); the validation signal is now on by default")
        return data


class ValidationSection(StrictModel):
    """The label-free validation signal, on by default (graft.training.validation).

    On up to ``max_tiles`` tiles of the ``split`` split: pair retrieval (each tile's own photos among
    all those tiles' photos, recall@1 and @5) and the mutual-kNN alignment between tile embeddings
    and their photos' mean embedding. Logged with the loss, kept in each checkpoint, and summarised
    at the end of the run (still rising: train longer; peaked early: the best checkpoint is named).
    """

    enabled: bool = Field(True, description="compute the validation signal (skipped with a warning if the "
                          "dataset has no such split)")
    split: str = Field("val", description="manifest split to validate on")
    every: int = Field(0, ge=0, description="steps between checks; 0 = max_steps / 10. Every checkpoint "
                       "step is checked too")
    max_tiles: int = Field(256, ge=2, description="cap on validation tiles, so each check costs a bounded "
                           "forward pass")
    k: int = Field(10, ge=1, description="neighbourhood size of the mutual-kNN alignment (lowered to tiles - 1)")


class TrainConfig(StrictModel):
    """A whole training run: ``graft train CONFIG`` or :func:`graft.train`."""

    run_dir: str = Field(description="run folder: checkpoints/, metrics.jsonl, tb/, config.yaml")
    clip: ClipSpec = Field(ClipSpec(), description="the frozen CLIP tower (must be the one `graft embed` used)")
    model: ModelSection = Field(ModelSection(), description="the satellite encoder")
    optim: OptimSection = Field(OptimSection(), description="optimiser and schedule")
    loss: LossSection = Field(LossSection(), description="the contrastive loss")
    data: DataSection = Field(description="the dataset and batching")
    train: TrainSection = Field(TrainSection(), description="length, precision, logging, checkpoints")
    validation: ValidationSection = Field(ValidationSection(), description="the label-free validation signal")

    @model_validator(mode="after")
    def _pixel_needs_no_image_only_keys(self) -> TrainConfig:
        if self.model.kind == "image" and self.loss.image_loss_weight:
            raise ValueError("loss.image_loss_weight applies to model.kind=pixel only")
        return self
