"""SAM refinement of zero-shot masks with a real (tiny, randomly initialised) Segment Anything model.

The model is built from segment_anything's own modules at a small size, saved as a state_dict checkpoint
and loaded the way :class:`SamRefiner` loads any SAM: through ``sam_model_registry[model_type]``. Random
weights give arbitrary but deterministic masks, so the tests check what the refiner controls: which
points it prompts, in which order, which of SAM's masks it applies, and that the result stays a valid
mask of the coarse prediction's classes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import make_checkpoint, tiny_clip_spec
from test_eval_tasks import _single_thread, make_segmentation  # noqa: F401

from graft.evaluation import datasets as ds
from graft.evaluation import metrics
from graft.evaluation.run import EvalConfig, evaluate
from graft.evaluation.segmentation import SamRefiner

segment_anything = pytest.importorskip("segment_anything")  # the 'sam' extra (installed by `make setup`)

TINY = "graft_tiny"  # registry key of the tiny builder below
IMG_SIZE, PATCH, DIM = 64, 16, 32


def build_tiny_sam(checkpoint: str | None = None):
    """segment_anything's ``_build_sam`` at toy size: 2-block ViT encoder, 32-d prompts, 1-layer decoder."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = IMG_SIZE // PATCH
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=IMG_SIZE, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2,
                                      mlp_ratio=2, out_chans=DIM, qkv_bias=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                      window_size=2, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=DIM, iou_head_depth=2,
                                 iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=DIM, mlp_dim=32, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        with open(checkpoint, "rb") as f:
            sam.load_state_dict(torch.load(f, weights_only=True))
    return sam


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch) -> Path:
    """A seeded tiny SAM's state_dict on disk, and its builder registered as ``graft_tiny``."""
    monkeypatch.setitem(segment_anything.sam_model_registry, TINY, build_tiny_sam)
    torch.manual_seed(0)
    path = tmp_path / "sam_tiny.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


class Recorder:
    """Wraps the real ``SamPredictor.predict``: records each point prompt and what SAM answered."""

    def __init__(self, predictor):
        self.real = predictor.predict
        self.calls: list[tuple[list[float], np.ndarray, np.ndarray]] = []
        predictor.predict = self

    def __call__(self, point_coords, point_labels, multimask_output):
        assert point_labels.tolist() == [1] and multimask_output  # one positive point, SAM's 3 candidates
        masks, quality, low_res = self.real(point_coords=point_coords, point_labels=point_labels,
                                            multimask_output=multimask_output)
        self.calls.append((point_coords.reshape(-1).tolist(), masks, quality))
        return masks, quality, low_res


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (20, 110, 30)  # a "forest" half, so SAM sees an edge
    return img


def test_registry_checkpoint_is_loaded_into_the_predictor(tiny_checkpoint):
    refiner = SamRefiner(tiny_checkpoint, TINY)
    saved = torch.load(tiny_checkpoint, weights_only=True)
    loaded = refiner.predictor.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    torch.manual_seed(1)
    fresh = build_tiny_sam().state_dict()  # a different init: equality above is the checkpoint, not chance
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved)
    assert not refiner.predictor.model.training
    with pytest.raises(ValueError, match="sam_model_type"):
        SamRefiner(tiny_checkpoint, "vit_tiny_typo")


