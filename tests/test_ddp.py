"""Two gloo processes give the same loss and gradients as one process holding the whole batch."""

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graft.models.clip_tower import ClipSpec, load_clip
from graft.models.satellite import build_encoder
from graft.training import distributed as D
from graft.training.trainer import GraftModel, graft_loss, micro_batch_loss, step_ground_sets

B, PER_RANK = 6, 3


def _model(kind):
    torch.manual_seed(0)
    bundle = load_clip(ClipSpec(model="graft-tiny-vit", pretrained=None))
    return GraftModel(build_encoder(kind, bundle.model.visual), 0.07, learn=True, image_head=kind == "image")


def _batch():
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([1, 5, 2, 7, 3, 4])  # unequal N_i, unequal photos per rank
    images = torch.randn(B, 3, 32, 32, generator=g)
    owner = torch.repeat_interleave(torch.arange(B), counts)
    ground = torch.nn.functional.normalize(torch.randn(len(owner), 64, generator=g), dim=-1)
    pidx = torch.randint(-1, 16, (len(owner),), generator=g)  # some photos outside the crop
    pidx[torch.cumsum(counts, 0) - 1] = 0  # every tile keeps at least one photo inside
    return images, owner, ground, pidx


def _rank_slice(rank, images, owner, ground, pidx):
    sel = (owner >= rank * PER_RANK) & (owner < (rank + 1) * PER_RANK)
    return images[rank * PER_RANK:(rank + 1) * PER_RANK], owner[sel] - rank * PER_RANK, ground[sel], pidx[sel]


def _accumulated(model, kind, images, owner, ground, pidx, info):
    """This rank's tiles as two micro-batches (2 + 1 tiles), as Trainer.train_step runs grad_accum = 2."""
    sizes = [2, 1]
    micro = [(images[:2], owner[owner < 2], ground[owner < 2], pidx[owner < 2]),
             (images[2:], owner[owner >= 2] - 2, ground[owner >= 2], pidx[owner >= 2])]
    sets = step_ground_sets(kind, [m[2] for m in micro], [m[1] for m in micro], [m[3] for m in micro], sizes, info)
    total, start = 0.0, 0
    for i, (im, *_rest) in enumerate(micro):
        ctx = model.no_sync() if i == 0 else contextlib.nullcontext()
        with ctx:
            scaled, _ = micro_batch_loss(model, kind, im, start, info, *sets)
            scaled.backward()
        total = total + scaled.detach()
        start += sizes[i]
    return total


def _worker(rank, world, init_file, kind, out_dir, accum=False):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    info = D.DistInfo(rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(_model(kind))
    images, owner, ground, pidx = _rank_slice(rank, *_batch())
    if accum:
        scaled = _accumulated(model, kind, images, owner, ground, pidx, info)
    else:
        scaled, _ = graft_loss(model, kind, images, ground, owner, pidx, info)
        scaled.backward()
    global_loss = scaled.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    grads = {n: p.grad for n, p in model.module.named_parameters() if p.grad is not None}
    torch.save({"loss": global_loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "accum"), [("image", False), ("pixel", False), ("image", True)])
def test_two_process_ddp_equals_one_process(tmp_path, kind, accum):
    """Also with gradient accumulation: 2 ranks x 2 micro-batches give the gradient of the whole batch at once."""
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), kind, str(tmp_path), accum), nprocs=2,
                       start_method="spawn", join=True)
    model = _model(kind)
    images, owner, ground, pidx = _batch()
    scaled, loss = graft_loss(model, kind, images, ground, owner, pidx, D.DistInfo())
    scaled.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], loss, atol=1e-5)
        for n, p in model.named_parameters():
            if p.grad is None:
                continue
            assert torch.allclose(got["grads"][n], p.grad, atol=1e-5), n
