"""graft import: a released GRAFT checkpoint (Hugging Face CLIP vision backbone + projector) in every layout
becomes a graft checkpoint whose features equal the Hugging Face forward pass; eval and export then work."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from helpers_data import make_class_folders, tiny_clip_spec
from PIL import Image

from graft.evaluation.released import ReleasedCheckpointError, import_released, run_import_command
from graft.models.checkpoint import load_encoder
from graft.models.clip_tower import load_clip

transformers = pytest.importorskip("transformers", reason="the 'hf' extra (transformers) cross-checks the importer")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = {"AnnualCrop": (200, 180, 40), "Forest": (20, 120, 30), "Highway": (128, 128, 128),
           "Pasture": (120, 200, 90), "River": (40, 90, 160), "SeaLake": (20, 40, 200)}


def _hf_vision_model(seed: int = 0):
    """A random CLIPVisionModelWithProjection shaped like graft-tiny-vit's image tower (the released layout,
    fewer layers, small width). Every weight is perturbed so that a mis-mapped LayerNorm or bias shows."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=64, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _released_state(hf, bias: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    projector = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 64, bias=bias))
    with torch.no_grad():
        for p in projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {f"satellite_image_backbone.{k}": v.clone() for k, v in hf.state_dict().items()}
    state.update({f"projector.{k}": v.clone() for k, v in projector.state_dict().items()})
    return state


LAYOUTS = {
    # name: (projector bias, 'model.' prefix, Lightning 'state_dict' wrapper, logit_scale, file suffix)
    "plain-bias": (True, False, False, False, ".pt"),
    "model-prefix-nobias-logit": (False, True, False, True, ".pth"),
    "lightning-model-prefix-bias-logit": (True, True, True, True, ".ckpt"),
    "lightning-nobias": (False, False, True, False, ".ckpt"),
    "safetensors-nobias-logit": (False, False, False, True, ".safetensors"),
}


def _save_layout(state: dict[str, torch.Tensor], path: Path, bias: bool, prefix: bool, lightning: bool,
                 logit: bool) -> Path:
    state = dict(state)
    if not bias:
        state.pop("projector.1.bias", None)
    if logit:
        state["logit_scale"] = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
    if prefix:
        state = {f"model.{k}": v for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1234, "epoch": 3} if lightning else state, path)
    return path


