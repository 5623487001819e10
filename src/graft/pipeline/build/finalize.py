"""Finalising a build (always re-run, it is cheap): parts -> manifest.parquet, stats.json, plots, config; the summary.

The plots: ``map.png``, ``photos_per_tile.png`` and, when a filter runs, ``filter_scores.png``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from affine import Affine

from graft.dataset.band_stats import BandSums, band_stats_document, merged, write_band_stats
from graft.dataset.layout import shard_files
from graft.dataset.manifest import concat_parts, read_parts, write_manifest
from graft.geometry import TileGrid
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig, config_yaml
from graft.pipeline.build.filter_guard import MIN_SAMPLE
from graft.pipeline.build.grounds import ground_kind
from graft.pipeline.build.records import Plan
from graft.pipeline.plots import SCORE_BINS, plot_filter_scores, plot_map, plot_photos_per_tile
from graft.pipeline.split import SPLITS
from graft.rejections import Rejections
from graft.storage import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

LISTED_SHARDS = 10  # the summary names each shard up to this many per kind, beyond it their folder and range

# Rejection reasons that count queries, not photos (Flickr's failed/truncated searches).
QUERY_LEVEL_PREFIXES = ("query_",)


@dataclass
class _Parts:
    """The part folders of this build's partitions, read back."""

    stats: list[dict]
    manifests: list[pa.Table]
    tiles: list[pa.Table]
    stale: list[int]  # part folders of partitions this config does not have


def _read_parts(out: Path, wanted: dict[int, str]) -> _Parts:
    return _Parts(*read_parts(out, wanted))


def _band_stats(part_stats: list[dict]) -> dict:
    """The dataset's band statistics, from the exact sums each partition kept of its tiles, per split."""
    splits = sorted({st["split"] for st in part_stats if st.get("band_sums")})
    return band_stats_document({
        split: merged(BandSums.from_json(st["band_sums"]) for st in part_stats
                      if st["split"] == split and st.get("band_sums"))
        for split in splits})


def finalize(cfg: BuildConfig, plan: Plan, run_info: dict) -> dict:
    """Concatenate the parts into manifest.parquet and write stats.json, the plots and build_config.yaml."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    wanted = {t.partition: t.split for t in plan.tasks}
    parts = _read_parts(out, wanted)
    if parts.stale:
        log.warning("%d part folder(s) under %s/parts belong to no partition of this config (e.g. part-%05d); "
                    "they are left out of the manifest", len(parts.stale), out, parts.stale[0])
    manifest, tile_table = concat_parts(parts.manifests, parts.tiles)
    write_manifest(out, manifest)
    write_band_stats(out, _band_stats(parts.stats))
    _plots_and_config(cfg, out, manifest, tile_table)
    totals = _Totals.of(plan, parts.stats)
    photo_level = sum(v for k, v in totals.ledger.counts.items() if not k.startswith(QUERY_LEVEL_PREFIXES))
    seen = ground_kind(cfg).photos_seen(totals.counts, manifest.num_rows, photo_level)
    totals.counts["seen"] = seen
    totals.timings["finalize_s"] = round(time.perf_counter() - t0, 4)
    stats = {
        "dataset": str(out),
        "config_fingerprint": cfg.fingerprint(),
        "photos": {"seen": seen, "kept": manifest.num_rows, "rejected": photo_level},
        "tiles": tile_table.num_rows,
        "counts": dict(sorted(totals.counts.items())),
        "rejections": totals.ledger.to_json(),
        "tile_rejections": dict(sorted(totals.tile_rejections.items())),
        "splits": _splits(wanted, manifest, tile_table),
        "partitions": {"planned": len(plan.tasks), "written": len(parts.stats), **run_info["partitions"],
                       "stale": parts.stale},
        "failures": run_info["failures"],
        "satellite_file_rejections": run_info.get("satellite_files"),
        "filter": _filter_stats(cfg, out, parts.stats, totals),
        "satellite": {"kind": cfg.satellite.kind, "tile_size": cfg.satellite.tile_size,
                      "gsd": cfg.satellite.gsd, "time_bin_months": cfg.satellite.bin_months},
        "timings": {k: round(v, 3) for k, v in sorted(totals.timings.items())} | {"wall_s": run_info["wall_s"]},
    }
    atomic_write_json(out / "stats.json", stats)
    return stats


def _filter_stats(cfg: BuildConfig, out: Path, part_stats: list[dict], totals: _Totals) -> dict:
    """The filter, the whole build's score histogram and rejected share (plotted in ``filter_scores.png``),
    and the guard's verdict on its sample; warns when the whole build rejected more than the guard allows."""
    fc = cfg.filter
    hist = np.zeros(SCORE_BINS, dtype=np.int64)
    for st in part_stats:
        if st.get("filter_score_hist"):  # parts written before the histogram existed have none
            hist += np.asarray(st["filter_score_hist"], dtype=np.int64)
    scored = int(hist.sum())
    rejected = int(totals.ledger.counts.get("indoor", 0))
    share = rejected / scored if scored else 0.0
    stats: dict = {"kind": fc.kind, "threshold": fc.threshold, "scored": scored, "rejected": rejected,
                   "rejected_share": round(share, 4), "max_reject_share": fc.max_reject_share,
                   "score_histogram": hist.tolist()}
    check = out / "filter_check.json"
    if check.is_file():
        verdict = json.loads(check.read_text())
        stats["check"] = {k: verdict[k] for k in ("photos", "rejected", "rejected_share", "stopped")}
    if fc.kind != "none":
        plot_filter_scores(out / "filter_scores.png", hist.tolist(), fc.threshold,
                           f"indoor filter ({fc.kind}): {scored} photos scored, {share:.0%} rejected")
        if scored >= MIN_SAMPLE and share > fc.max_reject_share:
            log.warning("the indoor filter rejected %.0f%% of the build's %d photos, above filter.max_reject_share "
                        "%.0f%% (its sample had passed the check): see %s", 100 * share, scored,
                        100 * fc.max_reject_share, out / "filter_scores.png")
    return stats


