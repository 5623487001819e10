"""The indoor filter's guard: stop a build whose filter rejects implausibly many photos, before any tile is fetched.

A filter that does not fit the data (``kind: clip`` on a CLIP tower that never learned "indoors",
a binary filter trained on another region's photos) can reject several times the true indoor share,
and it tends to reject whole kinds of scene: every water or forest photo. The model trained on the
rest then cannot name those classes, and nothing in a finished build says why. Fetching tiles is
the expensive part of a build, so the guard looks before it:

1. **a sample, not the whole build.** Running the filter over every partition before any fetch
   would mean reading (for Flickr: downloading) every photo twice, or keeping a continent's
   photos between two passes. The share of rejected photos is a proportion, and a proportion is
   estimated to about +-2 points (two standard errors at a 35% share) from ``filter.check_sample``
   = 2000 photos, whatever the size of the build. The driver takes that sample before the
   partitions run: for a folder source, photos drawn uniformly from the whole plan; for Flickr,
   whole partitions in a seeded random order until the sample is full (photos are only known
   once a partition has searched; those partitions' photos are downloaded again when they run).
2. **the share.** The build stops when the sample's rejected share exceeds
   ``filter.max_reject_share``.
3. **where the rejections are.** The sampled photos are clustered (k-means on a cheap
   colour-layout descriptor, the same for every filter kind and independent of the model under
   test), and each cluster's rejected share is reported with example photos, in the stop message,
   ``filter_check.json`` and ``filter_check.png``. A filter rejecting whole scene kinds shows as a few
   clusters rejected almost entirely. The clusters are evidence for the user, not a second trigger:
   a correct filter on a city's photos also rejects a few clusters almost entirely (its rooms,
   restaurants and concerts), and colour statistics cannot tell those from a lake; only a look
   at the examples can.

The sample and its scores are kept in ``filter_check.parquet`` (keyed by the config fingerprint,
which the guard's own limits are not part of), so re-running with a raised limit re-judges the same
sample at once. The finished build's ``stats.json`` and ``filter_scores.png`` hold the whole build's
score histogram and rejected share, and finalising warns when that share exceeds the limit.
"""

from __future__ import annotations

import io
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from graft.config import ConfigError
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.partition import prepare
from graft.pipeline.build.records import PartitionRun, PartitionTask, Plan
from graft.pipeline.plots import plot_filter_scores, score_histogram
from graft.storage import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

MIN_SAMPLE = 20  # below this a share says little; such a build is small enough to inspect by hand
LAYOUT_GRID = 4  # the descriptor is the photo's mean colour in LAYOUT_GRID x LAYOUT_GRID cells
EXAMPLES_PER_CLUSTER = 3
_SAMPLE_STREAM = 7  # the sample's random stream, apart from the partitions' streams


class FilterGuardError(ConfigError):
    """The indoor filter rejected more of the sample than ``filter.max_reject_share`` allows."""


@dataclass
class FilterSample:
    """Sampled photos with the filter's verdicts and a colour-layout descriptor each."""

    photo_ids: list[str]
    uris: list[str]
    scores: np.ndarray  # (N,) outdoor scores
    kept: np.ndarray  # (N,) bool
    descriptors: np.ndarray  # (N, 3 * LAYOUT_GRID**2) float32 in [0, 1]


def check_filter(cfg: BuildConfig, plan: Plan) -> dict | None:
    """Judge the filter on a sample of the build's photos; raise :class:`FilterGuardError` when it rejects too many.

    Writes ``filter_check.json`` (the verdict), ``filter_check.png`` (the sample's score histogram)
    and ``filter_check.parquet`` (the sample, reused by a re-run with the same config).

    Returns:
        The verdict (also in ``filter_check.json``), or None when the check does not apply
        (``filter.kind: none``, ``filter.check_sample: 0``, or no partition).
    """
    fc = cfg.filter
    if fc.kind == "none" or fc.check_sample == 0 or not plan.tasks:
        return None
    out = Path(cfg.out_dir)
    sample = _load_sample(out / "filter_check.parquet", cfg.fingerprint())
    if sample is None:
        sample = _take_sample(cfg, plan)
        _save_sample(out / "filter_check.parquet", sample, cfg.fingerprint())
    verdict = judge(sample, cfg)
    atomic_write_json(out / "filter_check.json", verdict)
    plot_filter_scores(out / "filter_check.png", score_histogram(sample.scores), fc.threshold,
                       f"indoor filter check: {len(sample.scores)} sampled photos, "
                       f"{verdict['rejected_share']:.0%} rejected")
    if verdict["stopped"]:
        raise FilterGuardError(stop_message(cfg, verdict))
    log.info("indoor filter check: %d of %d sampled photos rejected (%.0f%%, limit %.0f%%)",
             verdict["rejected"], verdict["photos"], 100 * verdict["rejected_share"], 100 * fc.max_reject_share)
    return verdict


def judge(sample: FilterSample, cfg: BuildConfig) -> dict:
    """The sample's rejected share against the limit, and each cluster's rejected share, most rejections first."""
    fc = cfg.filter
    n = len(sample.scores)
    rejected = ~sample.kept
    share = float(rejected.mean()) if n else 0.0
    labels = kmeans(sample.descriptors, min(fc.check_clusters, n), seed=cfg.seed) if n else np.zeros(0, int)
    clusters = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rej = members[rejected[members]]
        clusters.append({"photos": int(len(members)), "rejected": int(len(rej)),
                         "rejected_share": round(len(rej) / len(members), 4),
                         "examples": [sample.uris[i] for i in rej[:EXAMPLES_PER_CLUSTER]]})
    clusters.sort(key=lambda c: (-c["rejected"], -c["rejected_share"]))
    return {
        "filter": {"kind": fc.kind, "threshold": fc.threshold},
        "photos": n, "rejected": int(rejected.sum()), "rejected_share": round(share, 4),
        "max_reject_share": fc.max_reject_share,
        "stopped": bool(n >= MIN_SAMPLE and share > fc.max_reject_share),
        "clusters": clusters,
    }


