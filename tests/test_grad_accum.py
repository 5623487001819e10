"""Gradient accumulation: grad_accum micro-batches give the loss and gradients of one batch that many times larger."""

import pytest
import torch

from graft.models.clip_tower import ClipSpec, load_clip
from graft.models.satellite import build_encoder
from graft.training import distributed as D
from graft.training.trainer import GraftModel, micro_batch_loss, step_ground_sets

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH, ACCUM = 8, 4


def _model(kind: str) -> GraftModel:
    torch.manual_seed(0)
    bundle = load_clip(ClipSpec(model="graft-tiny-vit", pretrained=None))
    model = GraftModel(build_encoder(kind, bundle.model.visual), 0.07, learn=True, image_head=True)
    return model.double()


def _micro_batches(n: int, size: int) -> list[dict]:
    """``n`` micro-batches of ``size`` tiles with 1..5 photos each, some outside the crop (patch index -1)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        counts = torch.randint(1, 6, (size,), generator=g)
        owner = torch.repeat_interleave(torch.arange(size), counts)
        ground = torch.nn.functional.normalize(torch.randn(len(owner), 64, generator=g, dtype=torch.float64), dim=-1)
        pidx = torch.randint(-1, 16, (len(owner),), generator=g)
        pidx[torch.cumsum(counts, 0) - 1] = 3  # every tile keeps a photo inside the crop
        out.append({"images": torch.randn(size, 3, 32, 32, generator=g, dtype=torch.float64), "owner": owner,
                    "ground": ground, "patch_index": pidx})
    return out


def _merge(batches: list[dict]) -> dict:
    offsets = torch.cumsum(torch.tensor([0] + [b["images"].shape[0] for b in batches[:-1]]), 0)
    return {"images": torch.cat([b["images"] for b in batches]),
            "owner": torch.cat([b["owner"] + o for b, o in zip(batches, offsets, strict=True)]),
            "ground": torch.cat([b["ground"] for b in batches]),
            "patch_index": torch.cat([b["patch_index"] for b in batches])}


def _step(model: GraftModel, kind: str, batches: list[dict], weight: float) -> tuple[float, dict]:
    """What Trainer.train_step does with its micro-batches: one ground set per step, a backward per micro-batch."""
    model.zero_grad(set_to_none=True)
    info = D.DistInfo()
    sets = step_ground_sets(kind, [b["ground"] for b in batches], [b["owner"] for b in batches],
                            [b["patch_index"] for b in batches], [b["images"].shape[0] for b in batches], info, weight)
    total, start = 0.0, 0
    for b in batches:
        scaled, _ = micro_batch_loss(model, kind, b["images"], start, info, *sets, image_loss_weight=weight)
        scaled.backward()
        total += float(scaled.detach())
        start += b["images"].shape[0]
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("kind", "weight"), [("image", 0.0), ("pixel", 0.0), ("pixel", 0.5)])
def test_accumulated_micro_batches_equal_one_large_batch(kind, weight):
    model = _model(kind)
    micro = _micro_batches(ACCUM, BATCH)
    big_loss, big_grads = _step(model, kind, [_merge(micro)], weight)
    acc_loss, acc_grads = _step(model, kind, micro, weight)
    assert acc_loss == pytest.approx(big_loss, abs=1e-5)
    assert big_grads.keys() == acc_grads.keys() and "log_temperature" in big_grads
    for n, g in big_grads.items():
        assert torch.allclose(acc_grads[n], g, atol=1e-5, rtol=0), n

    # The naive accumulation (each micro-batch's softmax over its own photos, losses averaged) is not it:
    # with 4x fewer negatives the loss is clearly smaller, which is what this test guards against.
    naive = sum(_step(model, kind, [b], weight)[0] for b in micro) / ACCUM
    assert naive < big_loss - 0.1