def test_real_sam_prompts_top_patch_centres_and_applies_its_best_masks(tiny_checkpoint):
    refiner = SamRefiner(tiny_checkpoint, TINY)
    rec = Recorder(refiner.predictor)
    h, w, g = 36, 44, 4  # not square: x and y scale differently (11 px per patch column, 9 per row)
    scores = np.full((3, g, g), -1.0, np.float32)
    scores[0, 2, 0] = 0.8  # class 0 peaks at row 2, col 0 -> (x, y) = (0.5 * 11, 2.5 * 9) = (5.5, 22.5)
    scores[1, 1, 3] = 0.6  # class 1 peaks at row 1, col 3 -> (38.5, 13.5)
    scores[1, 0, 0] = 0.55  # a runner-up patch of class 1: not prompted
    scores[2, 3, 2] = 0.95  # class 2 scores highest of all but is absent from the coarse mask
    coarse = np.zeros((h, w), np.int64)
    coarse[:, w // 2:] = 1
    rgb = _rgb(h, w, 0)

    refined = refiner.refine(rgb, scores, coarse)

    assert refiner.predictor.original_size == (h, w)  # SAM saw this image, at its own size
    assert [pt for pt, _, _ in rec.calls] == [[38.5, 13.5], [5.5, 22.5]]  # least confident class first
    assert refined.shape == coarse.shape and refined.dtype == coarse.dtype
    assert set(np.unique(refined).tolist()) <= {0, 1}  # class 2 is never invented
    expected = coarse.copy()
    for k, (_, masks, quality) in zip([1, 0], rec.calls, strict=True):
        assert masks.shape == (3, h, w) and masks.dtype == bool
        expected[masks[int(np.argmax(quality))]] = k  # SAM's best-rated mask; later (more confident) wins
    np.testing.assert_array_equal(refined, expected)
    assert (refined != coarse).any()  # the refinement did change labels (not a vacuous pass-through)


def test_real_sam_prompts_only_classes_of_the_coarse_mask(tiny_checkpoint):
    refiner = SamRefiner(tiny_checkpoint, TINY)
    rec = Recorder(refiner.predictor)
    h = w = 40
    scores = np.zeros((3, 5, 5), np.float32)
    scores[0, 0, 0] = 0.9
    scores[1, 4, 1] = 0.2  # row 4, col 1 of a 5x5 grid on 40x40 -> (12, 36)
    scores[2, 2, 2] = 0.9
    coarse = np.ones((h, w), np.int64)
    refined = refiner.refine(_rgb(h, w, 1), scores, coarse)
    assert [pt for pt, _, _ in rec.calls] == [[12.0, 36.0]]
    np.testing.assert_array_equal(refined, coarse)
    assert refined is not coarse  # a copy: the caller's coarse mask is not edited in place


def test_from_model_wraps_a_built_sam_and_checks_image_size(tiny_checkpoint):
    refiner = SamRefiner.from_model(build_tiny_sam(str(tiny_checkpoint)))
    coarse = np.zeros((16, 20), np.int64)
    coarse[8:] = 2
    out = refiner.refine(_rgb(16, 20, 2), np.random.default_rng(0).normal(size=(3, 2, 2)).astype(np.float32), coarse)
    assert out.shape == (16, 20) and out.dtype == np.int64
    assert set(np.unique(out).tolist()) <= {0, 2}
    with pytest.raises(ValueError, match="differ in size"):
        refiner.refine(_rgb(16, 24, 2), np.zeros((3, 2, 2), np.float32), coarse)


def test_evaluate_runs_the_sam_variant_and_scores_the_refined_masks(tiny_checkpoint, tmp_path, monkeypatch):
    spec = tiny_clip_spec(tmp_path)
    pixel = make_checkpoint(tmp_path, spec, "pixel", 1)
    seg_root = make_segmentation(tmp_path / "seg")
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real_refine = SamRefiner.refine

    def spy(self, rgb, scores, coarse):
        refined = real_refine(self, rgb, scores, coarse)
        seen.append((coarse, refined))
        return refined

    monkeypatch.setattr(SamRefiner, "refine", spy)
    cfg = EvalConfig(
        models=[{"name": "graft-pixel", "checkpoint": str(pixel)}], include_baseline=False,
        benchmarks=[{"name": "seg", "type": "segmentation", "root": str(seg_root)}],
        templates={"sat": ["a satellite image of {}."]}, out_dir=str(tmp_path / "eval"), workers=0,
        device="cpu", plots=False,
        segmentation={"sam_checkpoint": str(tiny_checkpoint), "sam_model_type": TINY, "overlays": 0},
    )
    result = evaluate(cfg)
    got = {(r["dataset"], r["metric"]): r["value"] for r in result["rows"] if r["task"] == "segmentation"}
    assert {("seg[sat]", "miou"), ("seg[sat+sam]", "miou"), ("seg[sat+sam]", "pixel_acc")} <= set(got)

    data = ds.load_segmentation(seg_root)
    assert len(seen) == len(data) == 3  # one refinement per image, only for the +sam variant
    conf = np.zeros((2, 2), np.int64)
    for i, (coarse, refined) in enumerate(seen):
        assert coarse.shape == refined.shape == (36, 36) and refined.dtype == np.int64
        assert set(np.unique(refined).tolist()) <= set(np.unique(coarse).tolist()) <= {0, 1}
        conf += metrics.confusion_matrix(data.read_mask(i), refined, 2, ignore_index=data.ignore_index)
    assert any((r != c).any() for c, r in seen)  # SAM changed something, so the check below can tell
    m = metrics.segmentation_metrics(conf)
    assert got[("seg[sat+sam]", "miou")] == pytest.approx(m["miou"])  # the refined masks are what is scored
    assert got[("seg[sat+sam]", "pixel_acc")] == pytest.approx(m["pixel_acc"])
