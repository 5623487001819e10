"""``graft eval``: every model on every benchmark, side by side, with the frozen CLIP baseline.

A YAML config (eval/*.yaml, validated by :class:`EvalConfig`) lists the models
(training checkpoints, export folders or CLIP specs) and the benchmarks with
their tasks. :func:`evaluate` loads every benchmark first, so a missing
dataset fails before any model work; then it computes each model's image
features once per benchmark and runs the tasks on them, and writes
``report.json``, ``report.md`` and plots into ``out_dir``.

Zero-shot classification, retrieval and segmentation run once per prompt
template set; the set's name goes into the report's dataset field, e.g.
``eurosat[satellite]``.
"""

from __future__ import annotations

import json
import logging
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from graft.config import ConfigError, StrictModel, load_config, validate
from graft.dataset.embeddings import cache_spec_mismatch
from graft.errors import GraftError
from graft.evaluation import report as rep
from graft.evaluation.alignment import alignment_score, native_crop_transform
from graft.evaluation.clip_benchmark_sets import DATASETS as CLIP_BENCHMARK_DATASETS
from graft.evaluation.clip_benchmark_sets import SET_NAME as CLIP_BENCHMARK_SET
from graft.evaluation.clip_benchmark_sets import PromptSet, clip_benchmark_prompts
from graft.evaluation.datasets import (
    ALL_KINDS,
    MULTILABEL_KINDS,
    ClassificationSet,
    DatasetNotFoundError,
    PairSet,
    SegmentationSet,
    load_benchmark,
)
from graft.evaluation.models import (
    LoadedModel,
    class_embeddings,
    load_checkpoint_model,
    load_clip_model,
    load_export_model,
)
from graft.evaluation.probes import knn_scores, linear_probe_scores, probe_metrics, seeded_split
from graft.evaluation.retrieval import text_to_image_retrieval
from graft.evaluation.segmentation import SamRefiner, evaluate_segmentation
from graft.evaluation.zeroshot import (
    DEFAULT_TEMPLATES,
    Features,
    extract_image_features,
    make_loader,
    zeroshot_from_features,
)
from graft.models.clip_tower import ClipSpec

log = logging.getLogger(__name__)



class EvalIncomplete(GraftError):
    """Some benchmarks failed after the models loaded; the report of the others was written."""


TaskName = Literal["zeroshot", "retrieval", "segmentation", "knn", "linear_probe", "alignment", "vqa"]
REPORT_TASK = {"zeroshot": "zeroshot_classification", "retrieval": "retrieval", "segmentation": "segmentation",
               "knn": "knn", "linear_probe": "linear_probe", "alignment": "alignment", "vqa": "vqa"}
_CLASSIFICATION_TASKS = ("zeroshot", "retrieval", "knn", "linear_probe")
TASKS_BY_KIND: dict[str, tuple[str, ...]] = {
    **{k: _CLASSIFICATION_TASKS for k in ALL_KINDS if k not in ("segmentation", "graft_pairs")},
    "segmentation": ("segmentation",),
    "graft_pairs": ("alignment",),
    "rsvqa": ("vqa",),
}
DEFAULT_TASKS = {"segmentation": ["segmentation"], "graft_pairs": ["alignment"], "rsvqa": ["vqa"]}
BASELINE_NAME = "baseline"


class ModelEntry(StrictModel):
    """One model to evaluate: exactly one of ``checkpoint``, ``export`` or ``clip``.

    Attributes:
        name: the model's column in the report.
        checkpoint: a checkpoint folder, or a run folder (its newest valid checkpoint).
        export: a folder written by ``graft export``.
        clip: any open_clip spec, evaluated frozen.
    """

    name: str
    checkpoint: str | None = None  # checkpoint folder, or run folder (newest valid checkpoint)
    export: str | None = None  # folder written by 'graft export'
    clip: ClipSpec | None = None  # any open_clip spec, evaluated frozen

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelEntry:
        given = [k for k in ("checkpoint", "export", "clip") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"model {self.name!r} needs exactly one of checkpoint / export / clip, got {given or 'none'}")
        return self


