"""train/slurm.sbatch under stand-in SLURM commands: log folder created, USR1 -> SIGTERM to the step -> requeue."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Stand-ins: `srun` runs a "trainer" that exits 143 on SIGTERM (as `graft train` does after its checkpoint);
# `scancel --signal=TERM` signals it; `scontrol requeue` is recorded.
FAKES = {
    "srun": '#!/usr/bin/env bash\necho $$ > "$FAKE_DIR/step.pid"\ntrap \'echo step-got-TERM; exit 143\' TERM\n'
            'while true; do sleep 0.05; done\n',
    "scancel": '#!/usr/bin/env bash\necho "scancel $*" >> "$FAKE_DIR/calls"\nkill -TERM "$(cat "$FAKE_DIR/step.pid")"\n',
    "scontrol": '#!/usr/bin/env bash\necho "scontrol $*" >> "$FAKE_DIR/calls"\n'
                '[ "$1" = show ] && echo node0 || true\n',
}


def _start(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in FAKES.items():
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path), SLURM_JOB_ID="777",
               SLURM_JOB_NAME="graft-train", SLURM_JOB_NODELIST="node0", SLURM_NNODES="1",
               LOG_DIR=str(tmp_path / "logs"))
    proc = subprocess.Popen(["bash", str(REPO / "train" / "slurm.sbatch"), "train/image_level.yaml"], env=env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "step.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "step.pid").exists(), "the script never started its step"
    return proc, env


def test_usr1_checkpoints_the_step_then_requeues(tmp_path):
    proc, _ = _start(tmp_path)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "scancel --signal=TERM 777" in calls
    assert calls[-1] == "scontrol requeue 777"
    log = (tmp_path / "logs" / "graft-train-777.out").read_text()
    assert "step-got-TERM" in log and "requeueing job 777" in log


def test_a_step_that_fails_on_its_own_is_not_requeued(tmp_path):
    proc, _ = _start(tmp_path)
    os.kill(int((tmp_path / "step.pid").read_text()), signal.SIGTERM)  # e.g. preempted: SLURM requeues itself
    assert proc.wait(timeout=30) == 143
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any("requeue" in c for c in calls)
