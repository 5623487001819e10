"""The training config (train/image_level.yaml, train/pixel_level.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from graft.config import StrictModel
from graft.dataset.layout import MANIFEST_FILE
from graft.dataset.manifest import manifest_path
from graft.models.clip_tower import ClipSpec


class ModelSection(StrictModel):
    kind: Literal["image", "pixel"] = "image"
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the encoder (PyTorch 2.x); off by default


class OptimSection(StrictModel):
    # GRAFT's peak learning rates: 1e-5 image-level, 5e-5 pixel-level (set per recipe).
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(500, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class LossSection(StrictModel):
    temperature: float = Field(0.07, gt=0)
    learn_temperature: bool = False
    # Pixel-level runs may add the image-level loss on the pooled embedding (0 = off, as in GRAFT).
    image_loss_weight: float = Field(0.0, ge=0)


class DataSection(StrictModel):
    dataset: str  # folder written by `graft build` (+ `graft embed`)
    split: str = "train"
    batch_size: int = Field(32, ge=1)  # per rank, per micro-step
    workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(256, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    flips: bool = True
    rot90: bool = True
    max_photos_per_tile: int = Field(25, ge=1)

    @field_validator("dataset")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not manifest_path(v).is_file():
            raise ValueError(f"{v} has no {MANIFEST_FILE}; run `graft build` first")
        return v


class TrainSection(StrictModel):
    max_steps: int = Field(10_000, ge=1)
    grad_accum: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16"] = "bf16"  # bf16 autocast applies on CUDA only
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(500, ge=1)
    keep_last: int = Field(3, ge=1)
    seed: int = 0
    max_bad_steps: int = Field(10, ge=1)  # consecutive non-finite steps before the run stops
    alignment_every: int = Field(0, ge=0)  # 0 = off; else log the mutual-kNN alignment on `alignment_split`
    alignment_split: str = "val"
    device: str | None = None


class TrainConfig(StrictModel):
    run_dir: str
    clip: ClipSpec = ClipSpec()
    model: ModelSection = ModelSection()
    optim: OptimSection = OptimSection()
    loss: LossSection = LossSection()
    data: DataSection
    train: TrainSection = TrainSection()

    @model_validator(mode="after")
    def _pixel_needs_no_image_only_keys(self) -> TrainConfig:
        if self.model.kind == "image" and self.loss.image_loss_weight:
            raise ValueError("loss.image_loss_weight applies to model.kind=pixel only")
        return self