class BenchmarkEntry(StrictModel):
    """One benchmark and the tasks to run on it.

    Attributes:
        name: the benchmark's name in the report.
        type: the dataset layout (eurosat, ucmerced, resisc45, aid, imagefolder, csv_multilabel,
            bigearthnet, segmentation, graft_pairs).
        root: the folder holding it (nothing is downloaded).
        tasks: tasks to run; default zeroshot + retrieval (segmentation / alignment for those types).
        classnames: prompt names in class order; override classnames.txt.
        templates: template sets ({name: [templates with {}]}); override templates.txt and the defaults.
        rgb_bands: 1-based bands of multi-band TIFFs used as R, G, B.
        csv: multi-label sets: the CSV file name under root.
        splits: ImageFolder sets: {split: file listing its images}.
        eval_split: split scored by zero-shot, retrieval and probes when the set has splits.
        train_split: split the probes train on when the set has splits.
        pairs_split: graft_pairs: which split's tiles to use.
        max_images: a seeded random subset of this many images, for quick runs.
    """

    name: str
    type: Literal["eurosat", "eurosat_ms", "ucmerced", "resisc45", "aid", "imagefolder", "csv_multilabel",
                  "bigearthnet", "bigearthnet_s2", "segmentation", "graft_pairs", "rsvqa"]
    root: str
    tasks: list[TaskName] | None = None  # default: zeroshot + retrieval / segmentation / alignment
    classnames: list[str] | None = None  # prompt names in class order; overrides classnames.txt
    # Template sets: a mapping {name: templates} overrides templates.txt and the defaults; a name or list of names
    # picks sets: the config's own (ground, satellite, ...) or 'clip_benchmark' (CLIP_benchmark's prompts).
    templates: dict[str, list[str]] | list[str] | str | None = None
    rgb_bands: list[int] | None = None  # 1-based bands of multi-band TIFFs used as R, G, B
    bands: list[str] | None = Field(default=None, description="names of multi-band TIFFs' bands in file order "
                                    "(a multispectral model reads its own bands by name)")
    csv: str = "labels.csv"  # multi-label sets: CSV file name under root
    splits: dict[str, str] | None = None  # ImageFolder sets: {split: file listing its images}
    eval_split: str = "test"  # split scored by zero-shot/retrieval/probes when the set has splits
    train_split: str = "train"  # split the probes train on when the set has splits
    pairs_split: str = "test"  # graft_pairs: which split's tiles to use
    max_images: int | None = Field(default=None, ge=1)  # seeded random subset, for quick runs
    gsd: float | None = Field(default=None, gt=0, description="rsvqa: metres per pixel of the images "
                              "(default: LR 10, HR 0.15)")
    rsvqa_variant: Literal["lr", "hr"] | None = Field(default=None, description="rsvqa: RSVQA-LR or -HR layout; "
                                                     "detected from the file names if omitted")

    @model_validator(mode="after")
    def _tasks_fit_type(self) -> BenchmarkEntry:
        allowed = TASKS_BY_KIND[self.type]
        if self.tasks is None:
            self.tasks = list(DEFAULT_TASKS.get(self.type, ["zeroshot", "retrieval"]))
        bad = [t for t in self.tasks if t not in allowed]
        if bad:
            raise ValueError(f"benchmark {self.name!r} ({self.type}) cannot run {bad}; allowed: {list(allowed)}")
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        if isinstance(self.templates, list) and CLIP_BENCHMARK_SET in self.templates \
                and self.type not in CLIP_BENCHMARK_DATASETS:
            raise ValueError(f"benchmark {self.name!r} ({self.type}): CLIP_benchmark has no template set for it; "
                             f"'templates: {CLIP_BENCHMARK_SET}' covers types {sorted(CLIP_BENCHMARK_DATASETS)}")
        if self.splits and self.type in (*MULTILABEL_KINDS, "segmentation", "graft_pairs", "rsvqa"):
            raise ValueError(f"benchmark {self.name!r}: 'splits' files are for ImageFolder sets; multi-label CSVs "
                             "carry a 'split' column instead")
        return self


class RetrievalSettings(StrictModel):
    """Text-to-image retrieval.

    Attributes:
        index: ``flat`` (exact), ``ivf`` or ``hnsw`` (faiss, for millions of images).
        depth: images retrieved per query; None ranks them all.
        nlist: ivf lists (default about 4 sqrt(N)).
        nprobe: ivf lists searched per query.
        hnsw_m: hnsw graph degree.
        ef_search: hnsw search breadth.
        precision_at: the k of the precision@k metrics.
        grid_queries: rows (queries) of the retrieval plot.
        grid_top: tiles per row of the retrieval plot.
    """

    index: Literal["flat", "ivf", "hnsw"] = "flat"
    depth: int | None = Field(default=None, ge=1)  # images retrieved per query; None = rank all
    nlist: int | None = Field(default=None, ge=1)  # ivf lists (default ~4 sqrt(N))
    nprobe: int = Field(default=16, ge=1)
    hnsw_m: int = Field(default=32, ge=4)
    ef_search: int = Field(default=128, ge=1)
    precision_at: list[int] = [10, 100]
    grid_queries: int = 5  # rows of the retrieval plot
    grid_top: int = 6  # tiles per row