@dataclass
class _Totals:
    """The plan's and every part's rejections, counts and timings, added up."""

    ledger: Rejections
    counts: Counter
    tile_rejections: Counter
    timings: Counter

    @classmethod
    def of(cls, plan: Plan, part_stats: list[dict]) -> _Totals:
        totals = cls(Rejections(), Counter(plan.counts), Counter(), Counter(plan.timings))
        totals.ledger.merge(plan.ledger)
        for s in part_stats:
            totals.ledger.merge(s["rejections"])
            totals.counts.update(s["counts"])
            totals.tile_rejections.update(s["tile_rejections"])
            totals.timings.update({f"partitions_{k}": v for k, v in s["timings"].items()})
        return totals


def _splits(wanted: dict[int, str], manifest: pa.Table, tile_table: pa.Table) -> dict[str, dict[str, int]]:
    split_col = manifest.column("split").to_pylist()
    tile_split = tile_table.column("split").to_pylist()
    return {s: {"blocks": sum(1 for v in wanted.values() if v == s),
                "tiles": tile_split.count(s), "photos": split_col.count(s)} for s in SPLITS}


def _plots_and_config(cfg: BuildConfig, out: Path, manifest: pa.Table, tile_table: pa.Table) -> None:
    """``map.png`` (photos and tiles by split over the region), ``photos_per_tile.png``, ``build_config.yaml``."""
    tile_split = tile_table.column("split").to_pylist()
    grids = [(TileGrid(crs=c, transform=Affine(*t[:6]), size=int(z)), s) for c, t, z, s in zip(
        tile_table.column("crs").to_pylist(), tile_table.column("transform").to_pylist(),
        tile_table.column("size").to_pylist(), tile_split, strict=True)]
    plot_map(out / "map.png", np.asarray(manifest.column("lat").to_numpy(), float),
             np.asarray(manifest.column("lon").to_numpy(), float), manifest.column("split").to_pylist(), grids,
             region_outlines=resources.region(cfg).outlines(), seed=cfg.seed)
    plot_photos_per_tile(out / "photos_per_tile.png", tile_table.column("n_photos").to_pylist(),
                         cfg.ground.max_per_tile)
    atomic_write_text(out / "build_config.yaml", config_yaml(cfg))


@dataclass
class BuildSummary:
    """What a build did; ``table()`` is the printed summary."""

    out_dir: Path
    stats: dict

    @property
    def failed(self) -> int:
        return len(self.stats["failures"])

    def table(self) -> str:
        s = self.stats
        p = s["partitions"]
        lines = [f"graft build: {self.out_dir}", ""]
        lines.append(f"  {'photos seen':<34}{s['photos']['seen']:>10}")
        lines.append(f"  {'photos kept':<34}{s['photos']['kept']:>10}")
        lines.append(f"  {'photos rejected':<34}{s['photos']['rejected']:>10}")
        for reason, n in sorted(s["rejections"]["counts"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason:<32}{n:>10}")
        lines.append(f"  {'tiles':<34}{s['tiles']:>10}")
        for reason, n in s["tile_rejections"].items():
            lines.append(f"    {'tiles rejected: ' + reason:<32}{n:>10}")
        for name, d in s["splits"].items():
            lines.append(f"  {name:<8}{d['blocks']:>8} blocks {d['tiles']:>10} tiles {d['photos']:>10} photos")
        lines.append(f"  partitions: {p['planned']} planned, {p['done']} built now, {p['skipped']} already done, "
                     f"{p['failed']} failed")
        for f in s["failures"][:5]:
            lines.append(f"    part-{f['partition']:05d}: {f['error']}")
        if self.failed:
            lines.append("  re-run the same command to retry the failed partitions")
        lines.append("")
        lines.extend(f"  {line}" for line in self.outputs())
        return "\n".join(lines)

    def outputs(self) -> list[str]:
        """The build's output files that exist: the dataset-level files, then the shards (a range when many)."""
        names = ("manifest.parquet", "stats.json", "map.png", "photos_per_tile.png", "filter_scores.png",
                 "build_config.yaml")
        lines = [str(self.out_dir / n) for n in names if (self.out_dir / n).is_file()]
        for shards in shard_files(self.out_dir):
            if len(shards) <= LISTED_SHARDS:
                lines.extend(str(p) for p in shards)
            else:
                lines.append(f"{shards[0].parent} ({len(shards)} shards, {shards[0].name} .. {shards[-1].name})")
        return lines
