"""The Flickr ground source against a real local HTTP fake of Flickr (tests/fakes/flickr_server.py).

No network beyond 127.0.0.1. Backoff is tiny; the rate-limit test runs on a fake clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import threading
import time

import pytest
from fakes.flickr_server import FakeFlickr, FaultSpec, make_catalogue, rest_item_key
from PIL import Image
from pydantic import ValidationError

from graft.credentials import CredentialError
from graft.rejections import Rejections
from graft.sources.flickr import FlickrAuthError, FlickrConfig, FlickrSource
from graft.sources.retry import RetryConfig

KEY = "SENTINEL-KEY-7f3a9c"
SECRET = "SENTINEL-SECRET-b41d2e"
LAT, LON = 48.8584, 2.2945
START, END = dt.date(2015, 1, 1), dt.date(2016, 12, 31)
FAST_RETRY = RetryConfig(max_attempts=6, initial_s=0.001, max_backoff_s=0.01)


@pytest.fixture(autouse=True)
def creds(monkeypatch):
    monkeypatch.setenv("FLICKR_API_KEY", KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", SECRET)


def make_cfg(fake: FakeFlickr, **kw) -> FlickrConfig:
    base = dict(rest_url=fake.rest_url, min_taken=START, max_taken=END, queries_per_hour=1e9,
                retry=FAST_RETRY, timeout_s=5.0)
    base.update(kw)
    return FlickrConfig(**base)


def assert_window_always_sent(fake: FakeFlickr) -> None:
    params = fake.rest_params()
    assert params, "no REST request reached the fake"
    for p in params:
        assert p["min_taken_date"] and p["max_taken_date"], p
        assert p["min_taken_date"] >= "2015-01-01 00:00:00" and p["max_taken_date"] <= "2016-12-31 23:59:59"
        assert p["has_geo"] == "1" and p["content_type"] == "1" and p["media"] == "photos"
        assert p["license"] == "1,2,3,4,5,6,9,10"


@pytest.fixture(scope="module")
def big_catalogue():
    return make_catalogue(9000, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=1)


# ------------------------------------------------------------------ 4,000 cap


def test_query_over_the_cap_is_split_in_time_and_returns_every_photo_once(big_catalogue):
    with FakeFlickr(big_catalogue, api_key=KEY, api_secret=SECRET) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake), ledger)
        photos = src.search(LAT, LON, radius_km=1.0)

        ids = [p.photo_id for p in photos]
        assert len(ids) == len(set(ids)) == 9000
        assert set(ids) == {f"flickr-{p.id}" for p in big_catalogue}
        assert ledger.total == 0, ledger.to_json()
        assert src.counters["split_time"] >= 1
        # The first query saw the true total (over the cap); no request went past the 4,000th result.
        first = fake.rest_params()[0]
        assert (first["min_taken_date"], first["max_taken_date"]) == ("2015-01-01 00:00:00", "2016-12-31 23:59:59")
        assert all(int(p["page"]) * int(p["per_page"]) <= 4000 for p in fake.rest_params())
        assert_window_always_sent(fake)


def test_one_day_over_the_cap_is_split_in_space():
    day = dt.date(2016, 6, 1)
    cat = make_catalogue(1200, lat=LAT, lon=LON, spread_km=0.3, start=day, end=day, seed=2)
    with FakeFlickr(cat, max_results=400) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, query_cap=400, per_page=100), ledger)
        bbox = (LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01)
        photos = src.search_bbox(bbox, day, day)
        assert sorted(p.photo_id for p in photos) == sorted(f"flickr-{p.id}" for p in cat)
        assert src.counters["split_space"] >= 1 and ledger.total == 0
        assert any("bbox" in p and p["bbox"] != ",".join(f"{v:.6f}" for v in bbox) for p in fake.rest_params())


def test_a_query_that_cannot_be_split_is_recorded_as_truncated():
    day = dt.date(2016, 6, 1)
    # 500 photos at one spot on one day: neither the window nor the area can be split.
    cat = [dataclasses.replace(p, lat=LAT + 1e-4, lon=LON + 1e-4)
           for p in make_catalogue(500, lat=LAT, lon=LON, spread_km=0.1, start=day, end=day, seed=3)]
    with FakeFlickr(cat, max_results=400) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, query_cap=400, per_page=100), ledger)
        photos = src.search(LAT, LON, 0.5, day, day)
        assert len(photos) == 400
        assert ledger.counts["query_truncated"] >= 1
        assert "500 results" in ledger.examples[0]["detail"]


def test_max_photos_per_point_stops_paging_early(big_catalogue):
    with FakeFlickr(big_catalogue[:1000]) as fake:
        src = FlickrSource(make_cfg(fake, max_photos_per_point=30, per_page=100), Rejections())
        photos = src.search(LAT, LON)
        assert len(photos) == 30
        assert fake.count("rest") == 1


# ------------------------------------------------------------- retries, failures


@pytest.mark.parametrize("kinds", [("429", "500"), ("timeout",), ("reset",), ("malformed_json",), ("api_unavailable",)])
def test_transient_rest_faults_are_retried_until_success(kinds):
    cat = make_catalogue(600, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=4)
    with FakeFlickr(cat, faults=FaultSpec(rate=0.3, kinds=kinds, seed=7, endpoints=("rest",)),
                    timeout_sleep_s=0.6) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, per_page=100, timeout_s=0.2,
                                    retry=RetryConfig(max_attempts=10, initial_s=0.001, max_backoff_s=0.01)), ledger)
        photos = src.search(LAT, LON)
        assert len(photos) == 600 and ledger.total == 0, ledger.to_json()
        faulty = sum(fake.count("rest", fault=k) for k in kinds)
        assert faulty >= 1, "the fault injection never fired: the test proves nothing"
        # every page was served (a reply slower than the client's timeout, on a loaded machine, may add one)
        assert fake.count("rest", served=True) >= 6
        assert src.counters["api_requests"] == fake.count("rest")
        assert_window_always_sent(fake)


def test_permanent_query_failures_are_recorded_and_the_run_goes_on():
    cat = make_catalogue(2000, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=5)
    spec = FaultSpec(permanent_fraction=0.3, permanent_kind="500", endpoints=("rest",), seed=1)
    with FakeFlickr(cat, faults=spec) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, per_page=100), ledger)
        photos = src.search(LAT, LON)

        failed_pages = {p["page"] for p in fake.rest_params() if fake.is_permanent("rest", rest_item_key(p))}
        assert "1" not in failed_pages, "precondition: with this seed the first page must be servable"
        assert 1 <= len(failed_pages) < 20
        assert ledger.counts["query_failed:http_500"] == len(failed_pages)
        assert len(photos) == 2000 - 100 * len(failed_pages)  # every other page was fetched
        # each failing page was tried exactly max_attempts times
        assert fake.count("rest", fault="500") == len(failed_pages) * FAST_RETRY.max_attempts
        assert all("page=" in e["item"] for e in ledger.examples)


def test_permanent_flickr_api_error_is_not_retried():
    cat = make_catalogue(50, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=6)
    with FakeFlickr(cat, faults=FaultSpec(permanent_fraction=1.0, permanent_kind="api_error")) as fake:
        ledger = Rejections()
        photos = FlickrSource(make_cfg(fake), ledger).search(LAT, LON)
        assert photos == []
        assert ledger.counts == {"query_failed:flickr_18": 1}
        assert fake.count("rest") == 1


# --------------------------------------------------- filters and attribution


def test_accuracy_filter_licence_owner_dates_and_urls():
    base = make_catalogue(8, lat=LAT, lon=LON, spread_km=0.2, start=START, end=END, seed=8)
    cat = [
        dataclasses.replace(base[0], accuracy=10),                                  # too coarse
        dataclasses.replace(base[1], accuracy=15, license=5, ownername="Ada L."),   # kept, CC BY-SA
        dataclasses.replace(base[2], datetakenunknown=True),                        # kept, no date
        dataclasses.replace(base[3], sizes=()),                                     # nothing to download
        dataclasses.replace(base[4], sizes=("m",)),                                 # only the small size
        dataclasses.replace(base[5], license=0),                                    # all rights reserved
        dataclasses.replace(base[6], datetaken="2014-06-01 12:00:00"),              # before the window
        base[7],
    ]
    with FakeFlickr(cat) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, min_accuracy=15), ledger)
        photos = {p.photo_id: p for p in src.search(LAT, LON)}

        ids = lambda i: f"flickr-{cat[i].id}"  # noqa: E731
        assert set(photos) == {ids(1), ids(2), ids(4), ids(7)}
        assert ledger.counts == {"low_geo_accuracy": 1, "no_download_url": 1}
        assert {e["item"] for e in ledger.examples} == {ids(0), ids(3)}

        ada = photos[ids(1)]
        assert (ada.license, ada.owner, ada.accuracy, ada.source) == ("CC BY-SA 2.0", "Ada L.", 15, "flickr")
        assert ada.extra["license_id"] == 5 and ada.extra["owner_nsid"] == cat[1].owner
        assert ada.taken_at == dt.datetime.strptime(cat[1].datetaken, "%Y-%m-%d %H:%M:%S")
        assert (ada.lat, ada.lon) == (cat[1].lat, cat[1].lon)
        assert photos[ids(2)].taken_at is None and src.counters["no_date"] == 1
        assert photos[ids(4)].extra["url_size"] == "m" and photos[ids(4)].uri.endswith(f"/img/{cat[4].id}.jpg")
        assert photos[ids(7)].license == "CC BY 2.0"
        assert_window_always_sent(fake)

        assert len(src.search(LAT + 0.001, LON)) == 4  # an overlapping search finds the same photos again...
        assert ledger.counts == {"low_geo_accuracy": 1, "no_download_url": 1}  # ...each is rejected once


def test_a_search_without_a_window_would_only_see_the_last_12_hours():
    """Why the window is mandatory: the fake mimics Flickr's rule for unlimited geo queries."""
    cat = make_catalogue(20, lat=LAT, lon=LON, spread_km=0.2, start=START, end=END, seed=9)
    with FakeFlickr(cat) as fake:
        import flickrapi

        api = flickrapi.FlickrAPI(KEY, SECRET, format="parsed-json", store_token=False)
        api.REST_URL = fake.rest_url
        assert api.photos.search(lat=LAT, lon=LON, has_geo=1)["photos"]["total"] == 0
        src = FlickrSource(make_cfg(fake), Rejections())
        assert len(src.search(LAT, LON)) == 20