class ProbeSettings(StrictModel):
    """kNN and linear probes on frozen image features.

    Attributes:
        knn_k: neighbours of the kNN probe.
        knn_vote: ``weighted`` (by similarity) or ``majority``.
        knn_temperature: temperature of the weighted vote.
        linear_c: inverse regularisation of the logistic regression; several values are chosen
            between on a seeded validation part of the training split.
        linear_max_iter: solver iterations.
        test_fraction: seeded test share when the set has no splits.
        seed: seed of the splits.
    """

    knn_k: int = Field(default=20, ge=1)
    knn_vote: Literal["weighted", "majority"] = "weighted"
    knn_temperature: float = Field(default=0.07, gt=0)
    linear_c: float | list[float] = 1.0  # several values: chosen on a seeded validation part of train
    linear_max_iter: int = 1000
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # seeded split when the set has none
    seed: int = 0


class SegmentationSettings(StrictModel):
    """Zero-shot segmentation.

    Attributes:
        sam_checkpoint: local SAM weights; enables refinement (needs the 'sam' extra).
        sam_model_type: the SAM architecture of that checkpoint.
        overlays: images in the overlay plot.
        batch_size: images per forward pass.
    """

    sam_checkpoint: str | None = None  # local SAM weights; enables refinement (needs the 'sam' extra)
    sam_model_type: str = "vit_h"
    overlays: int = Field(default=4, ge=0)  # images in the overlay plot
    batch_size: int = Field(default=8, ge=1)


class ChatWriterSettings(StrictModel):
    """An OpenAI-compatible chat-completions endpoint that writes VQA programs (graft.vqa.chat_writer)."""

    url: str = Field(description="API base (http://127.0.0.1:8000/v1) or the full .../chat/completions URL")
    model: str = Field(description="model name served at the endpoint")
    api_key_env: str | None = Field(default=None, description="name of the environment variable holding the "
                                    "key (never the key itself)")
    timeout_s: float = Field(default=60.0, gt=0, description="seconds to wait for one answer")


class VqaSettings(StrictModel):
    """Zero-shot VQA as programs over the pixel-level model (graft.vqa; thresholds: see eval/README.md)."""

    writer: Literal["rsvqa_parser", "chat"] = Field(
        default="rsvqa_parser", description="who turns a question into a program: the built-in RSVQA template "
        "parser, or a chat-completions endpoint (vqa.chat)")
    chat: ChatWriterSettings | None = Field(default=None, description="the endpoint; required when writer: chat")
    templates: list[str] = Field(default=["a photo of a {}."], description="prompt templates of a concept "
                                 "('{}' = the concept)")
    background: list[str] | None = Field(default=None, description="prompts every concept competes with for a "
                                         "pixel; None: a generic land-cover list")
    sam: bool = Field(default=False, description="refine concept masks with SAM (segmentation.sam_checkpoint)")
    min_region_patches: float = Field(default=0.5, ge=0, description="regions smaller than this many patches "
                                      "are dropped as upsampling artefacts")
    small_max_m2: float = Field(default=100.0, gt=0, description="'small' regions are at most this area (m^2)")
    large_min_m2: float = Field(default=1000.0, gt=0, description="'large' regions are at least this area (m^2)")
    next_to_m: float = Field(default=1000.0, gt=0, description="'next to' means within this distance (m), "
                             "as in RSVQA")

    @model_validator(mode="after")
    def _writer_configured(self) -> VqaSettings:
        if self.writer == "chat" and self.chat is None:
            raise ValueError("vqa.writer is 'chat' but vqa.chat (url, model, api_key_env) is not given")
        if any("{}" not in t for t in self.templates) or not self.templates:
            raise ValueError(f"vqa.templates: every template needs '{{}}' for the concept, got {self.templates}")
        return self


