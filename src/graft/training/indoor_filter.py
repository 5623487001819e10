"""``graft filter-train``: fine-tune the 2-class (indoor, outdoor) ResNet18 that the build's indoor filter runs.

The filter itself (inference, ``filter.kind: resnet18-binary``) is :class:`graft.pipeline.indoor.IndoorFilter`;
this module writes the weights it reads, with the same input transform at validation as at inference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from graft.pipeline.indoor import (
    BINARY_CLASSES,
    BINARY_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PLACES365_RESNET18_URL,
    load_resnet_state,
    resnet18_model,
    resnet_input,
)
from graft.rejections import Rejections
from graft.storage import atomic_path, atomic_write_json

_TRAIN_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _load_rgb_file(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - name the file that broke training
        raise ValueError(f"filter-train: cannot decode {path}: {type(e).__name__}: {e}") from None


class _Split(torch.utils.data.Dataset):
    """A subset of an ImageFolder's samples with its own transform."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(_load_rgb_file(path)), label


def _stratified_split(targets: list[int], val_fraction: float, gen: torch.Generator) -> tuple[list[int], list[int]]:
    train_idx: list[int] = []
    val_idx: list[int] = []
    for cls in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == cls]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        n_val = min(len(idx) - 1, max(1, math.ceil(val_fraction * len(idx))))
        val_idx += perm[:n_val]
        train_idx += perm[n_val:]
    return sorted(train_idx), sorted(val_idx)


def _load_init(model: torch.nn.Module, init: str) -> None:
    """Load every weight but the classification head from ``init``; anything else missing is an error."""
    path = Path(init).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--init: file not found: {init} (a ResNet18 state dict, e.g. "
                                f"resnet18_places365.pth.tar from {PLACES365_RESNET18_URL})")
    state = {k: v for k, v in load_resnet_state(path).items() if not k.startswith("fc.")}
    try:
        # strict=False only so that the (replaced) head may be absent; everything else is checked below.
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even when not strict
        raise ValueError(f"--init {init} is not a torchvision ResNet18 state dict: "
                         + " ".join(str(e).splitlines()[:3])[:600]) from None
    missing = sorted(set(result.missing_keys) - {"fc.weight", "fc.bias"})
    if missing or result.unexpected_keys:
        raise ValueError(f"--init {init} is not a torchvision ResNet18 state dict: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(dim=1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_binary_filter(
    folder: str | Path,
    out: str | Path,
    epochs: int = 3,
    batch_size: int = 32,
    image_size: int = 128,
    lr: float = 1e-3,
    init: str | None = None,
    seed: int = 0,
    device: str | None = None,
    val_fraction: float = 0.15,
) -> dict[str, Any]:
    """Fine-tune a 2-class (indoor, outdoor) ResNet18 on ``folder/indoor`` and ``folder/outdoor``.

    A stratified ``val_fraction`` of each class is held out for the validation
    accuracy. Training uses light augmentation (random resized crop, flip,
    colour jitter), AdamW with a cosine schedule, and is deterministic for a
    given seed on CPU. The caller's global RNG state is left untouched.

    Args:
        folder: folder with ``indoor/`` and ``outdoor/`` sub-folders of images.
        out: output ``.safetensors`` file; ``out + ".json"`` gets the metadata.
        epochs: passes over the training split.
        batch_size: images per step.
        image_size: square training and inference input size.
        lr: peak learning rate.
        init: optional ResNet18 weights (e.g. Places365) for everything but the head; random if None.
        seed: seed for the split, the initialisation, shuffling and augmentation.
        device: torch device; None picks cuda when available.
        val_fraction: share of each class held out.

    Returns:
        The metadata written to ``out + ".json"`` (classes, sizes, accuracies, paths, rejections).
    """
    folder, out = Path(folder), Path(out)
    _check_arguments(folder, out, epochs, batch_size, image_size, lr)
    rejections = Rejections()
    images = _labelled_images(folder, rejections)
    counts = [images.targets.count(i) for i in range(2)]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        train_ds, val_ds = _split_datasets(images, image_size, val_fraction, gen)
        # BatchNorm cannot train on a batch of one: drop a lone trailing sample.
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen,
                                                   drop_last=len(train_ds) % batch_size == 1)
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size)
        model = resnet18_model(2)
        if init:
            _load_init(model, init)
        model.to(dev)
        train_acc = _fit(model, train_loader, epochs, lr, dev)
        val_acc = _accuracy(model, val_loader, dev)

    _save_weights(model, out, image_size)
    meta = {
        "format": BINARY_FORMAT,
        "arch": "resnet18",
        "classes": list(BINARY_CLASSES),
        "image_size": image_size,
        "train_accuracy_last_epoch": train_acc,
        "val_accuracy": val_acc,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "per_class": dict(zip(BINARY_CLASSES, counts, strict=True)),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "init": str(init) if init else None,
        "weights": str(out),
        "rejections": rejections.to_json(),
    }
    atomic_write_json(str(out) + ".json", meta)
    return meta


