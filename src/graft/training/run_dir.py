"""A run folder holds one run: refuse to mix a new run into an old one.

Training into a folder that already holds checkpoints or metrics without
``--resume`` would interleave two runs: the new run's checkpoints beside the
old run's higher steps (which ``--resume latest`` and ``graft export RUN``
would then pick), and duplicate steps in ``metrics.jsonl``. So a new run needs
an empty (or new) folder, ``--resume latest`` continues the run that is there,
and ``--overwrite`` moves the old run aside to ``RUN/previous-N/`` and starts
again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from graft.config import ConfigError
from graft.errors import GraftError
from graft.models.checkpoint import list_checkpoints
from graft.storage import atomic_write_text

log = logging.getLogger(__name__)

# What a run writes into its folder; --overwrite moves exactly these aside.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tb", "config.yaml", "validation.json")


class RunFolderInUse(GraftError):
    """The run folder already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


def holds_run(run_dir: str | Path) -> bool:
    """True if ``run_dir`` holds checkpoints or metrics of an earlier run."""
    run_dir = Path(run_dir)
    return bool(list_checkpoints(run_dir)) or (run_dir / "metrics.jsonl").is_file()


def prepare_run_dir(run_dir: str | Path, resume: str | None, overwrite: bool) -> Path | None:
    """Check that a run may start in ``run_dir``; with ``overwrite`` move an old run aside.

    Only the process with ``RANK`` 0 moves anything (every rank checks the same folder).

    Returns:
        The folder the old run was moved to, or None.

    Raises:
        RunFolderInUse: the folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        ConfigError: both ``resume`` and ``overwrite`` are set.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run in the folder) or --overwrite (start again), not both")
    if resume or not holds_run(run_dir):
        return None
    if not overwrite:
        ckpts = list_checkpoints(run_dir)
        what = f"{len(ckpts)} checkpoint(s) up to {ckpts[-1].name}" if ckpts else "metrics.jsonl"
        raise RunFolderInUse(
            f"run folder {run_dir} already holds a run ({what}); pass --resume latest to continue it, "
            f"--overwrite to start again (the old run is moved to {run_dir}/previous-N/), or set run_dir to a "
            "new folder")
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    n = 1
    while (run_dir / f"previous-{n}").exists():
        n += 1
    aside = run_dir / f"previous-{n}"
    aside.mkdir()
    moved = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    for name in moved:
        os.replace(run_dir / name, aside / name)
    log.warning("--overwrite: moved the previous run in %s (%s) to %s", run_dir, ", ".join(moved), aside)
    return aside


def drop_metrics_after(run_dir: str | Path, step: int) -> int:
    """Remove ``metrics.jsonl`` lines logged after ``step`` (the resumed checkpoint): they are re-run.

    Returns the number of lines removed.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) > step:
                continue
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a kill: dropped like the steps after the checkpoint
        kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(f"{x}\n" for x in kept))
    return len(lines) - len(kept)


# What a checkpoint's weights are: an encoder of this kind, reading these bands, aligned to this CLIP tower.
# Resuming with any of these changed would continue another run's weights (or fail deep in load_state_dict), so
# it is refused. Everything else may change on resume, with a warning that names the change: the schedule, the
# loss, batch size, workers, the device, and data.dataset (a requeued cluster job may read its copy of the
# dataset from another path; the embedding cache's own check catches one made with another tower).
RUN_IDENTITY = ("clip.model", "clip.pretrained", "model.kind", "model.bands")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved_yaml: str, current_yaml: str) -> dict[str, tuple[object, object]]:
    """Dotted keys whose value differs between two run configs (``dump_config`` YAML): key -> (saved, current).
    ``run_dir`` is not compared (a run folder may be moved)."""
    import yaml

    old, new = (_flat(yaml.safe_load(y) or {}) for y in (saved_yaml, current_yaml))
    keys = (old.keys() | new.keys()) - {"run_dir"}
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def check_resume_config(checkpoint: Path, current_yaml: str) -> None:
    """Refuse to resume ``checkpoint`` under a config that changes what its weights mean; warn on other changes.

    Raises:
        ConfigError: a :data:`RUN_IDENTITY` key differs, named with both values.
    """
    saved = checkpoint / "config.yaml"
    if not saved.is_file():
        return
    changes = config_changes(saved.read_text(), current_yaml)
    if not changes:
        return
    identity = {k: v for k, v in changes.items() if k in RUN_IDENTITY}
    listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in (identity or changes).items())
    if identity:
        raise ConfigError(
            f"cannot resume {checkpoint}: it was trained with a different {', '.join(identity)} ({listed}). Resuming "
            "would continue another run's weights. Use --overwrite instead of --resume to start again (the old run "
            "is moved aside), or set run_dir to a new folder")
    log.warning("resuming %s under a changed config (%s): it continues under the new values", checkpoint, listed)