class EvalConfig(StrictModel):
    """An evaluation suite: models x benchmarks x tasks.

    Attributes:
        models: the models to evaluate.
        baseline: the frozen CLIP baseline; default the CLIP tower of the first checkpoint/export.
        include_baseline: evaluate the baseline beside the models.
        benchmarks: the benchmarks and their tasks.
        templates: default prompt template sets ({name: [templates with {}]}).
        out_dir: where report.json, report.md and plots go.
        batch_size: images per forward pass.
        workers: image decoding workers.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        retrieval: retrieval settings.
        probes: kNN and linear probe settings.
        segmentation: segmentation settings.
        alignment_k: neighbourhood of the mutual-kNN alignment (needs more pairs than this).
        plots: write plots.
        skip_missing: a benchmark not on disk is noted in the report and skipped instead of failing the run.
        plot_templates: template set used for plots (default 'satellite' if present, else the first).
        seed: seed of subsets (max_images).
    """

    models: list[ModelEntry] = []
    baseline: ClipSpec | None = None  # default: the CLIP tower of the first checkpoint/export
    include_baseline: bool = True
    benchmarks: list[BenchmarkEntry] = Field(min_length=1)
    templates: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_TEMPLATES.items()})
    out_dir: str = "runs/eval"
    batch_size: int = Field(default=64, ge=1)
    workers: int = Field(default=2, ge=0)
    device: str = "auto"
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings)
    vqa: VqaSettings = Field(default_factory=VqaSettings, description="zero-shot VQA settings (rsvqa benchmarks)")
    alignment_k: int = Field(default=10, ge=1)
    plots: bool = True
    skip_missing: bool = False  # a missing benchmark is noted in the report and skipped instead of failing the run
    plot_templates: str | None = None  # template set used for plots (default: 'satellite' if present, else first)
    seed: int = 0  # subsets (max_images)

    @model_validator(mode="after")
    def _names(self) -> EvalConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.include_baseline and BASELINE_NAME in names:
            raise ValueError(f"model name {BASELINE_NAME!r} is reserved for the baseline; rename it or set "
                             "include_baseline: false")
        if not self.models and not (self.include_baseline and self.baseline):
            raise ValueError("nothing to evaluate: list models, or give a baseline CLIP spec")
        bnames = [b.name for b in self.benchmarks]
        if len(set(bnames)) != len(bnames):
            raise ValueError(f"benchmark names must be unique, got {bnames}")
        for b in self.benchmarks:
            unknown = [n for n in b.templates if n not in self.templates and n != CLIP_BENCHMARK_SET] \
                if isinstance(b.templates, list) else []
            if unknown:
                raise ValueError(f"benchmarks.{b.name}.templates: no template set named {unknown[0]!r}; the config "
                                 f"has {sorted(self.templates)}, plus {CLIP_BENCHMARK_SET!r}")
        for name, sets in [("templates", self.templates)] + [
                (f"benchmarks.{b.name}.templates", b.templates) for b in self.benchmarks
                if isinstance(b.templates, dict)]:
            for sname, tpl in sets.items():
                if not tpl or any("{}" not in t for t in tpl):
                    raise ValueError(f"{name}.{sname}: every template needs '{{}}' for the class name, got {tpl}")
        return self


# --------------------------------------------------------------------------- helpers


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available; use device: cpu or auto")
    return device


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "x"


def _default_baseline(cfg: EvalConfig) -> ClipSpec | None:
    """The CLIP tower the first trained model started from: the only baseline that isolates training."""
    from graft.models.checkpoint import read_meta, resolve_checkpoint

    for m in cfg.models:
        if m.checkpoint:
            return ClipSpec(**read_meta(resolve_checkpoint(m.checkpoint))["clip"])
        if m.export:
            info = Path(m.export) / "graft_export.json"
            if info.is_file():
                return ClipSpec(**json.loads(info.read_text())["base_clip"])
    return None


def load_models(cfg: EvalConfig, device: str) -> list[LoadedModel]:
    """Every configured model, then the baseline (if any)."""
    out = []
    for m in cfg.models:
        if m.checkpoint:
            out.append(load_checkpoint_model(m.name, m.checkpoint, device))
        elif m.export:
            out.append(load_export_model(m.name, m.export, device))
        else:
            out.append(load_clip_model(m.name, m.clip, device))
    if cfg.include_baseline:
        spec = cfg.baseline or _default_baseline(cfg)
        if spec is None:
            log.warning("no baseline: give 'baseline' (a CLIP spec) in the config")
        else:
            out.append(load_clip_model(BASELINE_NAME, spec, device))
    return [m.to(device) for m in out]


# Benchmark types that applications beside evaluation provide (graft.vqa's "rsvqa"). They are found
# through the "graft.benchmarks" entry points, because the applications import evaluation and never the
# other way round; another package can add a benchmark type the same way. An entry point names an object
# with ``load(entry, seed)`` (the data set) and ``run(eval_run, entry, data, models)`` (adds report rows).
APP_BENCHMARK_GROUP = "graft.benchmarks"
APP_BENCHMARK_TYPES = ("rsvqa",)


def app_benchmark(type_name: str) -> Any:
    """The application that provides benchmark type ``type_name``, from the ``graft.benchmarks`` entry points."""
    for ep in entry_points(group=APP_BENCHMARK_GROUP):
        if ep.name == type_name:
            return ep.load()
    raise ConfigError(f"benchmark type {type_name!r} is provided by an application package registered under the "
                      f"{APP_BENCHMARK_GROUP!r} entry points, and none is installed: reinstall graft "
                      "(pip install -e .) so its entry points are registered")


def _load_set(b: BenchmarkEntry, seed: int):
    if b.type in APP_BENCHMARK_TYPES:
        return app_benchmark(b.type).load(b, seed)
    data = load_benchmark(b.type, b.root, name=b.name, classnames=b.classnames, rgb_bands=b.rgb_bands,
                          split_files=b.splits, csv_name=b.csv, pairs_split=b.pairs_split, bands=b.bands)
    if not b.max_images or b.max_images >= len(data):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), b.max_images, replace=False))
    return data.subset(keep)


