"""SIGTERM / SIGUSR1 to a running ``graft train``: a checkpoint at the next step boundary, exit 128 + signal, and
``--resume latest`` from there reaches the uninterrupted run's weights exactly.

The signal goes to the trainer's whole process group, as torchrun (``killpg``) and SLURM deliver it, so the
DataLoader worker receives it too and must leave it to the trainer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers_data import make_dataset, tiny_clip_spec

from graft.models.checkpoint import list_checkpoints, verify_checkpoint
from reliability.forkserver import ForkServer
from reliability.test_kill_resume import REPO, TRAIN_STEPS, _env, _tail, assert_same_weights

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _config(run: Path, spec, data: Path) -> str:
    cfg = {
        "run_dir": str(run), "clip": spec.model_dump(), "model": {"kind": "image"},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "data": {"dataset": str(data), "batch_size": 4, "workers": 1, "shuffle_buffer": 8},
        # No periodic checkpoint before the end: the only one mid-run is the signal's.
        "train": {"max_steps": TRAIN_STEPS, "ckpt_every": 1000, "log_every": 1, "precision": "fp32", "device": "cpu"},
    }
    path = run.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _logged_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signal")
    spec = tiny_clip_spec(root / "clip")
    data = make_dataset(root / "data", spec, n_tiles=16, tile_size=48)
    with ForkServer(REPO, _env(), root / "server.log") as server:
        ref = root / "ref"
        clean = server.run(["train", _config(ref, spec, data)], root / "ref.log")
        assert clean.returncode == 0, _tail(clean)
        yield root, spec, data, server, ref


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_at_a_step_boundary_and_resume_is_exact(setup, sig):
    root, spec, data, server, ref = setup
    run = root / f"run-{sig.name}"
    cfg = _config(run, spec, data)
    log = root / f"{sig.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graft.cli", "train", cfg], cwd=REPO, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while _logged_step(run) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the signal:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout=300)
    text = log.read_text()
    assert code == 128 + sig, f"exit {code}, want {128 + sig}:\n{text[-3000:]}"
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1 and verify_checkpoint(ckpts[0]) is None, ckpts
    stopped_at = int(ckpts[0].name.split("-")[1])
    assert 3 <= stopped_at < TRAIN_STEPS, stopped_at
    assert f"stopped by {sig.name} at step {stopped_at}" in text

    resumed = server.run(["train", cfg, "--resume", "latest"], root / f"{sig.name}-resume.log")
    assert resumed.returncode == 0, _tail(resumed)
    assert_same_weights(ref, run)