def test_config_rejects_bad_windows_and_ranges():
    with pytest.raises(ValidationError, match="min_taken"):
        FlickrConfig(max_taken=END)  # the window is mandatory
    with pytest.raises(ValidationError, match="after max_taken"):
        FlickrConfig(min_taken=END, max_taken=START)
    with pytest.raises(ValidationError, match="per_page"):
        FlickrConfig(min_taken=START, max_taken=END, per_page=500)
    with pytest.raises(ValidationError, match="extra"):
        FlickrConfig(min_taken=START, max_taken=END, api_key="inline keys are not allowed")


def test_missing_credentials_name_the_variables(monkeypatch, tmp_path):
    cfg = FlickrConfig(min_taken=START, max_taken=END)
    monkeypatch.delenv("FLICKR_API_KEY")
    with pytest.raises(CredentialError, match="FLICKR_API_KEY.*FLICKR_API_KEY_FILE"):
        FlickrSource(cfg, Rejections())
    key_file = tmp_path / "flickr_key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("FLICKR_API_KEY_FILE", str(key_file))
    FlickrSource(cfg, Rejections())  # the key now comes from the file


# ------------------------------------------------------------------- downloads


def test_download_returns_the_bytes_as_served():
    # Decoding and shrinking happen once, in the build's prepare_photo; the download only checks the transfer.
    base = make_catalogue(2, lat=LAT, lon=LON, spread_km=0.2, start=START, end=END, seed=10)
    cat = [dataclasses.replace(base[0], width=160, height=120), dataclasses.replace(base[1], width=90, height=200)]
    with FakeFlickr(cat) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake), ledger)
        photos = sorted(src.search(LAT, LON), key=lambda p: p.photo_id)
        got = src.download_all(photos, workers=2, progress=False)
        assert len(got) == 2 and ledger.total == 0
        assert [p.image for p in got] == [fake.jpeg(p.extra["flickr_id"]) for p in got]
        assert sorted(Image.open(io.BytesIO(p.image)).size for p in got) == [(90, 200), (160, 120)]
        src.close()


