"""Why: re-running `graft train` into an existing run folder without --resume destroyed the new run.

A new, shorter run into a folder holding a longer one deleted its own checkpoints as it wrote them
(pruning kept the highest step numbers), printed a checkpoint that did not exist, appended duplicate
steps to metrics.jsonl, and `graft export RUN` then exported the old run.
"""

from __future__ import annotations

import json

import pytest
import yaml

from graft.cli import main
from graft.models.checkpoint import (
    find_latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from graft.training.run_dir import RunFolderInUse
from graft.training.trainer import train

from .conftest import train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_existing_run_folder_needs_resume_or_overwrite(tiny_world, tmp_path, capsys):
    run = tmp_path / "run"
    long = train_config(tiny_world, run, train={"max_steps": 6})
    train(long)
    assert [c.name for c in list_checkpoints(run)] == ["step-0000003", "step-0000006"]

    # A second, shorter run into the same folder is refused, by the API and by the command (one line, exit 2).
    short = train_config(tiny_world, run, train={"max_steps": 4, "ckpt_every": 2, "keep_last": 1})
    with pytest.raises(RunFolderInUse, match="--resume latest.*--overwrite"):
        train(short)
    cfg_file = tmp_path / "short.yaml"
    cfg_file.write_text(yaml.safe_dump(short.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["train", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graft train: error: run folder {run} already holds a run") and "Traceback" not in err
    assert [c.name for c in list_checkpoints(run)] == ["step-0000003", "step-0000006"]  # untouched

    # --overwrite moves the old run aside and the new run keeps its own checkpoints.
    summary = train(short, overwrite=True)
    assert [c.name for c in list_checkpoints(run)] == ["step-0000004"]
    assert summary.checkpoint == str(run / "checkpoints" / "step-0000004")
    assert find_latest_checkpoint(run) == run / "checkpoints" / "step-0000004"
    assert _steps(run) == [1, 2, 3, 4]  # no steps of the old run, no duplicates
    old = run / "previous-1"
    assert [c.name for c in list_checkpoints(old)] == ["step-0000003", "step-0000006"]
    assert _steps(old) == [1, 2, 3, 4, 5, 6]

    # --resume latest continues the run that is there.
    more = train_config(tiny_world, run, train={"max_steps": 6, "ckpt_every": 2, "keep_last": 1})
    assert train(more, resume="latest").steps == 6
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    run = tmp_path / "run"
    for step in (1000, 2000, 3000):  # an older, longer run's checkpoints
        save_checkpoint(run, step, {}, {}, {"kind": "image"}, "", keep_last=3)
    for step in (10, 20, 30):
        path = save_checkpoint(run, step, {}, {}, {"kind": "image"}, "", keep_last=2)
        assert path.is_dir()
    assert [c.name for c in list_checkpoints(run)] == [
        "step-0000020", "step-0000030", "step-0001000", "step-0002000", "step-0003000"]
    assert prune_checkpoints(run, 30, keep_last=1, keep_steps=(20,)) == []


def test_resume_refuses_a_config_that_changes_what_the_weights_are(tiny_world, tmp_path, capsys, caplog):
    """Why: `--resume latest` loaded any checkpoint under any config; a run resumed with another teacher, kind or
    band list continued another run's weights (or died deep in load_state_dict)."""
    run = tmp_path / "run"
    train(train_config(tiny_world, run, train={"max_steps": 3}))

    pixel = train_config(tiny_world, run, model={"kind": "pixel"}, train={"max_steps": 6})
    cfg_file = tmp_path / "pixel.yaml"
    cfg_file.write_text(yaml.safe_dump(pixel.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["train", str(cfg_file), "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "model.kind: 'image' -> 'pixel'" in err and "--overwrite" in err
    assert [c.name for c in list_checkpoints(run)] == ["step-0000003"]  # untouched

    # A longer schedule is what resuming is for: it goes on, and the log names what changed.
    longer = train_config(tiny_world, run, train={"max_steps": 6})
    with caplog.at_level("WARNING", logger="graft.training.run_dir"):
        assert train(longer, resume="latest").steps == 6
    assert "train.max_steps: 3 -> 6" in caplog.text
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_rerun_demo_resumes_its_own_run_and_restarts_a_changed_one(tiny_world, tmp_path):
    """Why: a demo re-run after its plan changed resumed the old run's checkpoint under the new plan."""
    from graft.demo.run import train_demo_encoder

    run = tmp_path / "run"
    cfg = train_config(tiny_world, run, train={"max_steps": 3})
    assert train_demo_encoder(cfg).steps == 3
    assert train_demo_encoder(cfg).steps == 3  # the same demo again: resumes the finished run, trains nothing
    assert _steps(run) == [1, 2, 3] and not (run / "previous-1").exists()

    longer = train_config(tiny_world, run, train={"max_steps": 4})  # the demo's plan changed
    assert train_demo_encoder(longer).steps == 4
    assert _steps(run) == [1, 2, 3, 4] and _steps(run / "previous-1") == [1, 2, 3]

    train_demo_encoder(longer, fresh=True)  # a new teacher: the run starts again
    assert _steps(run / "previous-2") == [1, 2, 3, 4] and _steps(run) == [1, 2, 3, 4]
