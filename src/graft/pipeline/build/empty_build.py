"""A build that keeps no photo, or no tile, is an error: why it is empty, and what to do about each reason.

An empty dataset written with exit code 0 looks like success to a script and to a user who does not
read ``stats.json``; the next stage then fails far from the cause. The driver raises
:class:`EmptyBuildError` after finalising (``stats.json`` is written, so the full ledger is there) with
the top rejection reasons, each with its remedy.
"""

from __future__ import annotations

from graft.config import ConfigError
from graft.pipeline.build import resources
from graft.pipeline.build.config import BuildConfig
from graft.pipeline.build.finalize import BuildSummary

TOP_REASONS = 3

# Remedies by rejection reason; ``tile_*`` reasons are the satellite source's (see _tile_hint).
_HINTS = {
    "no_gps": "their EXIF has no GPS position: list them in a sidecar CSV with columns path, lat, lon, taken_at "
              "and set ground.folder.sidecar to it",
    "gps_zero": "their EXIF GPS is exactly 0, 0 (a camera without a fix): give their positions in a sidecar CSV "
                "with columns path, lat, lon, taken_at (ground.folder.sidecar)",
    "no_date": "they have no capture date and ground.require_date is set: add taken_at in a sidecar CSV "
               "(path, lat, lon, taken_at), or set ground.require_date: false",
    "indoor": "the indoor filter rejected them: check filter.kind/filter.threshold, or set filter.kind: none",
    "duplicate_content": "they are byte-identical copies of other photos",
    "duplicate_id": "two files map to the same photo id: rename one of them",
    "exif_unreadable": "the files cannot be read as images: check they are JPEG or PNG",
    "not_an_image": "the files are not images: check ground.folder.extensions",
    "sidecar_bad_row": "the sidecar rows are malformed: each needs path, lat, lon (taken_at may be empty)",
    "file_missing": "the files vanished or cannot be read: check permissions on ground.folder.root",
    "query_failed:connection_error": "the search endpoint cannot be reached: check ground.flickr.rest_url and the "
                                     "network, then re-run",
}


class EmptyBuildError(ConfigError):
    """The build kept no photo or no tile; ``summary`` is what it did (``stats.json`` is written)."""

    def __init__(self, message: str, summary: BuildSummary):
        super().__init__(message)
        self.summary = summary


def empty_build_message(cfg: BuildConfig, stats: dict, photo_extent: tuple[float, ...] | None) -> str:
    """One line: what the build saw, its top rejection reasons with what to do for each, where the stats are.

    Args:
        cfg: the build config.
        stats: what ``stats.json`` holds.
        photo_extent: (min_lon, min_lat, max_lon, max_lat) of the located photos, when the plan knows it.
    """
    seen, kept = stats["photos"]["seen"], stats["photos"]["kept"]
    what = "no photo" if kept == 0 else f"{kept} photos but no tile"
    reasons = sorted(stats["rejections"]["counts"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    parts = [f"{reason}: {n} ({_hint(cfg, reason, photo_extent)})" for reason, n in reasons]
    if seen == 0:
        if any(r.startswith("query_failed") for r, _ in reasons):  # the searches failed, not found nothing
            return ("the build kept no photo: its searches failed; top reasons: " + "; ".join(parts)
                    + f". Full ledger with examples: {cfg.out_dir}/stats.json")
        return f"the build kept no photo: {_nothing_found(cfg)}"
    return (f"the build kept {what} of {seen} photos seen; top reasons: " + "; ".join(parts)
            + f". Full ledger with examples: {cfg.out_dir}/stats.json")


def _nothing_found(cfg: BuildConfig) -> str:
    g = cfg.ground
    if g.kind == "folder":
        return (f"no photo found under {g.folder.root} (files ending in {', '.join(g.folder.extensions)}); "
                "check ground.folder.root and ground.folder.extensions")
    return ("the Flickr searches found no photo: check the region, flickr.min_taken/max_taken and the search "
            "radius, and ground.points_per_km2/n_points")


def _hint(cfg: BuildConfig, reason: str, photo_extent: tuple[float, ...] | None) -> str:
    if reason == "outside_region":
        bbox = _fmt_bbox(resources.region(cfg).geometry.bounds)
        where = f"the photos lie in {_fmt_bbox(photo_extent)}" if photo_extent else "the photos lie elsewhere"
        return (f"the region spans {bbox} (min_lon, min_lat, max_lon, max_lat) but {where}: "
                "set region.bbox or region.polygon to cover them")
    if reason.startswith("tile_"):
        return _tile_hint(cfg, reason[len("tile_"):])
    if reason.startswith("gps_"):
        return "their EXIF GPS is malformed: give their positions in a sidecar CSV with columns path, lat, lon, " \
               "taken_at (ground.folder.sidecar)"
    return _HINTS.get(reason, "see the examples in stats.json")


def _tile_hint(cfg: BuildConfig, chip_reason: str) -> str:
    if chip_reason in ("outside_coverage", "nodata") and cfg.satellite.kind == "geotiff":
        return "the satellite chips of their tiles were rejected: the GeoTIFFs in satellite.geotiff.paths do not " \
               "cover the photos; check the files' footprints against the region"
    return f"the satellite source rejected their tiles' chips ({chip_reason}): see tile_rejections in stats.json"


def _fmt_bbox(b: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in b) + "]"
