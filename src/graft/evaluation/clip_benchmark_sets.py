"""CLIP_benchmark's class names and prompt templates, read from the installed ``clip_benchmark`` package.

graft's own prompts ("a satellite image of {}.", "herbaceous vegetation land")
make numbers that cannot be put beside the published CLIP_benchmark / OpenCLIP
tables. With ``templates: clip_benchmark`` on a benchmark, zero-shot and
retrieval use exactly the prompts CLIP_benchmark builds for that dataset
(``template.format(c=classname)`` for every class and template), taken from the
package at run time (its ``en_classnames.json`` and
``en_zeroshot_classification_templates.json``), never copied into graft.

Class names: CLIP_benchmark lists EuroSAT's in torchvision's class order (the
sorted EuroSAT folder names). For RESISC45 it ships templates only and takes
the class names from TensorFlow Datasets, whose names are the NWPU-RESISC45
folder names (``basketball_court``), so the set's folder names are used as
they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata, resources

from graft.config import ConfigError

SET_NAME = "clip_benchmark"
# graft benchmark type -> CLIP_benchmark dataset name
DATASETS = {"eurosat": "eurosat", "resisc45": "resisc45"}
_CLASSNAMES_FILE = "en_classnames.json"
_TEMPLATES_FILE = "en_zeroshot_classification_templates.json"


@dataclass(frozen=True)
class PromptSet:
    """Class names (in the benchmark's class order) and templates with ``{}`` for the class name."""

    classnames: list[str]
    templates: list[str]
    source: str  # what the report says about where they came from

    def prompts(self) -> list[str]:
        """Every prompt, class-major (the order CLIP_benchmark's ``zero_shot_classifier`` builds them)."""
        return [t.replace("{}", c) for c in self.classnames for t in self.templates]


def _package_json(name: str) -> dict:
    try:
        files = resources.files("clip_benchmark.datasets")
    except ModuleNotFoundError as e:
        raise ConfigError("'templates: clip_benchmark' needs the clip_benchmark package: "
                          "pip install 'graft[benchmarks]' (or pip install clip-benchmark)") from e
    return json.loads(files.joinpath(name).read_text())


def clip_benchmark_prompts(kind: str, classes: list[str]) -> PromptSet:
    """CLIP_benchmark's prompt set for a graft benchmark.

    Args:
        kind: graft benchmark type (``eurosat``, ``resisc45``).
        classes: the set's class folder names, in its (sorted) class order.

    Raises:
        ConfigError: CLIP_benchmark does not cover ``kind``, the package is missing, or a class folder is
            not one of the benchmark's.
    """
    from graft.evaluation.datasets import BENCHMARKS

    if kind not in DATASETS:
        raise ConfigError(f"CLIP_benchmark has no template set for benchmark type {kind!r}; it covers "
                          f"{sorted(DATASETS)}. Use graft's template sets (omit 'templates') for this one")
    name = DATASETS[kind]
    raw_templates = _package_json(_TEMPLATES_FILE).get(name)
    if not raw_templates:
        raise ConfigError(f"the installed clip_benchmark has no templates for {name!r}; upgrade clip-benchmark")
    templates = []
    for t in raw_templates:
        converted = t.replace("{c}", "{}")
        # graft substitutes '{}'; CLIP_benchmark calls str.format(c=...): both must give the same prompt.
        if "{}" not in converted or t.format(c="\x00") != converted.replace("{}", "\x00"):
            raise ConfigError(f"clip_benchmark template {t!r} for {name} is not a plain '{{c}}' template")
        templates.append(converted)
    version = metadata.version("clip-benchmark")
    cb_names = _package_json(_CLASSNAMES_FILE).get(name)
    if cb_names is None:
        return PromptSet(list(classes), templates,
                         f"CLIP_benchmark {version} {name} templates ({len(templates)}); class names: the folder "
                         "names, as CLIP_benchmark's TFDS source names them")
    # CLIP_benchmark's list follows the benchmark's full, sorted class-folder order.
    folders = sorted(BENCHMARKS[kind].classnames)
    if len(folders) != len(cb_names):
        raise ConfigError(f"clip_benchmark lists {len(cb_names)} {name} classes, graft knows {len(folders)} folders")
    by_folder = dict(zip(folders, cb_names, strict=True))
    unknown = [c for c in classes if c not in by_folder]
    if unknown:
        raise ConfigError(f"class folder {unknown[0]!r} is not a {name} class ({folders}); CLIP_benchmark's class "
                          "names only fit the benchmark's own folders")
    return PromptSet([by_folder[c] for c in classes], templates,
                     f"CLIP_benchmark {version} {name} class names and templates ({len(templates)})")
