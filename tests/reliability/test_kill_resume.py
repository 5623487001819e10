"""Crash-resume: ``graft build`` and ``graft train`` SIGKILLed at random moments, then re-run with the same
command, end exactly where an uninterrupted run ends.

Each test first times an uninterrupted run, then draws seeded kill delays uniformly in [0, that time].
Runs are killed one after another on one output folder, each re-run resuming what the previous one
left. A re-run that outlives its kill delay has finished the job: its folder is checked against the
uninterrupted one and a fresh folder takes over, so kills keep landing in real work instead of in
no-op re-runs of a finished job. The last folder is finished by a real ``python -m graft.cli`` process.
Runs are forked from a server that imported graft once (see ``forkserver.py``): a fresh interpreter
per run would spend most of the budget, and most random kill times, in imports.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
import yaml
from helpers_build import build_config, make_world
from helpers_data import make_dataset, tiny_clip_spec

from graft.models.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_model_state,
    load_trainer_state,
    verify_checkpoint,
)
from reliability.forkserver import ForkServer, RunResult

REPO = Path(__file__).resolve().parents[2]
SEED = 20240607
BUILD_KILLS = 20
TRAIN_KILLS = 8
TRAIN_STEPS = 40


def _env() -> dict[str, str]:
    # One intra-op thread: bitwise-reproducible CPU maths, and no spinning threads on a shared 2-core box.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ForkServer(REPO, _env(), tmp_path_factory.mktemp("forkserver") / "server.log") as fs:
        yield fs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _tail(result: RunResult | subprocess.CompletedProcess, n: int = 3000) -> str:
    text = result.output() if isinstance(result, RunResult) else result.stdout + result.stderr
    return text[-n:]


def _run_cli(argv: list[str], log: Path) -> subprocess.CompletedProcess:
    """The real ``graft`` entry point in a fresh interpreter (no fork server)."""
    r = subprocess.run([sys.executable, "-m", "graft.cli", *argv], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=600)
    log.write_text(r.stdout + r.stderr)
    return r


@dataclass
class Kill:
    folder: int  # which output folder (a new one starts whenever a re-run finishes the job)
    delay: float  # seconds after the run started
    before: int  # progress before the run (partitions built / newest checkpoint step)
    after: int  # progress the kill left


def kill_and_resume(server: ForkServer, argv: Callable[[int], list[str]], progress: Callable[[int], int],
                    finished: Callable[[int], None], horizon: float, n_kills: int, logs: Path) -> list[Kill]:
    """SIGKILL runs of ``argv(folder)`` at seeded uniform delays in [0, horizon] until ``n_kills`` landed.

    A run that finishes before its kill is checked with ``finished(folder)``, and the next run starts
    on a new folder. Returns the kills; the last folder is left unfinished for the caller.
    """
    rng = random.Random(SEED)
    kills: list[Kill] = []
    folder = 0
    for attempt in range(8 * n_kills):
        if len(kills) == n_kills:
            return kills
        delay = rng.uniform(0.0, horizon)
        before = progress(folder)
        r = server.run(argv(folder), logs / f"folder{folder}-run{attempt:03d}.log", kill_after=delay)
        assert not r.timed_out, f"run hung:\n{_tail(r)}"
        if r.killed:
            kills.append(Kill(folder, round(delay, 3), before, progress(folder)))
            continue
        assert r.returncode == 0, f"re-run after a kill failed (exit {r.returncode}):\n{_tail(r)}"
        finished(folder)
        folder += 1
    raise AssertionError(f"only {len(kills)} of {n_kills} kills landed in {8 * n_kills} runs")


def _no_temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


# ---------------------------------------------------------------- graft build


def _manifest_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def assert_same_dataset(ref: Path, got: Path) -> None:
    """``got`` (built through kills) is the uninterrupted build ``ref``: manifest, shards, nothing torn."""
    want, have = _manifest_rows(ref), _manifest_rows(got)
    ids = [r["photo_id"] for r in have]
    assert len(ids) == len(set(ids)), "duplicate photo_ids after resume"
    assert sorted(ids) == sorted(r["photo_id"] for r in want)
    key = ("tile_id", "row", "col", "split", "tile_shard", "photo_shard", "partition")
    by_id = {r["photo_id"]: tuple(r[k] for k in key) for r in want}
    for r in have:
        assert tuple(r[k] for k in key) == by_id[r["photo_id"]], f"{r['photo_id']} differs from the clean build"
    assert pq.read_table(got / "manifest.parquet").equals(pq.read_table(ref / "manifest.parquet"))

    # Every shard the manifest names reads to the end with webdataset, keys = the manifest's ids.
    for kind, id_col, shard_col in (("tiles", "tile_id", "tile_shard"), ("photos", "photo_id", "photo_shard")):
        for shard in sorted({r[shard_col] for r in have}):
            keys = [s["__key__"] for s in wds.WebDataset(str(got / shard), shardshuffle=False, empty_check=False)]
            assert len(keys) == len(set(keys)), f"{shard}: duplicate sample keys"
            assert set(keys) == {r[id_col] for r in have if r[shard_col] == shard}, shard
        # ... and every shard on disk, referenced or not (an empty partition's), is the clean build's.
        names = sorted(p.name for p in (got / kind).glob("*.tar"))
        assert names == sorted(p.name for p in (ref / kind).glob("*.tar")), f"{kind}: other shard files"
        for name in names:
            assert (got / kind / name).read_bytes() == (ref / kind / name).read_bytes(), f"{kind}/{name} differs"
    stats = json.loads((got / "stats.json").read_text())
    assert stats["partitions"]["written"] == stats["partitions"]["planned"] and not stats["failures"]
    assert _no_temp_files(got) == [], "temp files left behind"


@pytest.mark.slow
def test_build_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, server):
    world = make_world(tmp_path / "world")

    def config(out: Path) -> str:
        # 1 km blocks: ~35 partitions, so kills land between, inside and after many partition writes.
        cfg = build_config(world, out, **{"region.block_km": 1.0, "ground.folder.workers": 2, "fetch_workers": 2})
        return _write_yaml(out.with_suffix(".yaml"), cfg)

    logs = tmp_path / "logs"
    logs.mkdir()
    ref = tmp_path / "ref"
    clean = server.run(["build", config(ref), "--workers", "2"], logs / "ref.log")
    assert clean.returncode == 0, _tail(clean)
    planned = json.loads((ref / "stats.json").read_text())["partitions"]["planned"]
    assert planned >= 20

    def out(folder: int) -> Path:
        return tmp_path / f"ds{folder}"

    def parts(folder: int) -> int:
        d = out(folder) / "parts"
        return sum(1 for p in d.glob("part-*") if (p / "stats.json").is_file()) if d.is_dir() else 0

    kills = kill_and_resume(
        server, lambda f: ["build", config(out(f)), "--workers", "2"], parts,
        lambda f: assert_same_dataset(ref, out(f)), clean.seconds, BUILD_KILLS, logs,
    )
    last = kills[-1].folder
    r = _run_cli(["build", config(out(last)), "--workers", "2"], logs / "final.log")
    assert r.returncode == 0, _tail(r)
    assert_same_dataset(ref, out(last))

    mid = [k for k in kills if k.before < k.after < planned]
    print(f"\nbuild: clean run {clean.seconds:.2f} s, {planned} partitions; {len(kills)} kills over "
          f"{last + 1} folders, {len(mid)} between partition writes: {kills}")
    assert len(kills) >= BUILD_KILLS
    # Guard against a test that silently degenerates (e.g. every kill landing before any write).
    assert len(mid) >= 2, f"too few kills landed while partitions were being written: {kills}"


# ---------------------------------------------------------------- graft train


def _final_state(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt = checkpoint_dir(run, TRAIN_STEPS)
    assert verify_checkpoint(ckpt) is None, f"{ckpt}: {verify_checkpoint(ckpt)}"
    return load_model_state(ckpt), load_trainer_state(ckpt)


def _flat(obj, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists of tensors -> {path: leaf}, to compare optimiser states leaf by leaf."""
    if isinstance(obj, dict):
        return {k: v for key, sub in obj.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, sub in enumerate(obj) for k, v in _flat(sub, f"{prefix}/{i}").items()}
    return {prefix: obj}