def _template_sets(b: BenchmarkEntry, data: Any, cfg: EvalConfig) -> dict[str, PromptSet]:
    """The prompt sets a benchmark runs with, by name (the name goes into the report's dataset field)."""
    def own(templates: list[str], source: str) -> PromptSet:
        return PromptSet(list(data.classnames), list(templates), source)

    if isinstance(b.templates, dict):
        return {n: own(t, "the benchmark's templates in the config") for n, t in b.templates.items()}
    if isinstance(b.templates, list):
        return {n: clip_benchmark_prompts(b.type, list(data.classes)) if n == CLIP_BENCHMARK_SET
                else own(cfg.templates[n], "the config's templates") for n in b.templates}
    if getattr(data, "templates", None):
        return {"custom": own(data.templates, "templates.txt")}
    return {n: own(t, "the config's templates") for n, t in cfg.templates.items()}


def _note_prompt_sources(report: rep.Report, bench: str, sets: dict[str, PromptSet]) -> None:
    for name, pset in sets.items():
        if name == CLIP_BENCHMARK_SET:
            report.notes.append(f"{bench}[{name}] prompts: {pset.source}")


def _plot_set(sets: dict[str, Any], cfg: EvalConfig) -> str:
    if cfg.plot_templates and cfg.plot_templates in sets:
        return cfg.plot_templates
    return "satellite" if "satellite" in sets else next(iter(sets))


def check_preconditions(b: BenchmarkEntry, data: Any, cfg: EvalConfig) -> None:
    """The cheap checks of a loaded benchmark that would otherwise fail after the models ran.

    Raises:
        ConfigError: a split the config names is missing, or there are too few pairs for ``alignment_k``.
    """
    if isinstance(data, PairSet) and len(data) <= cfg.alignment_k:
        raise ConfigError(f"benchmark {b.name}: alignment_k={cfg.alignment_k} needs more than {cfg.alignment_k} "
                          f"tiles, {b.root} has {len(data)} in split {b.pairs_split!r}; lower alignment_k or "
                          "use a larger split")
    if isinstance(data, ClassificationSet) and data.splits is not None:
        present = sorted(set(data.splits.tolist()) - {""})
        if b.eval_split not in present:
            raise ConfigError(f"benchmark {b.name}: eval_split {b.eval_split!r} not among its splits {present}")
        if set(b.tasks) & {"knn", "linear_probe"} and b.train_split not in present:
            raise ConfigError(f"benchmark {b.name}: train_split {b.train_split!r} not among {present}")


