"""torchrun / DDP plumbing: process-group setup and the global-batch gather for the loss.

graft has no launcher of its own: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK
and MASTER_ADDR/PORT, and :func:`setup` joins that group (NCCL on GPU, gloo
on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int, cuda_available: bool) -> torch.device:
    """This rank's device for ``train.device``.

    ``None`` is ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. A bare ``cuda`` also means
    ``cuda:LOCAL_RANK``: under torchrun every process of a node gets its own GPU, not GPU 0. An
    explicit index (``cuda:3``) is kept as given.

    Raises:
        ValueError: CUDA was asked for but no CUDA device is visible to this process.
    """
    if device is None:
        return torch.device(f"cuda:{local_rank}" if cuda_available else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not cuda_available:
            raise ValueError(f"train.device is {device!r} but no CUDA device is visible to this process; "
                             f"set train.device: cpu, or check CUDA_VISIBLE_DEVICES and the driver")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device (:func:`resolve_device`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local, torch.cuda.is_available())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_ground(ground: torch.Tensor, owner: torch.Tensor, patch_index: torch.Tensor, info: DistInfo):
    """All ranks' ground embeddings, this rank's first, with foreign photos marked ``owner = -1``.

    Ground embeddings carry no gradient (they come from the frozen tower), so a
    plain all_gather is exact. Ranks may hold different numbers of photos:
    tensors are padded to the largest count and trimmed after the gather.

    Returns (ground_all, owner_all, patch_index_all, n_sat_total) where
    ``n_sat_total`` counts satellite images that own >= 1 photo across all ranks
    (the loss's mean runs over those).
    """
    n_local_sat = torch.tensor([int(torch.unique(owner[owner >= 0]).numel())], device=ground.device)
    if not info.enabled:
        return ground, owner, patch_index, int(n_local_sat.item())
    m = torch.tensor([ground.shape[0]], device=ground.device)
    counts = [torch.zeros_like(m) for _ in range(info.world_size)]
    dist.all_gather(counts, m)
    dist.all_reduce(n_local_sat)
    counts = [int(c.item()) for c in counts]
    pad = max(counts)
    padded = torch.zeros(pad, ground.shape[1], dtype=ground.dtype, device=ground.device)
    padded[: ground.shape[0]] = ground.detach()
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    foreign = [p[:c] for r, (p, c) in enumerate(zip(parts, counts, strict=True)) if r != info.rank]
    ground_all = torch.cat([ground.detach(), *foreign])
    n_foreign = ground_all.shape[0] - ground.shape[0]
    owner_all = torch.cat([owner, torch.full((n_foreign,), -1, dtype=owner.dtype, device=owner.device)])
    pidx_all = torch.cat([patch_index, torch.full((n_foreign,), -1, dtype=patch_index.dtype,
                                                  device=patch_index.device)])
    return ground_all, owner_all, pidx_all, int(n_local_sat.item())


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks skip a bad step together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def all_max(value: int, info: DistInfo) -> int:
    """The largest ``value`` over all ranks (e.g. a stop signal that reached only some of them)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