def assert_same_weights(ref: Path, got: Path) -> None:
    """The final checkpoint of ``got`` is bitwise the uninterrupted run's: weights and optimiser state."""
    (w_ref, t_ref), (w_got, t_got) = _final_state(ref), _final_state(got)
    assert w_ref.keys() == w_got.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_got[k]), f"weight {k} differs after kill/resume"
    a, b = _flat(t_ref["optimizer"]), _flat(t_got["optimizer"])
    assert a.keys() == b.keys()
    for k in a:
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
        assert same, f"optimizer state {k} differs after kill/resume"
    assert torch.equal(t_ref["log_temperature"], t_got["log_temperature"])
    assert t_ref["data"] == t_got["data"] and t_ref["bad_total"] == t_got["bad_total"]
    assert _no_temp_files(got) == [], "temp files left behind"
    assert all(verify_checkpoint(c) is None for c in list_checkpoints(got)), "a torn checkpoint was left"


@pytest.mark.slow
def test_train_killed_at_random_points_resumes_bitwise(tmp_path, server):
    spec = tiny_clip_spec(tmp_path / "clip")
    data = make_dataset(tmp_path / "data", spec, n_tiles=16, tile_size=48)

    def config(run: Path) -> str:
        cfg = {
            "run_dir": str(run), "clip": spec.model_dump(), "model": {"kind": "pixel"},
            "optim": {"lr": 1e-3, "warmup_steps": 2},
            # One DataLoader worker: resume replays the epoch through a worker process, which the
            # process-group kill takes down with the trainer.
            "data": {"dataset": str(data), "batch_size": 4, "workers": 1, "shuffle_buffer": 8},
            # Checkpoints every 3 steps, only the last 2 kept: kills land between saves, in saves and
            # in pruning; a resume replays up to 2 steps.
            "train": {"max_steps": TRAIN_STEPS, "ckpt_every": 3, "keep_last": 2, "log_every": 5,
                      "precision": "fp32", "device": "cpu"},
        }
        return _write_yaml(run.with_suffix(".yaml"), cfg)

    logs = tmp_path / "logs"
    logs.mkdir()
    ref = tmp_path / "ref"
    clean = server.run(["train", config(ref)], logs / "ref.log")
    assert clean.returncode == 0, _tail(clean)

    def run(folder: int) -> Path:
        return tmp_path / f"run{folder}"

    def newest_step(folder: int) -> int:
        steps = [int(c.name.split("-")[1]) for c in list_checkpoints(run(folder)) if verify_checkpoint(c) is None]
        return max(steps, default=0)

    kills = kill_and_resume(
        server, lambda f: ["train", config(run(f)), "--resume", "latest"], newest_step,
        lambda f: assert_same_weights(ref, run(f)), clean.seconds, TRAIN_KILLS, logs,
    )
    last = kills[-1].folder
    r = _run_cli(["train", config(run(last)), "--resume", "latest"], logs / "final.log")
    assert r.returncode == 0, _tail(r)
    assert_same_weights(ref, run(last))

    mid = [k for k in kills if k.before < k.after < TRAIN_STEPS]
    print(f"\ntrain: clean run {clean.seconds:.2f} s, {TRAIN_STEPS} steps; {len(kills)} kills over "
          f"{last + 1} run folders, {len(mid)} after a new checkpoint: {kills}")
    assert len(kills) >= TRAIN_KILLS
    assert len(mid) >= 1, f"no kill landed after a checkpoint, mid-run: {kills}"