class _Run:
    """State of one evaluate() call."""

    def __init__(self, cfg: EvalConfig, device: str):
        self.cfg = cfg
        self.device = device
        self.report = rep.Report()
        self.out = Path(cfg.out_dir)
        self.plot_dir = self.out / "plots"

    def plot(self, fn, *args, **kwargs) -> None:
        if not self.cfg.plots:
            return
        with self.report.timer("plots"):
            try:
                path = fn(*args, **kwargs)
                self.report.plots.append(str(Path(path).relative_to(self.out)))
            except Exception as e:  # noqa: BLE001 - a failed plot must not lose the numbers
                log.warning("plot %s failed: %s", args[-1] if args else fn.__name__, e)
                self.report.notes.append(f"plot {fn.__name__} failed: {e}")

    def features(self, model: LoadedModel, data: Any, bench: str) -> Features:
        # A multispectral model reads its bands from the set; an RGB model the set's R, G, B (read_rgb).
        loader = make_loader(data, model.preprocess, self.cfg.batch_size, self.cfg.workers,
                             band_input=model.tile_input if model.band_norm else None)
        with self.report.timer(f"features/{bench}"):
            feats = extract_image_features(model.model, loader, self.device, desc=f"{bench}: {model.name}")
        return feats

    def record_failures(self, data: Any, feats: Features, seen: set[int], paths: list) -> None:
        for idx, reason, detail in feats.failures:
            if idx not in seen:
                seen.add(idx)
                data.rejections.add(reason, str(paths[idx]) if paths else str(idx), detail)

    # ----------------------------------------------------------------- classification

    def classification(self, b: BenchmarkEntry, data: ClassificationSet, models: list[LoadedModel]) -> None:
        tasks = set(b.tasks)
        tsets = _template_sets(b, data, self.cfg)
        _note_prompt_sources(self.report, b.name, tsets)
        plot_set = _plot_set(tsets, self.cfg)
        if data.splits is not None:  # the splits were checked by check_preconditions
            needed = data.splits == b.eval_split
            if tasks & {"knn", "linear_probe"}:
                needed |= data.splits == b.train_split
            work = data.subset(np.nonzero(needed)[0])
        else:
            work = data
        seen: set[int] = set()
        per_class: dict[str, dict[str, np.ndarray]] = {}
        for model in models:
            feats = self.features(model, work, b.name)
            self.record_failures(work, feats, seen, work.paths)
            x, rows = feats.features, feats.index
            targets = work.targets[rows]
            if work.splits is not None:
                eval_mask = work.splits[rows] == b.eval_split
            else:
                eval_mask = np.ones(len(rows), dtype=bool)
            for tname, pset in tsets.items():
                dname = f"{b.name}[{tname}]"
                weights = class_embeddings(model.model, model.tokenizer, pset.classnames, pset.templates, self.device)
                if "zeroshot" in tasks:
                    with self.report.timer(f"zeroshot/{b.name}"):
                        res = zeroshot_from_features(x[eval_mask], weights, targets[eval_mask], work.multilabel)
                    self.report.add_metrics("zeroshot_classification", dname, model.name, res.metrics)
                    if work.multilabel:
                        for c, ap in zip(work.classes, res.per_class, strict=True):
                            self.report.add("zeroshot_classification", dname, model.name, f"ap[{c}]", ap)
                    if tname == plot_set:
                        per_class.setdefault(dname, {})[model.name] = res.per_class
                        if res.confusion is not None:
                            self.plot(rep.plot_confusion_matrix, res.confusion, work.classnames,
                                      f"{model.name} zero-shot on {dname}",
                                      self.plot_dir / _slug(b.name) / f"confusion_{_slug(model.name)}_{_slug(tname)}.png")
                if "retrieval" in tasks:
                    r = self.cfg.retrieval
                    with self.report.timer(f"retrieval/{b.name}"):
                        res_r = text_to_image_retrieval(
                            x[eval_mask], weights.numpy(), work.relevance()[rows][eval_mask], index=r.index,
                            depth=r.depth, precision_ks=tuple(r.precision_at), **self._index_opts())
                    self.report.add_metrics("retrieval", dname, model.name, res_r.metrics)
                    if tname == plot_set:
                        self._retrieval_grid(work, rows[eval_mask], res_r, model.name, dname, b.name, tname)
            if tasks & {"knn", "linear_probe"}:
                self._probes(b, work, x, rows, targets, model.name, tasks)
        for dname, values in per_class.items():
            ylabel = "average precision" if work.multilabel else "accuracy"
            self.plot(rep.plot_per_class_bars, values, work.classnames, f"zero-shot per-class {ylabel}, {dname}",
                      ylabel, self.plot_dir / _slug(b.name) / f"per_class_{_slug(dname)}.png")

    def _index_opts(self) -> dict[str, Any]:
        r = self.cfg.retrieval
        return {"nlist": r.nlist, "nprobe": r.nprobe, "hnsw_m": r.hnsw_m, "ef_search": r.ef_search}

    def _retrieval_grid(self, work: ClassificationSet, rows: np.ndarray, res, model: str, dname: str, bench: str,
                        tname: str) -> None:
        if not self.cfg.plots:
            return
        r = self.cfg.retrieval
        queries, tiles, rel = [], [], []
        for q in range(min(r.grid_queries, len(work.classnames))):
            ids = [i for i in res.ids[q][: r.grid_top] if i >= 0]
            try:
                imgs = [work.read_rgb(int(rows[i])) for i in ids]
            except Exception as e:  # noqa: BLE001 - the image decoded once already; report and move on
                self.report.notes.append(f"retrieval grid for {model} on {dname} skipped: {e}")
                return
            queries.append(work.classnames[q])
            tiles.append(imgs)
            rel.append(list(res.ranked_relevant[q][: len(ids)]))
        self.plot(rep.plot_retrieval_grid, queries, tiles, rel, f"{model}: text -> image, {dname}",
                  self.plot_dir / _slug(bench) / f"retrieval_{_slug(model)}_{_slug(tname)}.png")

    def _probes(self, b: BenchmarkEntry, work: ClassificationSet, x: np.ndarray, rows: np.ndarray,
                targets: np.ndarray, model: str, tasks: set[str]) -> None:
        p = self.cfg.probes
        if work.splits is not None:
            split = work.splits[rows]
            train, test = np.nonzero(split == b.train_split)[0], np.nonzero(split == b.eval_split)[0]
        else:
            train, test = seeded_split(len(rows), None if work.multilabel else targets, p.test_fraction, p.seed)
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"benchmark {b.name}: probes need train and test images, got {len(train)}/{len(test)}")
        c = work.num_classes
        if "knn" in tasks:
            with self.report.timer(f"knn/{b.name}"):
                s = knn_scores(x[train], targets[train], x[test], c, p.knn_k, p.knn_vote, p.knn_temperature)
            self.report.add_metrics("knn", b.name, model, probe_metrics(s, targets[test], c))
        if "linear_probe" in tasks:
            with self.report.timer(f"linear_probe/{b.name}"):
                s, chosen = linear_probe_scores(x[train], targets[train], x[test], c, p.linear_c,
                                                p.linear_max_iter, p.seed)
            self.report.add_metrics("linear_probe", b.name, model, probe_metrics(s, targets[test], c))
            if not isinstance(p.linear_c, (int, float)):
                self.report.notes.append(f"linear probe {model} on {b.name}: chose C={chosen}")

    # ----------------------------------------------------------------- segmentation

    def segmentation(self, b: BenchmarkEntry, data: SegmentationSet, models: list[LoadedModel]) -> None:
        s = self.cfg.segmentation
        refiner = SamRefiner(s.sam_checkpoint, s.sam_model_type, self.device) if s.sam_checkpoint else None
        tsets = _template_sets(b, data, self.cfg)
        plot_set = _plot_set(tsets, self.cfg)
        seen: set[int] = set()
        overlays: dict[int, dict[str, np.ndarray]] = {}
        for model in models:
            try:
                patch = model.patch_encoder().to(self.device)
            except TypeError as e:  # not a ViT: no patch tokens to score
                self.report.notes.append(f"segmentation skipped for {model.name}: {e}")
                continue
            for tname, pset in tsets.items():
                weights = class_embeddings(model.model, model.tokenizer, pset.classnames, pset.templates, self.device)
                variants = [(f"{b.name}[{tname}]", None)]
                if refiner is not None:
                    variants.append((f"{b.name}[{tname}+sam]", refiner))
                for dname, ref in variants:
                    with self.report.timer(f"segmentation/{b.name}"):
                        res = evaluate_segmentation(patch, data, weights, model.preprocess_cfg, s.batch_size,
                                                    self.device, self.cfg.workers, ref,
                                                    keep_examples=s.overlays, desc=f"{dname}: {model.name}")
                    for idx, reason, detail in res.failures:
                        if idx not in seen:
                            seen.add(idx)
                            data.rejections.add(reason, str(data.images[idx]), detail)
                    self.report.add_metrics("segmentation", dname, model.name, res.metrics)
                    for cname, iou in zip(data.classes, res.iou_per_class, strict=True):
                        self.report.add("segmentation", dname, model.name, f"iou[{cname}]", iou)
                    if tname == plot_set and ref is None:
                        for idx, pred in res.examples.items():
                            overlays.setdefault(idx, {})[model.name] = pred
                        self.plot(rep.plot_confusion_matrix, res.confusion, data.classnames,
                                  f"{model.name} segmentation on {dname} (pixels)",
                                  self.plot_dir / _slug(b.name) / f"confusion_{_slug(model.name)}_{_slug(tname)}.png")
        if overlays and self.cfg.plots:
            ran = [m.name for m in models if any(m.name in p for p in overlays.values())]
            examples = [(data.read_rgb(i), data.read_mask(i), {n: preds[n] for n in ran})
                        for i, preds in sorted(overlays.items()) if all(n in preds for n in ran)]
            if examples:
                self.plot(rep.plot_segmentation_overlays, examples, data.classnames,
                          f"segmentation, {b.name}[{plot_set}]", self.plot_dir / _slug(b.name) / "overlays.png",
                          data.ignore_index)

    # ----------------------------------------------------------------- alignment

    def alignment(self, b: BenchmarkEntry, data: PairSet, models: list[LoadedModel]) -> None:
        # Pairs are seen as in training: the centred crop of the model's input size at native resolution,
        # paired with the photos inside it (benchmark sets are resized instead: their own protocol).
        views: dict[int, PairSet] = {}
        seen: dict[int, set[int]] = {}
        for model in models:
            why = cache_spec_mismatch(data.cache_record, model.clip_record, portable=True)
            if why:
                self.report.notes.append(f"alignment {model.name} on {b.name}: ground embeddings were made with "
                                         f"another CLIP ({why}); mutual kNN still compares neighbourhoods")
            size = int(model.preprocess_cfg["size"])
            if size not in views:
                views[size] = data.center_crop(size, data.rejections if not views else None)
                seen[size] = set()
            view = views[size]
            loader = make_loader(view, native_crop_transform(model.preprocess_cfg), self.cfg.batch_size,
                                 self.cfg.workers)
            with self.report.timer(f"features/{b.name}"):
                feats = extract_image_features(model.model, loader, self.device, desc=f"{b.name}: {model.name}")
            self.record_failures(data, feats, seen[size], view.tile_ids)
            with self.report.timer(f"alignment/{b.name}"):
                score = alignment_score(feats.features, view.ground_mean[feats.index], k=self.cfg.alignment_k)
            self.report.add("alignment", b.name, model.name, f"mutual_knn@{self.cfg.alignment_k}", score)