def stop_message(cfg: BuildConfig, verdict: dict) -> str:
    """What the guard saw and what to do, for the user."""
    fc = cfg.filter
    lines = [
        f"the indoor filter (filter.kind {fc.kind}, threshold {fc.threshold}) rejected {verdict['rejected']} of "
        f"{verdict['photos']} sampled photos ({verdict['rejected_share']:.0%}), above filter.max_reject_share "
        f"{fc.max_reject_share:.0%}; no tile was fetched.",
        "  Rejections by cluster of similar-looking photos (most first):",
    ]
    for c in verdict["clusters"]:
        if c["rejected"] == 0:
            continue
        examples = ", ".join(c["examples"])
        lines.append(f"    {c['rejected']:>5} of {c['photos']:>5} rejected ({c['rejected_share']:.0%}), e.g. {examples}")
    lines += [
        "  Look at those photos. If they are outdoor scenes, the filter does not fit this data: give kind clip "
        "other prompts (filter.prompts), use another filter.kind (resnet18-places365, or resnet18-binary trained "
        "on your own photos with 'graft filter-train'), or set filter.kind: none.",
        f"  If they really are indoor shots, raise the limit, e.g. --set filter.max_reject_share="
        f"{min(1.0, np.ceil(verdict['rejected_share'] * 20 + 1) / 20):.2f}.",
        f"  Details: {cfg.out_dir}/filter_check.json, {cfg.out_dir}/filter_check.png",
    ]
    return "\n".join(lines)


def _take_sample(cfg: BuildConfig, plan: Plan) -> FilterSample:
    """Read, prepare and score up to ``filter.check_sample`` photos drawn from the whole plan."""
    n = cfg.filter.check_sample
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SAMPLE_STREAM]))
    listed = [p for t in plan.tasks for p in t.photos]
    if listed:  # the plan lists every photo (folder source): a uniform sample, read as one pseudo-partition
        pick = np.sort(rng.choice(len(listed), size=min(n, len(listed)), replace=False))
        # partition -1: no partition's stream or output; the pilot only reads and scores
        tasks = [PartitionTask(partition=-1, split="", photos=[listed[i] for i in pick])]
    else:  # photos are found by searching (Flickr): whole partitions in a seeded order until n are found
        tasks = [plan.tasks[i] for i in rng.permutation(len(plan.tasks))]
    records = []
    for task in tasks:
        run = PartitionRun(cfg=cfg, task=task, satellite=None, pool=resources.io_pool(cfg.fetch_workers))
        with ExitStack() as stack:
            gathered = ground_kind(cfg).gather(run, stack)
            records.extend(prepare(run, gathered))
        if len(records) >= n:
            break
    log.info("indoor filter check: scoring %d photos sampled from %d partitions", len(records), len(plan.tasks))
    jpegs = [r.prepared.jpeg for r in records]
    flt = resources.indoor_filter(cfg.filter)
    scores = np.asarray(flt.score(jpegs), dtype=np.float64)
    return FilterSample(
        photo_ids=[r.photo_id for r in records], uris=[r.photo.uri for r in records], scores=scores,
        kept=np.asarray(flt.keep(scores), dtype=bool),
        descriptors=np.stack([colour_layout(j) for j in jpegs]) if jpegs else np.zeros((0, 3 * LAYOUT_GRID ** 2)),
    )


def colour_layout(jpeg: bytes) -> np.ndarray:
    """The photo's mean RGB in a ``LAYOUT_GRID`` x ``LAYOUT_GRID`` grid, in [0, 1]: water, forest, snow, night
    and rooms differ in it, and it costs one decode of the small prepared JPEG."""
    with Image.open(io.BytesIO(jpeg)) as img:
        img.draft("RGB", (LAYOUT_GRID * 8, LAYOUT_GRID * 8))
        small = img.convert("RGB").resize((LAYOUT_GRID, LAYOUT_GRID), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


def kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster labels of the rows of ``x`` (scikit-learn's k-means, seeded); at most as many clusters as distinct rows."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float64)
    k = min(k, len(np.unique(x, axis=0)))
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x).astype(np.int64)


def _save_sample(path: Path, sample: FilterSample, fingerprint: str) -> None:
    table = pa.table({
        "photo_id": sample.photo_ids, "uri": sample.uris, "score": sample.scores, "kept": sample.kept,
        "descriptor": pa.array(list(sample.descriptors.astype(np.float32)), type=pa.list_(pa.float32())),
    }).replace_schema_metadata({"config_fingerprint": fingerprint})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _load_sample(path: Path, fingerprint: str) -> FilterSample | None:
    """The saved sample, if it was taken with this config (another config's verdicts say nothing)."""
    if not path.is_file():
        return None
    table = pq.read_table(path)
    if (table.schema.metadata or {}).get(b"config_fingerprint", b"").decode() != fingerprint:
        return None
    d = table.to_pydict()
    dim = 3 * LAYOUT_GRID ** 2
    desc = np.asarray(d["descriptor"], dtype=np.float32).reshape(len(d["photo_id"]), dim)
    return FilterSample(d["photo_id"], d["uri"], np.asarray(d["score"], float), np.asarray(d["kept"], bool), desc)
