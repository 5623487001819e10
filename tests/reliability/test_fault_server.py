"""A whole ``graft build`` from Flickr against the local fake Flickr, with every fault type at 30%.

The fake (tests/fakes/flickr_server.py) is a real HTTP server on 127.0.0.1.
The same config is built twice, once fault-free and once with transient
faults (429, 5xx, timeouts, TCP resets, malformed JSON, Flickr's "temporarily
unavailable", truncated image bytes) on 30% of all requests plus a hash-chosen
set of pages and photos that fail on every attempt. The faulty build must
complete and its manifest must equal the fault-free one, minus exactly the
photos lost to the items that exhausted their retries, each of which is in
``stats.json`` with its reason.

What each exhausted item costs is computed independently of the build: a
failed photo download loses that photo; a failed search page loses the photos
that page lists (asked of the fake's own search), unless another successful
page of the same partition lists them too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fakes.flickr_server import FakeFlickr, FaultSpec, make_catalogue, rest_item_key
from helpers_build import CLUSTER, World, build_config, write_mosaic

from graft.config import validate
from graft.pipeline.build import BuildConfig, build_dataset

KEY = "fault-test-key-0c1d"
SECRET = "fault-test-secret-9e2f"
START, END = dt.date(2020, 1, 1), dt.date(2021, 12, 31)
# Every transient kind the fake can inject. ``api_error`` (Flickr's code 18) is left out on purpose:
# it is a permanent error, never retried (tests/test_flickr_source.py covers it).
TRANSIENT = ("429", "500", "timeout", "reset", "malformed_json", "api_unavailable", "truncated_image")
REST_ONLY, IMG_ONLY = {"malformed_json", "api_unavailable"}, {"truncated_image"}
# 20 attempts: a request that only meets transient faults at 30% exhausts them with p = 0.3**20 ~ 3e-11
# (~1e-6 even if a loaded machine made half of all attempts fail with slow replies),
# so only the permanently failing items (chosen by hash, known to the test) can run out of retries.
RETRY = {"max_attempts": 20, "initial_s": 0.001, "max_backoff_s": 0.004}


@pytest.fixture(autouse=True)
def _creds(monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", SECRET)


def _catalogue() -> list:
    """~200 photos over the test region; every photo has its own size, hence distinct bytes.

    (Equal bytes would make ``duplicate_content`` depend on which copy failed to download.)
    """
    cat = make_catalogue(200, lat=CLUSTER[0], lon=CLUSTER[1], spread_km=2.9, start=START, end=END, seed=11)
    return [dataclasses.replace(p, width=120 + i % 60, height=90 + i // 60) for i, p in enumerate(cat)]


def _config(root: Path, out: str, rest_url: str, timeout_s: float) -> BuildConfig:
    world = World(root=root, photos_dir=root, mosaic=root / "mosaic.tif")
    data = build_config(world, root / out, **{
        "ground": {"kind": "flickr", "n_points": 24, "seed": 5, "short_side": 64,
                   "flickr": {"rest_url": rest_url, "min_taken": str(START), "max_taken": str(END),
                              "radius_km": 1.2, "per_page": 2, "queries_per_hour": 1e9,
                              "timeout_s": timeout_s, "retry": RETRY}},
        "fetch_workers": 4,
        # Every block trains: the test is about faults, and the split guard would drop tiles (and
        # their photos, as tile_crosses_split) of the fault-free build too.
        "split": {"train": 1.0, "val": 0.0, "test": 0.0, "seed": 0},
    })
    return validate(BuildConfig, data)


def _manifest(cfg: BuildConfig) -> dict[str, dict]:
    rows = pq.read_table(Path(cfg.out_dir) / "manifest.parquet").to_pylist()
    return {r["photo_id"]: r for r in rows}


def _examples(stats: dict, reason: str) -> list[str]:
    return [e["item"] for e in stats["rejections"]["examples"] if e["reason"] == reason]


def test_build_under_every_fault_type_loses_only_what_exhausted_its_retries(tmp_path):
    write_mosaic(tmp_path / "mosaic.tif")
    catalogue = _catalogue()
    with FakeFlickr(catalogue, api_key=KEY, api_secret=SECRET, timeout_sleep_s=0.9) as fake:
        clean_cfg = _config(tmp_path, "clean", fake.rest_url, timeout_s=5.0)
        clean = build_dataset(clean_cfg)
        assert clean.stats["failures"] == [] and clean.stats["rejections"]["total"] == 0, clean.stats["rejections"]
        clean_manifest = _manifest(clean_cfg)
        assert len(clean_manifest) >= 60, "precondition: the fault-free build must keep enough photos to compare"

        spec = FaultSpec(rate=0.3, kinds=TRANSIENT, seed=3, permanent_fraction=0.05, permanent_kind="500")
        fake.set_faults(spec)
        fake.reset_records()
        faulty_cfg = _config(tmp_path, "faulty", fake.rest_url, timeout_s=0.4)
        assert faulty_cfg.fingerprint() == clean_cfg.fingerprint()  # retries/timeouts are operational
        faulty = build_dataset(faulty_cfg)
        faulty_manifest = _manifest(faulty_cfg)
        requests = list(fake.requests)

        # Every fault type really fired, on the endpoints it applies to.
        for kind in TRANSIENT:
            for endpoint in ("rest", "img"):
                if (endpoint == "img" and kind in REST_ONLY) or (endpoint == "rest" and kind in IMG_ONLY):
                    continue
                assert fake.count(endpoint, fault=kind) >= 1, f"{kind} never hit {endpoint}: the test proves nothing"

        # The items that exhausted their retries, from the fake's own records.
        rest = [r.params for r in requests if r.endpoint == "rest"]
        failed_pages = {rest_item_key(p): p for p in rest if fake.is_permanent("rest", rest_item_key(p))}
        served_pages = {rest_item_key(p): p for p in rest if not fake.is_permanent("rest", rest_item_key(p))}
        # A photo's partition searches its own points and every other point whose circle reaches its
        # block (FlickrGround.plan), and a page fails for good for every partition asking it: a photo
        # is reachable when any served page returned it.
        found: set[str] = set()
        for p in served_pages.values():
            found.update(f"flickr-{ph['id']}" for ph in fake.search(p)["photos"]["photo"])
        # A failed page is asked by every partition searching its point, each time until its retries
        # run out: the searches that failed for good, from the fake's records.
        failed_asks = Counter(k for k in map(rest_item_key, rest) if k in failed_pages)
        assert all(n % RETRY["max_attempts"] == 0 for n in failed_asks.values()), failed_asks
        failed_searches = sum(failed_asks.values()) // RETRY["max_attempts"]
        doomed_photos = {f"flickr-{p.id}" for p in catalogue if fake.is_permanent("img", p.id)}
        assert failed_pages and doomed_photos & set(clean_manifest), "precondition: some items must fail for good"

    # The build completed: every partition was written, none failed.
    st = faulty.stats
    assert st["failures"] == [] and st["partitions"]["failed"] == 0
    assert st["partitions"]["written"] == st["partitions"]["planned"] == clean.stats["partitions"]["planned"]

    # The manifest is the fault-free one minus exactly what the exhausted items cost.
    reachable = set(clean_manifest) & found
    lost_downloads = reachable & doomed_photos
    assert set(faulty_manifest) == reachable - lost_downloads
    assert len(faulty_manifest) < len(clean_manifest)
    for pid, row in faulty_manifest.items():  # same rows (tile ids may differ: the cover saw fewer photos)
        want = clean_manifest[pid]
        for col in ("lat", "lon", "taken_at", "split", "partition", "license", "owner", "source"):
            assert row[col] == want[col], (pid, col)

    # Each exhausted item is listed with its reason; the counts add up.
    counts = st["rejections"]["counts"]
    assert set(counts) == {"download_failed:http_500", "query_failed:http_500"}, counts
    assert counts["download_failed:http_500"] == len(lost_downloads)
    assert set(_examples(st, "download_failed:http_500")) == lost_downloads
    assert counts["query_failed:http_500"] == failed_searches >= len(failed_pages)
    listed = {(f"lat={p['lat']}", f"lon={p['lon']}", f"page={p['page']}") for p in failed_pages.values()}
    got = set()
    for item in _examples(st, "query_failed:http_500"):
        fields = item.replace(",", " ").split()
        got.add((next(f for f in fields if f.startswith("lat=")), next(f for f in fields if f.startswith("lon=")),
                 next(f for f in fields if f.startswith("page="))))
    assert got == listed
    assert st["photos"]["rejected"] == len(lost_downloads)  # query failures are counted per query, not per photo

    # The source's request counters reach stats.json: retries are visible, not silent.
    c = st["counts"]
    assert c["flickr_api_requests"] == sum(1 for r in requests if r.endpoint == "rest")
    assert c["flickr_image_requests"] == sum(1 for r in requests if r.endpoint == "img")
    assert c["flickr_queries_failed"] == failed_searches
    assert c["flickr_downloads_failed"] == len(lost_downloads)
    assert c["flickr_api_requests"] > c["flickr_pages"] + len(failed_pages)  # faulty attempts were retried
    on_disk = json.loads((Path(faulty_cfg.out_dir) / "stats.json").read_text())
    assert on_disk["rejections"]["counts"] == counts and on_disk["counts"]["flickr_downloads_failed"] == len(lost_downloads)
