"""graft.pipeline.indoor (Places365 checkpoint loading and the top-10 vote, CLIP zero-shot) and
graft.training.indoor_filter (filter-train)."""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from graft.cli import main as graft_main
from graft.config import ConfigError, validate
from graft.models.clip_tower import ClipSpec, load_clip
from graft.pipeline.indoor import (
    PLACES365_RESNET18_URL,
    IndoorFilter,
    IndoorFilterConfig,
    resnet_input,
)
from graft.training.indoor_filter import train_binary_filter

TINY_CLIP = ClipSpec(model="graft-tiny-vit", pretrained=None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _io_labels() -> np.ndarray:
    """Parsed independently of the module under test: 1 = outdoor, 0 = indoor."""
    lines = resources.files("graft").joinpath("data/places365_io.txt").read_text().split("\n")
    return np.array([int(line.split()[1]) - 1 for line in lines if line.strip()])


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _random_jpegs(n: int, size: int = 48, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def places_ckpt(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random ResNet18/365 saved exactly like CSAILVision's resnet18_places365.pth.tar."""
    torch.manual_seed(0)
    state = resnet18(num_classes=365).state_dict()
    path = tmp_path_factory.mktemp("places") / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "best_prec1": 54.7,
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path, state


def _places_filter(path: Path, **kw) -> IndoorFilter:
    return IndoorFilter(IndoorFilterConfig(kind="resnet18-places365", weights=str(path), device="cpu",
                                           image_size=64, **kw))


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


# ---------------------------------------------------------------- resnet18-places365


def test_places_checkpoint_loads_strictly(places_ckpt):
    path, state = places_ckpt
    f = _places_filter(path)
    loaded = f.model.state_dict()
    assert set(loaded) == set(state)
    for k in ("conv1.weight", "layer4.1.bn2.running_var", "fc.weight", "fc.bias"):
        assert torch.equal(loaded[k], state[k])


def test_legacy_checkpoint_without_num_batches_tracked_loads(places_ckpt, tmp_path):
    # The 2017 CSAILVision files predate BatchNorm's num_batches_tracked buffer.
    _, state = places_ckpt
    legacy = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "legacy.pth.tar"
    torch.save({"state_dict": legacy}, path)
    assert torch.equal(_places_filter(path).model.state_dict()["fc.weight"], state["fc.weight"])


def test_url_weights_download_once_into_cache(places_ckpt, tmp_path):
    import functools
    import http.server
    import threading

    path, state = places_ckpt
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    cache = tmp_path / "cache"
    try:
        f = _places_filter_url(url, cache)
    finally:
        server.shutdown()
        server.server_close()
    assert (cache / path.name).is_file()
    assert torch.equal(f.model.state_dict()["fc.weight"], state["fc.weight"])
    # The server is gone: a second filter must come from the cache.
    assert torch.equal(_places_filter_url(url, cache).model.state_dict()["fc.weight"], state["fc.weight"])


def _places_filter_url(url: str, cache: Path) -> IndoorFilter:
    return IndoorFilter(IndoorFilterConfig(kind="resnet18-places365", weights=url, cache_dir=str(cache),
                                           device="cpu"))


def test_wrong_checkpoint_fails_strict_load(tmp_path):
    path = tmp_path / "imagenet_like.pth"
    torch.save(resnet18(num_classes=1000).state_dict(), path)
    with pytest.raises(ValueError, match="does not match"):
        _places_filter(path)


def test_missing_weights_error_says_what_to_do(tmp_path):
    for weights in (None, str(tmp_path / "nope.pth.tar")):
        with pytest.raises(FileNotFoundError) as info:
            IndoorFilter(IndoorFilterConfig(kind="resnet18-places365", weights=weights))
        msg = str(info.value)
        assert "filter.weights" in msg and PLACES365_RESNET18_URL in msg
        assert "filter.kind=clip" in msg and "graft filter-train" in msg


def _vote_logits() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Two logit rows whose top-10 categories are 7 outdoor + 3 indoor, and 4 outdoor + 6 indoor."""
    io_labels = _io_labels()
    outdoor, indoor = np.flatnonzero(io_labels == 1), np.flatnonzero(io_labels == 0)
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 0.1, (2, 365)).astype(np.float32)
    for row, (n_out, n_in) in enumerate([(7, 3), (4, 6)]):
        top = np.concatenate([outdoor[:n_out] + 0 * row, indoor[:n_in]])
        logits[row, top] = 5.0 + np.arange(len(top), dtype=np.float32) * 0.1  # clearly the top 10
    return torch.from_numpy(logits), io_labels, np.array([0.7, 0.4])


def test_top10_vote_matches_hand_computation(places_ckpt):
    logits, io_labels, expected = _vote_logits()
    f = _places_filter(places_ckpt[0])
    # Hand computation straight from the reference rule: mean IO label of the 10 largest logits.
    hand = np.array([io_labels[np.argsort(-row)[:10]].mean() for row in logits.numpy()])
    np.testing.assert_allclose(hand, expected)
    np.testing.assert_allclose(f.scores_from_logits(logits), expected)
    # The same through score(): the model's output replaced by the known logits.
    f.model = _FixedLogits(logits)
    scores = f.score(_random_jpegs(2))
    np.testing.assert_allclose(scores, expected)
    assert f.keep(scores).tolist() == [True, False]


def test_threshold_decision_is_summed_outdoor_probability(places_ckpt):
    logits, io_labels, _ = _vote_logits()
    f = _places_filter(places_ckpt[0], decision="threshold", threshold=0.6)
    f.model = _FixedLogits(logits)
    z = logits.numpy().astype(np.float64)
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    hand = (probs * io_labels).sum(1)
    scores = f.score(_random_jpegs(2))
    np.testing.assert_allclose(scores, hand, rtol=1e-5)
    assert f.keep(scores).tolist() == (hand >= 0.6).tolist()


def test_real_forward_pass_agrees_with_manual_vote(places_ckpt):
    f = _places_filter(places_ckpt[0], batch_size=2)  # 3 images -> two batches
    images = _random_jpegs(3)
    scores = f.score(images)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores * 10, np.round(scores * 10))  # a vote of 10
    with torch.no_grad():
        x = torch.stack([resnet_input(Image.open(io.BytesIO(b)), 64) for b in images])
        logits = f.model(x).numpy()
    hand = np.array([_io_labels()[np.argsort(-row)[:10]].mean() for row in logits])
    np.testing.assert_allclose(scores, hand)


def test_config_checks():
    with pytest.raises(ConfigError, match="top10_vote"):
        validate(IndoorFilterConfig, {"kind": "clip", "decision": "top10_vote"})
    with pytest.raises(ConfigError, match="threshold"):
        validate(IndoorFilterConfig, {"threshold": 1.5})
    with pytest.raises(ConfigError, match="wieghts"):
        validate(IndoorFilterConfig, {"wieghts": "x"})


def test_none_keeps_everything():
    f = IndoorFilter(IndoorFilterConfig(kind="none"))
    scores = f.score(_random_jpegs(3))
    assert scores.tolist() == [1.0, 1.0, 1.0] and f.keep(scores).all()


def test_undecodable_image_is_named(places_ckpt):
    f = _places_filter(places_ckpt[0])
    with pytest.raises(ValueError, match="image 1"):
        f.score([_random_jpegs(1)[0], b"garbage"])


# ---------------------------------------------------------------- clip


def test_clip_zero_shot_scores():
    torch.manual_seed(0)  # pretrained=None: random weights, seeded so a second load is identical
    bundle = load_clip(TINY_CLIP)
    f = IndoorFilter(IndoorFilterConfig(kind="clip", clip=TINY_CLIP, decision="threshold", device="cpu"), clip=bundle)
    images = _random_jpegs(5, size=40)
    scores = f.score(images)
    assert scores.shape == (5,) and np.isfinite(scores).all()
    assert ((scores > 0) & (scores < 1)).all()
    # Recompute by hand: prompt-ensembled text embeddings, CLIP logit scale, softmax.
    from graft.pipeline.indoor import INDOOR_PROMPTS, OUTDOOR_PROMPTS

    with torch.no_grad():
        model = bundle.model
        text = []
        for prompts in (INDOOR_PROMPTS, OUTDOOR_PROMPTS):
            t = torch.nn.functional.normalize(model.encode_text(bundle.tokenizer(list(prompts))).float(), dim=-1)
            text.append(torch.nn.functional.normalize(t.mean(0), dim=-1))
        x = torch.stack([bundle.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
        hand = (model.logit_scale.exp() * img @ torch.stack(text).T).softmax(1)[:, 1].numpy()
    np.testing.assert_allclose(scores, hand, rtol=1e-5, atol=1e-6)
    # Loading the tower from the config (same seed, same random weights) gives the same answer.
    torch.manual_seed(0)
    np.testing.assert_allclose(IndoorFilter(f.cfg).score(images), scores, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- filter-train


def _synthetic_scene(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Outdoor: blue sky over green ground. Indoor: dim warm walls. Plus noise: easy, not trivial."""
    img = np.empty((size, size, 3), np.float32)
    if kind == "outdoor":
        horizon = rng.integers(size // 3, 2 * size // 3)
        img[:horizon] = (90, 150, 230)
        img[horizon:] = (60, 140, 50)
    else:
        img[:] = (150, 110, 80)
        img[:, : rng.integers(4, size - 4)] *= 0.7
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    for kind in ("indoor", "outdoor"):
        (root / kind).mkdir()
        for i in range(24):
            Image.fromarray(_synthetic_scene(kind, rng)).save(root / kind / f"{i:03d}.png")
    (root / "outdoor" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "indoor" / "notes.txt").write_text("not an image")
    return root


def test_filter_train_cli_learns_and_reloads(scene_folder, tmp_path, capsys):
    out = tmp_path / "io.safetensors"
    rc = graft_main(["filter-train", str(scene_folder), str(out), "--epochs", "2", "--batch-size", "10",
                     "--image-size", "32", "--lr", "2e-3", "--seed", "0"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "val accuracy" in printed and str(out) in printed
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["classes"] == ["indoor", "outdoor"] and meta["image_size"] == 32
    assert meta["n_val"] == 8 and meta["n_train"] == 40  # ceil(15% of 24) = 4 per class held out
    assert meta["rejections"]["counts"] == {"corrupt_image": 1, "not_an_image": 1}
    assert meta["val_accuracy"] >= 0.75, meta  # chance is 0.5

    f = IndoorFilter(IndoorFilterConfig(kind="resnet18-binary", weights=str(out), decision="threshold",
                                        device="cpu"))
    assert f.image_size == 32  # taken from the weights' metadata
    rng = np.random.default_rng(123)  # fresh images, never seen in training
    fresh = [_jpeg(_synthetic_scene(k, rng)) for k in ["indoor"] * 10 + ["outdoor"] * 10]
    scores = f.score(fresh)
    assert ((scores >= 0) & (scores <= 1)).all()
    truth = np.array([False] * 10 + [True] * 10)
    assert (f.keep(scores) == truth).mean() >= 0.75


def test_filter_train_is_deterministic_and_init_loads(scene_folder, places_ckpt, tmp_path):
    from safetensors.torch import load_file

    kw = dict(epochs=1, batch_size=20, image_size=32, lr=1e-3, seed=3)
    a = train_binary_filter(scene_folder, tmp_path / "a.safetensors", **kw)
    b = train_binary_filter(scene_folder, tmp_path / "b.safetensors", **kw)
    wa, wb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["val_accuracy"] == b["val_accuracy"]
    rng_state = torch.get_rng_state()
    train_binary_filter(scene_folder, tmp_path / "d.safetensors", **dict(kw, seed=4))
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is left alone
    wd = load_file(str(tmp_path / "d.safetensors"))
    assert not torch.equal(wa["fc.weight"], wd["fc.weight"])  # and the seed matters

    # --init: every weight but the head comes from the Places365 checkpoint (here with lr=0 so nothing moves).
    path, state = places_ckpt
    train_binary_filter(scene_folder, tmp_path / "c.safetensors", init=str(path), **dict(kw, lr=1e-12))
    got = load_file(str(tmp_path / "c.safetensors"))
    assert torch.allclose(got["conv1.weight"], state["conv1.weight"], atol=1e-6)
    assert got["fc.weight"].shape == (2, 512)


def test_filter_train_bad_inputs(scene_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="indoor"):
        train_binary_filter(tmp_path, tmp_path / "x.safetensors")
    bad_init = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad_init)
    with pytest.raises(ValueError, match="not a torchvision ResNet18"):
        train_binary_filter(scene_folder, tmp_path / "x.safetensors", epochs=1, image_size=32, init=str(bad_init))
    with pytest.raises(ValueError, match=".safetensors"):
        train_binary_filter(scene_folder, tmp_path / "x.pt")
