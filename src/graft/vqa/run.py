"""The ``vqa`` task of ``graft eval`` (RSVQA-layout benchmarks) and the ``graft vqa`` command (one image).

Every model of an evaluation answers through the same programs: a trained
pixel-level model through its pixel head, image-level models and the baseline
CLIP through the ViT's own patch tokens (:meth:`LoadedModel.patch_encoder`).
A question the writer cannot turn into a valid program is counted as refused
(in the benchmark's rejection ledger, by reason) and scored as a wrong answer,
so ``parsed_share`` and the accuracies always cover every question of the split.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from graft.config import ConfigError
from graft.evaluation.datasets import ImageReadError, read_rgb
from graft.evaluation.models import LoadedModel, class_embeddings
from graft.evaluation.run import VqaSettings
from graft.evaluation.segmentation import SamRefiner
from graft.vqa.chat_writer import ChatProgramWriter, ChatWriterConfig
from graft.vqa.parser import parse_question
from graft.vqa.primitives import DEFAULT_BACKGROUND, ConceptEncoder, PrimitiveSettings, Scene
from graft.vqa.program import Program, ProgramError, run_program
from graft.vqa.rsvqa import RsvqaSet, format_answer, load_rsvqa, score

log = logging.getLogger(__name__)

ProgramWriter = Callable[[str], Program]


def make_writer(settings: VqaSettings) -> ProgramWriter:
    """The configured question -> program writer (the RSVQA parser, or a chat-completions endpoint)."""
    if settings.writer == "chat":
        c = settings.chat
        return ChatProgramWriter(ChatWriterConfig(c.url, c.model, c.api_key_env, c.timeout_s)).write
    return lambda question: parse_question(question).program


def primitive_settings(settings: VqaSettings) -> PrimitiveSettings:
    return PrimitiveSettings(
        templates=tuple(settings.templates),
        background=DEFAULT_BACKGROUND if settings.background is None else tuple(settings.background),
        min_region_patches=settings.min_region_patches, small_max_m2=settings.small_max_m2,
        large_min_m2=settings.large_min_m2, next_to_m=settings.next_to_m)


def concept_encoder(model: LoadedModel, templates: tuple[str, ...] | list[str], device: str) -> ConceptEncoder:
    return lambda names: class_embeddings(model.model, model.tokenizer, names, list(templates), device)


def program_concepts(tree: Any) -> Iterator[str]:
    """Every concept a program asks the pixel model to locate."""
    if isinstance(tree, dict):
        if tree.get("op") == "regions":
            yield tree["concept"]
        for v in tree.values():
            yield from program_concepts(v)


def run_vqa_benchmark(run: Any, b: Any, data: RsvqaSet, models: list[LoadedModel]) -> None:
    """Answer every question of ``data`` with every model and add RSVQA's accuracies to the report.

    Args:
        run: the ``graft eval`` run state (config, device, report).
        b: the benchmark's config entry.
    """
    s: VqaSettings = run.cfg.vqa
    write = make_writer(s)
    programs: dict[str, Program] = {}
    for text in tqdm(sorted({q.question for q in data.items}), desc=f"{b.name}: writing programs", leave=False):
        try:
            programs[text] = write(text)
        except ProgramError as e:
            data.rejections.add(f"program_{e.reason}", text, str(e))
    parsed_share = sum(q.question in programs for q in data.items) / len(data.items)
    vocabulary = tuple(sorted({c for p in programs.values() for c in program_concepts(p.tree)}))
    refiner = None
    if s.sam:
        if not run.cfg.segmentation.sam_checkpoint:
            raise ConfigError("vqa.sam is true but segmentation.sam_checkpoint is not set")
        seg = run.cfg.segmentation
        refiner = SamRefiner(seg.sam_checkpoint, seg.sam_model_type, run.device)
    by_image: dict[int, list] = {}
    for q in data.items:
        by_image.setdefault(q.image_id, []).append(q)
    settings = primitive_settings(s)
    unreadable: set[int] = set()
    for model in models:
        try:
            patch = model.patch_encoder().to(run.device)
        except TypeError as e:  # not a ViT: no patch tokens to locate concepts with
            run.report.notes.append(f"vqa skipped for {model.name}: {e}")
            continue
        encode, cache = concept_encoder(model, s.templates, run.device), {}
        types, correct = [], []
        with run.report.timer(f"vqa/{b.name}"):
            for img_id, items in tqdm(by_image.items(), desc=f"{b.name}: {model.name}", leave=False, unit="img"):
                try:
                    rgb = data.read_rgb(img_id)
                except ImageReadError as e:
                    if img_id not in unreadable:
                        unreadable.add(img_id)
                        data.rejections.add(e.reason, str(data.images[img_id]), e.detail)
                    types.extend(q.type for q in items)
                    correct.extend([False] * len(items))
                    continue
                scene = Scene.from_image(rgb, patch, model.preprocess_cfg, encode, data.gsd_m, run.device,
                                         vocabulary=vocabulary, settings=settings, refiner=refiner, text_cache=cache)
                for q in items:
                    program = programs.get(q.question)
                    answer = None if program is None else format_answer(run_program(program, scene), q.type,
                                                                         data.variant)
                    types.append(q.type)
                    correct.append(answer == q.answer)
        metrics = score(types, correct)
        metrics.update(parsed_share=parsed_share, questions=float(len(types)))
        run.report.add_metrics("vqa", b.name, model.name, metrics)


def load_rsvqa_benchmark(b: Any, seed: int) -> RsvqaSet:
    """The RSVQA set of a ``graft eval`` benchmark entry, cut to ``max_images`` images (seeded)."""
    vqa_set = load_rsvqa(b.root, b.name, b.eval_split, b.rsvqa_variant, b.gsd)
    ids = sorted(vqa_set.images)
    if b.max_images and b.max_images < len(ids):
        keep = np.random.default_rng(seed).choice(len(ids), b.max_images, replace=False)
        vqa_set = vqa_set.subset_images([ids[i] for i in sorted(keep)])
    return vqa_set


class _RsvqaBenchmark:
    """The ``rsvqa`` benchmark type of ``graft eval`` (registered as a ``graft.benchmarks`` entry point)."""

    load = staticmethod(load_rsvqa_benchmark)
    run = staticmethod(run_vqa_benchmark)


RSVQA_BENCHMARK = _RsvqaBenchmark()


# --------------------------------------------------------------------------- graft vqa (one image)


def _load_model(args, device: str) -> LoadedModel:
    from graft.evaluation.models import load_checkpoint_model, load_clip_model, load_export_model
    from graft.models.clip_tower import ClipSpec

    if bool(args.model) == bool(args.clip_model):
        raise ConfigError("give exactly one of --model (a checkpoint, run folder or export folder) or --clip-model")
    if args.clip_model:
        return load_clip_model("clip", ClipSpec(model=args.clip_model, pretrained=args.clip_pretrained), device)
    path = Path(args.model)
    if not path.exists():
        raise FileNotFoundError(f"--model {path} does not exist; give a training run folder, a checkpoint folder "
                                "or a 'graft export' folder")
    if (path / "open_clip_config.json").is_file():
        return load_export_model(path.name, path, device)
    return load_checkpoint_model(path.name, path, device)


def image_gsd(path: Path) -> float | None:
    """Metres per pixel of a georeferenced GeoTIFF in a projected CRS; None for anything else."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.crs is None or not src.crs.is_projected:
                return None
            return float(abs(src.transform.a))


