"""YAML configs validated up front.

Each stage declares its config as a :class:`StrictModel` next to the code that
uses it (``graft.pipeline.build.BuildConfig``, ``graft.training.config.TrainConfig``,
...). This module only loads YAML, applies ``key.sub=value`` overrides from the
command line, and turns pydantic's errors into one message that names every
bad key, so a typo fails before any work starts instead of hours into a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from graft.credentials import redact
from graft.errors import GraftError

T = TypeVar("T", bound=BaseModel)


class ConfigError(GraftError, ValueError):
    """A config file or override is invalid. The message names each bad key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the example configs in data_pipeline/, train/, eval/)"
        else:
            msg = e["msg"]
            if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"  - {key}: {msg}")
    return "\n".join(lines)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a PyYAML error (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key.strip()}: value {value!r} is not valid YAML ({_yaml_problem(e)}); "
                          "quote it, e.g. --set 'key=\"text: with colon\"'") from None
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML at {_yaml_problem(e)}; fix that line "
                          "(indentation, a missing ':' or an unclosed quote or bracket)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[T], data: dict, source: str = "") -> T:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(model: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Load ``path`` (optional), apply overrides, validate against ``model``."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    return validate(model, data, source=str(path) if path else "(defaults + overrides)")


def dump_config(cfg: BaseModel) -> str:
    """YAML of a validated config. Secret fields are masked by pydantic's SecretStr.

    Every registered secret is masked too: a config holds none by design, but a user may still
    put one into a free-form value (an endpoint URL with ``?api_key=...``), and saved configs
    (``build_config.yaml``, checkpoints) travel further than the environment they came from.
    """
    def masked(v: object) -> object:
        # Masked before dumping, so YAML quotes the result as needed ("***..." would be an alias).
        if isinstance(v, str):
            return redact(v)
        if isinstance(v, dict):
            return {k: masked(x) for k, x in v.items()}
        if isinstance(v, list):
            return [masked(x) for x in v]
        return v

    return yaml.safe_dump(masked(cfg.model_dump(mode="json")), sort_keys=False)