def test_download_survives_truncated_bytes():
    cat = make_catalogue(12, lat=LAT, lon=LON, spread_km=0.2, start=START, end=END, seed=12)
    with FakeFlickr(cat, faults=FaultSpec(rate=0.5, kinds=("truncated_image",), endpoints=("img",), seed=3)) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, retry=RetryConfig(max_attempts=10, initial_s=0.001, max_backoff_s=0.01)),
                           ledger)
        got = src.download_all(src.search(LAT, LON), workers=2, progress=False)
        assert len(got) == 12 and ledger.total == 0, ledger.to_json()
        # Both variants fired: a short body under the full Content-Length, and a cut but consistent JPEG.
        assert fake.count("img", fault="truncated_image") >= 2
        for p in got:
            assert p.image == fake.jpeg(p.extra["flickr_id"])
            with Image.open(io.BytesIO(p.image)) as im:
                im.load()  # complete: decodes without a truncation error


def test_end_of_image_marker_check():
    from graft.sources.flickr import _ends_with_eoi

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    assert _ends_with_eoi(jpeg)
    assert _ends_with_eoi(jpeg + b"\x00" * 8)  # padding after the marker is harmless
    assert not _ends_with_eoi(jpeg[: len(jpeg) // 2])


@pytest.mark.parametrize("transient, permanent, reason", [
    (("429", "500", "reset"), "500", "download_failed:http_500"),
    # A photo that arrives cut off on every try (both variants) is recorded, never kept.
    (("truncated_image",), "truncated_image", "download_failed:truncated"),
])
def test_download_retries_then_records_permanent_failures(transient, permanent, reason):
    cat = make_catalogue(20, lat=LAT, lon=LON, spread_km=0.2, start=START, end=END, seed=13)
    spec = FaultSpec(rate=0.2, kinds=transient, permanent_fraction=0.25, permanent_kind=permanent,
                     endpoints=("img",), seed=5)
    with FakeFlickr(cat, faults=spec) as fake:
        ledger = Rejections()
        src = FlickrSource(make_cfg(fake, retry=RetryConfig(max_attempts=8, initial_s=0.001, max_backoff_s=0.01)), ledger)
        photos = src.search(LAT, LON)
        got = src.download_all(photos, workers=3, progress=False)
        doomed = {f"flickr-{p.id}" for p in cat if fake.is_permanent("img", p.id)}
        assert 1 <= len(doomed) < 20
        assert {p.photo_id for p in got} == {p.photo_id for p in photos} - doomed
        assert ledger.counts == {reason: len(doomed)}
        assert {e["item"] for e in ledger.examples} == doomed


# ------------------------------------------------------------------ rate limit


class FakeClock:
    """A clock that only moves when someone sleeps on it; thread-safe."""

    def __init__(self):
        self.t = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, s: float) -> None:
        with self._lock:
            self.t += s
            self.sleeps.append(s)


def test_token_bucket_limits_the_query_rate_across_threads():
    cat = make_catalogue(3000, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=14)
    clock = FakeClock()
    with FakeFlickr(cat) as fake:
        src = FlickrSource(make_cfg(fake, per_page=100, queries_per_hour=3600), Rejections(),
                           clock=clock, sleep=clock.sleep)
        results: list[int] = []
        wall = time.monotonic()
        threads = [threading.Thread(target=lambda w=w: results.append(len(src.search(LAT, LON, start=w[0], end=w[1]))))
                   for w in [(START, dt.date(2015, 12, 31)), (dt.date(2016, 1, 1), END)]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        n = fake.count("rest")
        assert sum(results) == 3000 and n == sum(-(-r // 100) for r in results)  # one query per page
        # 3,600/h = 1 query/s after a burst of 10: n queries need at least n - 10 s of (fake) time.
        # (Two threads may both sleep before either takes the token, so the fake clock can run a
        # little ahead; the bucket hands that time back as tokens, which bounds the overshoot.)
        assert n - 10 - 1e-6 <= clock.t <= n - 10 + 3
        assert clock.sleeps and time.monotonic() - wall < 10  # nothing really slept for 20 s


# --------------------------------------------------------------------- secrets


def test_secrets_never_reach_logs_errors_or_the_ledger(caplog):
    cat = make_catalogue(300, lat=LAT, lon=LON, spread_km=0.5, start=START, end=END, seed=15)
    spec = FaultSpec(rate=0.3, kinds=("reset", "500", "malformed_json"), permanent_fraction=0.5,
                     permanent_kind="reset", seed=2)
    caplog.set_level(logging.DEBUG)
    with FakeFlickr(cat, faults=spec, api_key=KEY, api_secret=SECRET) as fake:
        ledger = Rejections()
        # The key also sits in the endpoint URL (a mirror that wants it there), so request errors,
        # which quote the URL, would carry it if they were not redacted.
        src = FlickrSource(make_cfg(fake, rest_url=f"{fake.rest_url}?k={KEY}", per_page=50), ledger)
        photos = src.search(LAT, LON)
        src.download_all(photos, workers=2, progress=False)
        assert {r.api_key for r in fake.requests if r.endpoint == "rest"} == {KEY}  # the key was really used
        assert ledger.total > 0 and any("query_failed" in k or "download_failed" in k for k in ledger.counts)
        assert any(r.name.startswith(("oauthlib", "requests_oauthlib")) for r in caplog.records)

        # Wrong credentials: a clear error, without the key.
        fake.set_faults(FaultSpec())
        with FakeFlickr(cat, api_key="some-other-key") as strict:
            with pytest.raises(FlickrAuthError) as err:
                FlickrSource(make_cfg(strict), Rejections()).search(LAT, LON)
        assert "FLICKR_API_KEY" in str(err.value)

    dumped = json.dumps(ledger.to_json()) + caplog.text + str(err.value) + repr(src)
    dumped += "".join(str(r.msg) + str(r.args) for r in caplog.records)
    for secret in (KEY, SECRET):
        at = dumped.find(secret)
        assert at < 0, f"secret leaked: ...{dumped[max(0, at - 300):at + 50]}..."