@pytest.fixture(scope="module")
def hf_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released")
    hf = _hf_vision_model()
    return {"tmp": tmp, "hf": hf, "spec": tiny_clip_spec(tmp)}


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _hf_features(hf, projector_state: dict[str, torch.Tensor], images: torch.Tensor):
    """The released models' definition: image_embeds, and projector(last_hidden_state) of patch tokens."""
    out = hf(pixel_values=images)
    ln = torch.nn.LayerNorm(64)
    ln.load_state_dict({"weight": projector_state["0.weight"], "bias": projector_state["0.bias"]})
    patches = F.linear(ln(out.last_hidden_state[:, 1:]), projector_state["1.weight"], projector_state.get("1.bias"))
    return out.image_embeds, F.normalize(patches, dim=-1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_import_matches_hugging_face_forward_pass(hf_setup, tmp_path, layout):
    bias, prefix, lightning, logit, suffix = LAYOUTS[layout]
    hf = hf_setup["hf"]
    state = _released_state(hf, bias=bias)
    src = _save_layout(state, tmp_path / f"released{suffix}", bias, prefix, lightning, logit)

    ckpt = import_released(src, tmp_path / "run", clip=hf_setup["spec"])
    encoder, _, meta = load_encoder(tmp_path / "run")
    assert meta["kind"] == "pixel"
    assert meta["imported_from"]["projector_bias"] is bias
    assert (meta["imported_from"]["logit_scale"] is not None) is logit
    assert meta["step"] == (1234 if lightning else 0) and ckpt.name == f"step-{meta['step']:07d}"

    images = _images()
    proj = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
    want_image, want_patches = _hf_features(hf, proj, images)
    with torch.no_grad():
        image, patches = encoder.forward_both(images)
        raw = encoder.encode_image(images, normalize=False)
    torch.testing.assert_close(raw, want_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, F.normalize(want_image, dim=-1), atol=1e-5, rtol=0)
    assert patches.shape == want_patches.shape == (5, 16, 64)
    torch.testing.assert_close(patches, want_patches, atol=1e-5, rtol=0)


def test_image_level_import_without_projector(hf_setup, tmp_path):
    hf = hf_setup["hf"]
    state = {k: v for k, v in _released_state(hf, bias=True).items() if not k.startswith("projector.")}
    # Older transformers saved the position_ids buffer: it carries no weights and is accepted when it is 0..N-1.
    state["satellite_image_backbone.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    src = _save_layout(state, tmp_path / "image.pt", True, False, False, False)
    import_released(src, tmp_path / "run", clip=hf_setup["spec"])
    encoder, _, meta = load_encoder(tmp_path / "run")
    assert meta["kind"] == "image"
    images = _images(seed=3)
    with torch.no_grad():
        want = hf(pixel_values=images).image_embeds
        torch.testing.assert_close(encoder.encode_image(images, normalize=False), want, atol=1e-5, rtol=0)
    with pytest.raises(ReleasedCheckpointError, match="needs projector"):
        import_released(src, tmp_path / "run2", kind="pixel", clip=hf_setup["spec"])


@pytest.mark.parametrize("change, named", [
    ("add:satellite_image_backbone.vision_model.encoder.layers.0.self_attn.rotary.weight",
     "satellite_image_backbone.vision_model.encoder.layers.0.self_attn.rotary.weight"),
    ("add:text_encoder.token_embedding.weight", "text_encoder.token_embedding.weight"),
    ("add:projector.2.weight", "projector.2.weight"),
    ("drop:satellite_image_backbone.vision_model.encoder.layers.1.self_attn.v_proj.bias",
     "v_proj.bias"),
    ("drop:satellite_image_backbone.vision_model.post_layernorm.weight", "visual.ln_post.weight"),
])
def test_a_key_that_does_not_map_is_a_one_line_error_naming_it(hf_setup, tmp_path, change, named):
    state = _released_state(hf_setup["hf"], bias=True)
    op, key = change.split(":", 1)
    if op == "add":
        state[key] = torch.zeros(3)
    else:
        del state[key]
    src = _save_layout(state, tmp_path / "bad.pt", True, False, False, False)
    with pytest.raises(ReleasedCheckpointError) as err:
        import_released(src, tmp_path / "run", clip=hf_setup["spec"])
    msg = str(err.value)
    assert named in msg and "\n" not in msg, msg
    assert not (tmp_path / "run").exists()


def test_a_tower_of_another_shape_is_refused_naming_the_tensor(hf_setup, tmp_path):
    from graft.models.clip_tower import ClipSpec

    src = _save_layout(_released_state(hf_setup["hf"], bias=True), tmp_path / "r.pt", True, False, False, False)
    with pytest.raises(ReleasedCheckpointError, match="shape") as err:
        import_released(src, tmp_path / "run", clip=ClipSpec(model="graft-demo-teacher", pretrained=None))
    assert "\n" not in str(err.value)


def test_imported_model_zero_shot_through_graft_eval_equals_hugging_face_directly(hf_setup, tmp_path):
    """graft eval on the imported checkpoint == the HF model + the spec's text tower on the same images."""
    from graft.evaluation.run import evaluate

    hf, spec = hf_setup["hf"], hf_setup["spec"]
    src = _save_layout(_released_state(hf, bias=False), tmp_path / "r.ckpt", False, True, True, True)
    run_import_command(argparse.Namespace(released=str(src), out_dir=str(tmp_path / "run"), kind=None,
                                          clip_model=spec.model, clip_pretrained=spec.pretrained, trust_pickle=False))
    root = make_class_folders(tmp_path / "eurosat", CLASSES, per_class=5, size=32, noise=40)
    templates = ["a satellite image of {}.", "an aerial photo of {}."]
    result = evaluate({"models": [{"name": "imported", "checkpoint": str(tmp_path / "run")}], "include_baseline": False,
                       "benchmarks": [{"name": "es", "type": "eurosat", "root": str(root), "tasks": ["zeroshot"],
                                       "templates": {"t": templates}}],
                       "out_dir": str(tmp_path / "eval"), "device": "cpu", "workers": 0, "plots": False})
    got = {r["metric"]: r["value"] for r in result["rows"] if r["model"] == "imported"}

    # Directly: the Hugging Face backbone's image_embeds, the open_clip text tower, the same prompts and images.
    from graft.evaluation.datasets import load_benchmark

    data = load_benchmark("eurosat", root)
    bundle = load_clip(spec)
    with torch.no_grad():
        pix = torch.stack([bundle.preprocess(Image.open(p).convert("RGB")) for p in data.paths])
        img = F.normalize(hf(pixel_values=pix).image_embeds, dim=-1)
        text = [t.replace("{}", c) for c in data.classnames for t in templates]
        t = F.normalize(bundle.model.encode_text(bundle.tokenizer(text)), dim=-1).view(len(CLASSES), 2, -1)
        weights = F.normalize(t.mean(1), dim=-1)
    scores = (img @ weights.T).numpy()
    pred = scores.argmax(1)
    top5 = np.argsort(-scores, 1)[:, :5]
    targets = np.asarray(data.targets)
    want_top1 = float((pred == targets).mean())
    want_top5 = float(np.mean([t in row for t, row in zip(targets, top5, strict=True)]))
    want_mpc = float(np.mean([(pred[targets == c] == c).mean() for c in np.unique(targets)]))
    assert got["top1"] == pytest.approx(want_top1, abs=1e-12)
    assert got["top5"] == pytest.approx(want_top5, abs=1e-12)
    assert got["mean_per_class"] == pytest.approx(want_mpc, abs=1e-12)
    assert 0 < want_top1 < 1 or want_mpc not in (0, 1)  # a random model: not a degenerate all-right/all-wrong case


def test_export_of_an_imported_checkpoint_loads_with_open_clip(hf_setup, tmp_path):
    from graft.evaluation.export import export_checkpoint, load_pixel_model

    hf = hf_setup["hf"]
    state = _released_state(hf, bias=True)
    src = _save_layout(state, tmp_path / "r.pt", True, True, False, True)
    import_released(src, tmp_path / "run", clip=hf_setup["spec"])
    out = export_checkpoint(tmp_path / "run", tmp_path / "export")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    images = _images(seed=7)
    proj = {k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")}
    want_image, want_patches = _hf_features(hf, proj, images)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(images), want_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(load_pixel_model(out)(images), want_patches, atol=1e-5, rtol=0)