def _check_arguments(folder: Path, out: Path, epochs: int, batch_size: int, image_size: int, lr: float) -> None:
    if out.suffix != ".safetensors":
        raise ValueError(f"filter-train: output {out} must end in .safetensors")
    for cls in BINARY_CLASSES:
        if not (folder / cls).is_dir():
            raise FileNotFoundError(f"filter-train: {folder / cls} not found; FOLDER must hold indoor/ and outdoor/")
    if epochs < 1 or batch_size < 1 or image_size < 16 or lr <= 0:
        raise ValueError(f"filter-train: need epochs>=1, batch_size>=1, image_size>=16, lr>0 "
                         f"(got {epochs}, {batch_size}, {image_size}, {lr})")


def _labelled_images(folder: Path, rejections: Rejections) -> Any:
    """The usable images of ``folder/indoor`` and ``folder/outdoor`` (a torchvision ImageFolder); others are rejected."""
    from torchvision import datasets

    def usable(path: str) -> bool:
        if not path.lower().endswith(_TRAIN_EXTENSIONS):
            rejections.add("not_an_image", path, "extension not in " + " ".join(_TRAIN_EXTENSIONS))
            return False
        try:
            with Image.open(path):  # header only: cheap, and catches non-images early
                return True
        except Exception as e:  # noqa: BLE001
            rejections.add("corrupt_image", path, f"{type(e).__name__}: {e}")
            return False

    images = datasets.ImageFolder(str(folder), is_valid_file=usable, allow_empty=True)
    if images.classes != list(BINARY_CLASSES):
        raise ValueError(f"filter-train: {folder} must hold exactly the sub-folders indoor/ and outdoor/, "
                         f"found {images.classes}")
    counts = [images.targets.count(i) for i in range(2)]
    if min(counts) < 2:
        raise ValueError(f"filter-train: need at least 2 usable images per class, found indoor={counts[0]}, "
                         f"outdoor={counts[1]} (rejected: {dict(rejections.counts)})")
    return images


def _split_datasets(images: Any, image_size: int, val_fraction: float,
                    gen: torch.Generator) -> tuple[_Split, _Split]:
    """Stratified train/val split: augmented training images, validation exactly as the filter sees photos."""
    from torchvision import transforms

    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.6, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.2, 0.2, 0.2),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])

    def eval_tf(img: Image.Image) -> torch.Tensor:
        return resnet_input(img, image_size)  # exactly what IndoorFilter feeds at inference

    train_idx, val_idx = _stratified_split(images.targets, val_fraction, gen)
    return (_Split([images.samples[i] for i in train_idx], train_tf),
            _Split([images.samples[i] for i in val_idx], eval_tf))


def _fit(model: torch.nn.Module, loader: torch.utils.data.DataLoader, epochs: int, lr: float,
         device: torch.device) -> float:
    """AdamW with a cosine schedule over ``epochs``; returns the last epoch's (augmented) training accuracy."""
    from tqdm import tqdm

    # foreach: one fused op per step instead of ~60 per-tensor ops (torch only defaults to it on GPU).
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
    total_steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    train_acc = 0.0
    with tqdm(total=total_steps, desc="filter-train", unit="step") as bar:
        for epoch in range(epochs):
            model.train()
            correct = seen = 0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                correct += int((logits.argmax(dim=1) == y).sum())
                seen += len(y)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            train_acc = correct / max(seen, 1)
    return train_acc


def _save_weights(model: torch.nn.Module, out: Path, image_size: int) -> None:
    """The weights as ``.safetensors``, with the metadata :class:`IndoorFilter` checks when loading them."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": BINARY_FORMAT, "arch": "resnet18", "classes": ",".join(BINARY_CLASSES),
            "image_size": str(image_size)}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)


def run_filter_train_command(args: Any) -> int:
    """``graft filter-train FOLDER OUT``: train the binary indoor filter and print a summary."""
    meta = train_binary_filter(
        folder=args.folder, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        image_size=args.image_size, lr=args.lr, init=args.init, seed=args.seed,
    )
    rej = meta["rejections"]
    print(f"filter-train: {meta['n_train']} train / {meta['n_val']} val images "
          f"(indoor={meta['per_class']['indoor']}, outdoor={meta['per_class']['outdoor']})")
    if rej["total"]:
        print(f"  skipped {rej['total']} unusable files: {rej['counts']}")
    print(f"  train accuracy (last epoch, augmented): {meta['train_accuracy_last_epoch']:.3f}")
    print(f"  val accuracy: {meta['val_accuracy']:.3f}")
    print(f"  weights: {meta['weights']}  (metadata: {meta['weights']}.json)")
    print(f"  use it with: filter.kind=resnet18-binary filter.weights={meta['weights']}")
    return 0