def run_vqa_command(args) -> int:
    """``graft vqa IMAGE QUESTION --model RUN``: answer one question about one image, and show why."""
    import torch

    from graft.config import validate
    from graft.evaluation.run import resolve_device

    device = resolve_device(args.device)
    if args.chat_url and not args.chat_model:
        raise ConfigError("--chat-url needs --chat-model (the name of the model served there)")
    settings = validate(VqaSettings, {
        "writer": "chat" if args.chat_url else "rsvqa_parser",
        "chat": {"url": args.chat_url, "model": args.chat_model or "", "api_key_env": args.chat_key_env}
        if args.chat_url else None,
        "templates": args.template or ["a photo of a {}."],
        "background": None if args.background is None else [b.strip() for b in args.background.split(",") if b.strip()],
    }, source="graft vqa arguments")
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"image {image} does not exist")
    gsd, gsd_note = args.gsd, ""
    if gsd is None:
        gsd = image_gsd(image)
        gsd_note = "" if gsd else " (no --gsd and the image is not georeferenced: areas are in pixels)"
    try:
        program = make_writer(settings)(args.question)
    except ProgramError as e:
        print(f"question: {args.question}\nrefused:  {e}")
        return 1
    model = _load_model(args, device).to(device)
    rgb = read_rgb(image)
    concepts = list(dict.fromkeys(program_concepts(program.tree)))
    extra = [c.strip() for c in (args.vocabulary or "").split(",") if c.strip()]
    refiner = SamRefiner(args.sam_checkpoint, args.sam_model_type, device) if args.sam_checkpoint else None
    with torch.no_grad():
        scene = Scene.from_image(rgb, model.patch_encoder().to(device), model.preprocess_cfg,
                                 concept_encoder(model, settings.templates, device), gsd or 1.0, device,
                                 vocabulary=tuple(dict.fromkeys([*concepts, *extra])),
                                 settings=primitive_settings(settings), refiner=refiner)
        value = run_program(program, scene)
    shown = ("yes" if value else "no") if isinstance(value, (bool, np.bool_)) else (
        f"{value:.0f} m^2{gsd_note}" if program.type == "area" else
        f"{value:.3f}" if isinstance(value, float) else str(value))
    print(f"question: {args.question}")
    print(f"program:  {json.dumps(program.tree)}")
    print(f"answer:   {shown}")
    print(f"model:    {model.description} (patches: {model.patch_source}); image {rgb.shape[1]}x{rgb.shape[0]} px, "
          f"GSD {gsd or 1.0:g} m{gsd_note}")
    for c in concepts:
        r = scene.regions(c)
        print(f"  {c}: {len(r.ids)} region(s), {100 * r.pixels().sum() / r.labels.size:.1f}% of the image, "
              f"{r.pixels().sum() * scene.gsd_m ** 2:.0f} m^2 (competing with: {', '.join(scene.competitors(c)[1:])})")
    return 0