def evaluate(cfg: EvalConfig | dict[str, Any]) -> dict[str, Any]:
    """Run an evaluation suite and write its report.

    Args:
        cfg: a validated :class:`EvalConfig`, or a plain dict validated here (errors name each bad key).

    Every benchmark's cheap preconditions (its files, splits, ``alignment_k`` against its pair count)
    are checked before any model loads. A benchmark that still fails later is noted in the report
    and in ``"failed"``, and the report of the others is written.

    Returns:
        The contents of ``report.json`` plus ``"report_json"`` / ``"report_md"`` (the written paths) and
        ``"failed"`` ({benchmark: error} for benchmarks that failed after the models loaded).

    Raises:
        DatasetNotFoundError: a benchmark root is missing or has the wrong layout; raised before any
            model loads (with ``skip_missing`` the benchmark is noted and skipped instead).
        ConfigError: ``cfg`` is an invalid dict, or a split named in it does not exist.
    """
    if not isinstance(cfg, EvalConfig):
        cfg = validate(EvalConfig, dict(cfg), source="(evaluate() argument)")
    device = resolve_device(cfg.device)
    run = _Run(cfg, device)
    report = run.report
    sets: dict[str, Any] = {}
    with report.timer("load_benchmarks"):
        for b in cfg.benchmarks:
            try:
                sets[b.name] = _load_set(b, cfg.seed)
            except DatasetNotFoundError as e:
                if not cfg.skip_missing:
                    raise
                log.warning("skipping benchmark %s: %s", b.name, e)
                report.notes.append(f"benchmark {b.name} skipped (skip_missing): {e}")
            else:
                log.info("benchmark %s (%s): %d items from %s", b.name, b.type, len(sets[b.name]), b.root)
                check_preconditions(b, sets[b.name], cfg)
    if not sets:
        raise DatasetNotFoundError("no benchmark of the config was found; see the notes above and eval/README.md")
    for b in cfg.benchmarks:  # a missing clip_benchmark package or a foreign class folder fails before models load
        if isinstance(sets.get(b.name), (ClassificationSet, SegmentationSet)):
            _template_sets(b, sets[b.name], cfg)
    with report.timer("load_models"):
        models = load_models(cfg, device)
    for m in models:
        report.models[m.name] = f"{m.description}; segmentation patches: {m.patch_source}"
    failed: dict[str, str] = {}
    for b in cfg.benchmarks:
        if b.name not in sets:
            continue
        data = sets[b.name]
        log.info("evaluating %s: %s", b.name, ", ".join(b.tasks))
        try:
            if isinstance(data, ClassificationSet):
                run.classification(b, data, models)
            elif isinstance(data, SegmentationSet):
                run.segmentation(b, data, models)
            elif b.type in APP_BENCHMARK_TYPES:
                app_benchmark(b.type).run(run, b, data, models)
            else:
                run.alignment(b, data, models)
        except Exception as e:  # noqa: BLE001 - one benchmark's failure must not discard the others' results
            log.error("benchmark %s failed: %s: %s", b.name, type(e).__name__, e)
            log.debug("benchmark %s failed", b.name, exc_info=True)
            failed[b.name] = f"{type(e).__name__}: {e}"
            report.notes.append(f"benchmark {b.name} FAILED ({type(e).__name__}: {e}); its rows may be incomplete")
        report.rejections[b.name] = data.rejections.to_json()
    with report.timer("report"):
        json_path, md_path = report.write(run.out)
    out = report.to_json()
    out.update(report_json=str(json_path), report_md=str(md_path), failed=failed)
    return out


def run_eval_command(args) -> int:
    """``graft eval CONFIG [--set key=value ...]``."""
    cfg = load_config(EvalConfig, args.config, getattr(args, "overrides", None))
    result = evaluate(cfg)
    report = rep.Report(rows=[rep.Row(**dict(r, value=float("nan") if r["value"] is None else r["value"]))
                              for r in result["rows"]], models=result["models"])
    print(rep.format_summary(report))
    rejected = {k: v["total"] for k, v in result["rejections"].items() if v.get("total")}
    if rejected:
        print(f"rejected input (see report.md): {rejected}")
    print(f"\nreport: {result['report_md']} (json: {result['report_json']}, plots: {len(result['plots'])})")
    if result["failed"]:
        raise EvalIncomplete(f"{len(result['failed'])} benchmark(s) failed: "
                             + "; ".join(f"{k}: {v}" for k, v in result["failed"].items())
                             + f". The report of the others is in {result['report_md']}")
    return 0
