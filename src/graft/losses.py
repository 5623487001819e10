"""GRAFT's 1:N contrastive losses (Mall et al., ICLR 2024, eqs. 1-2).

A satellite image i owns the N_i ground photos taken inside it. With all M
ground embeddings of the (global) batch in the softmax denominator:

    L = mean_i mean_{j in photos(i)} -log( exp(s_i . g_ij / t) / sum_m exp(s_i . g_m / t) )

For the pixel-level loss, s_i is replaced by the feature of the patch of image
i that holds photo j. With one photo per image the image-level loss is the
image->text half of CLIP's loss.

Conventions beyond DESIGN.md's contract, used by the distributed trainer:
``owner[m] < 0`` marks a ground embedding that belongs to no local satellite
row (it was gathered from another rank): it joins every denominator but is
never a positive. Satellite rows that own no photo are left out of the mean.
"""

from __future__ import annotations

import torch


def _mean_per_owner(per_photo: torch.Tensor, owner: torch.Tensor, n_sat: int) -> torch.Tensor:
    """mean_i (mean over photos of i of per_photo), over images that own >= 1 photo."""
    sums = torch.zeros(n_sat, dtype=per_photo.dtype, device=per_photo.device).index_add(0, owner, per_photo)
    counts = torch.zeros(n_sat, dtype=per_photo.dtype, device=per_photo.device).index_add(
        0, owner, torch.ones_like(per_photo)
    )
    has = counts > 0
    if not bool(has.any()):
        # No positives at all: a zero that still carries the graph, so backward() works everywhere.
        return per_photo.sum() * 0.0
    return (sums[has] / counts[has]).mean()


def _check(ground: torch.Tensor, owner: torch.Tensor, n_sat: int) -> None:
    if ground.ndim != 2 or owner.ndim != 1 or owner.shape[0] != ground.shape[0]:
        raise ValueError(f"ground must be (M, D) and owner (M,); got {tuple(ground.shape)} and {tuple(owner.shape)}")
    if owner.numel() and int(owner.max()) >= n_sat:
        raise ValueError(f"owner holds row {int(owner.max())} but there are only {n_sat} satellite rows")


def image_level_loss(
    sat: torch.Tensor, ground: torch.Tensor, owner: torch.Tensor, temperature: float | torch.Tensor = 0.07
) -> torch.Tensor:
    """Image-level GRAFT loss.

    Args:
        sat: (B, D) L2-normalised satellite image embeddings.
        ground: (M, D) L2-normalised ground-photo embeddings (the whole global batch).
        owner: (M,) int64, the row of ``sat`` each ground embedding belongs to (< 0: negatives only).
        temperature: softmax temperature (GRAFT: fixed 0.07), float or a scalar tensor.

    Returns:
        Scalar loss: mean over satellite images of the mean over their photos of -log softmax.
    """
    _check(ground, owner, sat.shape[0])
    logits = sat @ ground.t() / temperature  # (B, M)
    log_den = torch.logsumexp(logits, dim=1)  # (B,)
    pos = owner >= 0
    m_idx = torch.nonzero(pos, as_tuple=True)[0]
    own = owner[m_idx]
    per_photo = log_den[own] - logits[own, m_idx]
    return _mean_per_owner(per_photo, own, sat.shape[0])


def pixel_level_loss(
    patch_feats: torch.Tensor,
    ground: torch.Tensor,
    owner: torch.Tensor,
    patch_index: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
) -> torch.Tensor:
    """Pixel-level GRAFT loss.

    Args:
        patch_feats: (B, P, D) L2-normalised patch embeddings.
        ground: (M, D) L2-normalised ground-photo embeddings.
        owner: (M,) int64 row of ``patch_feats`` each photo belongs to (< 0: negatives only).
        patch_index: (M,) int64 patch of ``patch_feats[owner[m]]`` holding photo m (ignored where owner < 0).
        temperature: softmax temperature.

    Returns:
        Scalar loss: mean over satellite images of the mean over their photos of
        -log softmax of (patch feature . photo) against all M photos.
    """
    b, p, _ = patch_feats.shape
    _check(ground, owner, b)
    pos = owner >= 0
    m_idx = torch.nonzero(pos, as_tuple=True)[0]
    own, pidx = owner[m_idx], patch_index[m_idx]
    if pidx.numel() and (int(pidx.min()) < 0 or int(pidx.max()) >= p):
        raise ValueError(f"patch_index must lie in [0, {p}) for every owned photo; drop photos outside the crop first")
    queries = patch_feats[own, pidx]  # (Mpos, D)
    logits = queries @ ground.t() / temperature  # (Mpos, M)
    per_photo = torch.logsumexp(logits, dim=1) - logits[torch.arange(m_idx.numel(), device=logits.device), m_idx]
    return _mean_per_owner(per_photo, own, b)
