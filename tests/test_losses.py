"""The 1:N losses against a naive double-loop reference, and against CLIP's loss for N_i = 1."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graft.losses import image_level_loss, pixel_level_loss


def _batch(seed: int, b: int = 6, d: int = 16, p: int = 9):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 26, (b,), generator=g)  # N_i drawn from 1..25
    owner = torch.repeat_interleave(torch.arange(b), counts)
    owner = owner[torch.randperm(owner.numel(), generator=g)]  # photos need not be grouped
    m = owner.numel()
    sat = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    ground = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1)
    patches = F.normalize(torch.randn(b, p, d, generator=g, dtype=torch.float64), dim=-1)
    patch_index = torch.randint(0, p, (m,), generator=g)
    return sat, ground, owner, patches, patch_index


def _reference_image(sat, ground, owner, t):
    sat, ground = sat.numpy(), ground.numpy()
    per_image = []
    for i in range(sat.shape[0]):
        terms = []
        for m in range(ground.shape[0]):
            if owner[m] != i:
                continue
            den = sum(math.exp(float(sat[i] @ ground[k]) / t) for k in range(ground.shape[0]))
            terms.append(-math.log(math.exp(float(sat[i] @ ground[m]) / t) / den))
        if terms:
            per_image.append(sum(terms) / len(terms))
    return sum(per_image) / len(per_image)


def _reference_pixel(patches, ground, owner, patch_index, t):
    patches, ground = patches.numpy(), ground.numpy()
    per_image = []
    for i in range(patches.shape[0]):
        terms = []
        for m in range(ground.shape[0]):
            if owner[m] != i:
                continue
            q = patches[i, int(patch_index[m])]
            den = sum(math.exp(float(q @ ground[k]) / t) for k in range(ground.shape[0]))
            terms.append(-math.log(math.exp(float(q @ ground[m]) / t) / den))
        if terms:
            per_image.append(sum(terms) / len(terms))
    return sum(per_image) / len(per_image)


@pytest.mark.parametrize("seed", range(5))
def test_image_level_loss_matches_double_loop(seed):
    sat, ground, owner, _, _ = _batch(seed)
    got = image_level_loss(sat, ground, owner, 0.07).item()
    assert got == pytest.approx(_reference_image(sat, ground, owner, 0.07), rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_level_loss_matches_double_loop(seed):
    _, ground, owner, patches, patch_index = _batch(seed)
    got = pixel_level_loss(patches, ground, owner, patch_index, 0.07).item()
    assert got == pytest.approx(_reference_pixel(patches, ground, owner, patch_index, 0.07), rel=1e-5)


def test_one_photo_per_image_is_clip_image_to_text_loss():
    g = torch.Generator().manual_seed(0)
    b, d = 8, 32
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    t = 0.07
    clip_i2t = F.cross_entropy(img @ txt.t() / t, torch.arange(b))
    # open_clip's ClipLoss averages both halves; its image half is exactly this cross-entropy.
    got = image_level_loss(img, txt, torch.arange(b), t)
    assert torch.allclose(got, clip_i2t, rtol=1e-5)


def test_foreign_ground_only_in_denominator():
    sat, ground, owner, _, _ = _batch(3, b=4)
    # Pretend the last 10 ground embeddings came from another rank.
    owner2 = owner.clone()
    owner2[-10:] = -1
    got = image_level_loss(sat, ground, owner2, 0.1).item()
    logits = (sat @ ground.t() / 0.1).numpy()
    per_image = []
    for i in range(4):
        ms = [m for m in range(len(owner2)) if owner2[m] == i]
        if ms:
            lse = np.log(np.exp(logits[i]).sum())
            per_image.append(np.mean([lse - logits[i, m] for m in ms]))
    assert got == pytest.approx(float(np.mean(per_image)), rel=1e-6)


def test_gradients_flow_and_images_without_photos_are_skipped():
    sat, ground, owner, patches, patch_index = _batch(1, b=5)
    sat = sat.clone().requires_grad_(True)
    owner = owner.clone()
    owner[owner == 4] = 0  # image 4 now owns nothing
    loss = image_level_loss(sat, ground, owner, 0.07)
    loss.backward()
    assert torch.all(sat.grad[:4].abs().sum(dim=1) > 0)
    # An image with no photos appears in no term: it neither counts in the mean nor gets gradient.
    assert torch.all(sat.grad[4] == 0)


def test_pixel_loss_rejects_out_of_range_patch():
    _, ground, owner, patches, patch_index = _batch(2)
    bad = patch_index.clone()
    bad[0] = -1
    with pytest.raises(ValueError, match="patch_index"):
        pixel_level_loss(patches, ground, owner, bad)
