"""The build's driver: check inputs, plan, skip what is built, run the rest, finalise; and ``graft build``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tqdm import tqdm

from graft.config import ConfigError
from graft.dataset.layout import WRITTEN_DIRS, part_dir
from graft.dataset.manifest import read_part_stats
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig, load_build_config
from graft.pipeline.build.distributors import run_local, run_ray
from graft.pipeline.build.empty_build import EmptyBuildError, empty_build_message
from graft.pipeline.build.filter_guard import check_filter
from graft.pipeline.build.finalize import BuildSummary, finalize
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.planning import plan_build
from graft.pipeline.build.records import PartitionTask
from graft.rejections import Rejections
from graft.sources.base import SatelliteSource
from graft.storage import clean_stale_temps

log = logging.getLogger(__name__)


def build_dataset(cfg: BuildConfig, distributor: str = "local", workers: int | None = None,
                  satellite: SatelliteSource | None = None) -> BuildSummary:
    """Build (or resume) the dataset described by ``cfg``.

    Args:
        cfg: the validated config.
        distributor: ``local`` (a thread pool over partitions) or ``ray`` (Ray tasks; a local
            Ray instance unless ``$RAY_ADDRESS`` names a cluster).
        workers: partitions in parallel (local; default 1) or tasks in flight (Ray; default 2x CPUs).
        satellite: a source object to use instead of the configured one (custom sources, tests).

    Returns:
        The summary; ``summary.stats`` is what ``stats.json`` holds.

    Raises:
        FilterGuardError: the indoor filter rejected more of a sample of the photos than
            ``filter.max_reject_share`` allows (raised before any tile is fetched).
        EmptyBuildError: the build kept no photo or no tile (and no partition failed); the message
            gives the top rejection reasons and what to do for each, ``.summary`` the summary.
    """
    if distributor not in ("local", "ray"):
        raise ConfigError(f"--distributor must be 'local' or 'ray', got {distributor!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in WRITTEN_DIRS:
        clean_stale_temps(out / sub)
    sat_ledger = _preflight(cfg, distributor, satellite)

    plan = plan_build(cfg)
    done = _check_existing(out, cfg, plan.tasks)
    todo = [t for t in plan.tasks if t.partition not in done]
    log.info("%d partitions: %d already built, %d to build (%s)", len(plan.tasks), len(done), len(todo),
             distributor)
    if todo:
        check_filter(cfg, plan)  # stops a build whose filter rejects implausibly many photos, before any fetch
    built, failures = _run_partitions(cfg, todo, distributor, workers, satellite)
    run_info = {"partitions": {"done": built, "skipped": len(done), "failed": len(failures)},
                "failures": failures, "wall_s": round(time.perf_counter() - t0, 3),
                "satellite_files": sat_ledger.to_json() if isinstance(sat_ledger, Rejections) else None}
    summary = BuildSummary(out_dir=out, stats=finalize(cfg, plan, run_info))
    if not failures and (summary.stats["photos"]["kept"] == 0 or summary.stats["tiles"] == 0):
        # Failed partitions are retried by a re-run and reported by the summary; an empty build
        # without failures is the input's fault and says why.
        raise EmptyBuildError(empty_build_message(cfg, summary.stats, plan.photo_extent), summary)
    return summary


def _preflight(cfg: BuildConfig, distributor: str, satellite: SatelliteSource | None) -> Rejections | None:
    """Fail on credentials, weights and the region before any photo is touched; returns the source's file ledger."""
    resources.region(cfg)
    ground_kind(cfg).preflight(cfg)
    source = satellite if satellite is not None else resources.satellite(cfg.satellite)
    if satellite is None:
        session = getattr(source, "session", None)
        if session is not None and hasattr(session, "ensure_initialized"):
            session.ensure_initialized()
    if distributor == "local":
        resources.indoor_filter(cfg.filter)
    elif cfg.filter.kind.startswith("resnet18"):
        from graft.pipeline.indoor import resolve_weights

        resolve_weights(cfg.filter)
    if cfg.satellite.kind == "sentinel2" and not cfg.ground.require_date:
        log.warning("satellite.kind is sentinel2 but ground.require_date is false: tiles whose photos have no "
                    "date get the scene nearest sentinel2.default_date (or today), not the photos' season")
    return getattr(source, "rejections", None)


def _run_partitions(cfg: BuildConfig, todo: list[PartitionTask], distributor: str, workers: int | None,
                    satellite: SatelliteSource | None) -> tuple[int, list[dict]]:
    """Run the partitions still to build; returns how many were built and the failures, by partition."""
    failures: list[dict] = []
    built = 0
    runner = (run_local(cfg, todo, workers or 1, satellite) if distributor == "local"
              else run_ray(cfg, todo, workers, satellite))
    with tqdm(total=len(todo), desc=f"partitions ({distributor})", unit="part") as bar:
        for res in runner:
            if res["ok"]:
                built += 1
            else:
                failures.append({k: res[k] for k in ("partition", "error")})
                log.error("partition %05d failed: %s\n%s", res["partition"], res["error"], res["traceback"])
            bar.update(1)
    failures.sort(key=lambda f: f["partition"])
    return built, failures


def _check_existing(out: Path, cfg: BuildConfig, tasks: list[PartitionTask]) -> set[int]:
    """Partitions already built; refuses parts built with another config or split assignment."""
    done: set[int] = set()
    fp = cfg.fingerprint()
    for t in tasks:
        d = part_dir(out, t.partition)
        st = read_part_stats(d)
        if st is None:
            continue
        if st.get("config_fingerprint") != fp:
            raise ConfigError(
                f"{d} was built with a different config (fingerprint {st.get('config_fingerprint')}, now {fp}); "
                f"resuming would mix two datasets. Use a new out_dir, or delete {out / 'parts'} to rebuild."
            )
        if st.get("split") != t.split:
            raise ConfigError(
                f"{d} is in split {st.get('split')!r} but this run assigns {t.split!r}: the set of partitions "
                f"changed since it was built (different input photos?). Use a new out_dir."
            )
        done.add(t.partition)
    return done


def run_build_command(args: argparse.Namespace) -> int:
    """Entry point of ``graft build``."""
    cfg = load_build_config(args.config, args.overrides)
    summary = build_dataset(cfg, distributor=args.distributor or "local", workers=args.workers)
    print(summary.table())
    return 1 if summary.failed else 0
