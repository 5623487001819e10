"""Distributors: run the partitions of a build on a local thread pool or as Ray tasks.

Both yield one result per partition as it ends, ``{"ok": True, "stats": ...}`` or
``{"ok": False, "partition", "error", "traceback"}``: a failed partition never stops the others.

Under Ray, one request quota serves the whole build (Flickr: ``ground.flickr.queries_per_hour``): a
Ray actor holds the token bucket and every worker's searches reserve their tokens from it, so 64
workers on one key send what one process would, not 64 times that.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from graft.config import ConfigError
from graft.credentials import redact
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.partition import run_partition
from graft.pipeline.build.records import PartitionTask
from graft.sources.base import SatelliteSource
from graft.sources.retry import RateLimiter, TokenBucket


def _partition_entry(cfg: BuildConfig, task: PartitionTask, satellite: SatelliteSource | None,
                     progress: bool, query_limiter: RateLimiter | None = None) -> dict:
    """Run one partition; never raises (a failure is returned, the build goes on, a re-run retries it)."""
    try:
        return {"ok": True, "stats": run_partition(cfg, task, satellite, progress, query_limiter)}
    except Exception as e:  # noqa: BLE001 - one bad partition must not kill a continent-sized build
        return {"ok": False, "partition": task.partition, "error": redact(f"{type(e).__name__}: {e}"),
                "traceback": redact(traceback.format_exc())}


def run_local(cfg: BuildConfig, tasks: list[PartitionTask], workers: int,
              satellite: SatelliteSource | None) -> Iterator[dict]:
    """``workers`` partitions at a time on threads of this process (a progress bar per partition when 1)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="partition") as pool:
        futures = [pool.submit(_partition_entry, cfg, t, satellite, workers == 1) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()


def run_ray(cfg: BuildConfig, tasks: list[PartitionTask], workers: int | None,
            satellite: SatelliteSource | None) -> Iterator[dict]:
    """One Ray task per partition, at most ``workers`` in flight (default 2x the cluster's CPUs).

    Connects to ``$RAY_ADDRESS`` when set, else starts a local Ray instance (and shuts it down after).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--distributor ray needs Ray: pip install 'graft[ray]'") from None
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=True)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_partition_entry)
        cfg_ref = ray.put(cfg)
        sat_ref = ray.put(satellite)
        limiter = _shared_query_quota(ray, cfg)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) * 2)
        pending: list = []
        queue = list(tasks)
        while queue or pending:
            while queue and len(pending) < limit:
                pending.append(remote.remote(cfg_ref, queue.pop(0), sat_ref, False, limiter))
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


class _QuotaKeeper:
    """The build's Flickr token bucket, in one Ray actor: answers each reservation at once (callers sleep)."""

    def __init__(self, queries_per_hour: float):
        self.bucket = TokenBucket(queries_per_hour)

    def reserve(self) -> float:
        return self.bucket.reserve()


class SharedQuota:
    """A :class:`~graft.sources.retry.RateLimiter` backed by the build's quota actor (picklable into Ray tasks).

    One round trip per request: the actor reserves the next token and says how long to wait for it.
    """

    def __init__(self, actor: object):
        self.actor = actor

    def acquire(self) -> None:
        import ray

        wait = ray.get(self.actor.reserve.remote())
        if wait > 0:
            time.sleep(wait)


def _shared_query_quota(ray: object, cfg: BuildConfig) -> SharedQuota | None:
    """The build's quota actor, for a ground source with a request quota (Flickr); it takes no CPU
    and lives as long as the driver's job."""
    rate = ground_kind(cfg).queries_per_hour(cfg)
    if rate is None:
        return None
    return SharedQuota(ray.remote(num_cpus=0)(_QuotaKeeper).remote(rate))
