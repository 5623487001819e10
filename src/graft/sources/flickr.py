"""Geotagged ground photos from Flickr's REST API (``flickr.photos.search``).

What this module has to get right, and why:

- **The 4,000-result cap.** Flickr reports the true ``total`` of a search but
  lets a client page through only the first 4,000 hits. A query whose total is
  above ``query_cap`` is therefore split: its taken-date window in halves,
  recursively, and once the window is down to a day its area into quadrants.
  Every leaf query is paginated, and photos are de-duplicated by id (split
  boundaries are inclusive on both sides, so a photo can come back twice).
- **The mandatory date window.** A geo query without a limiting argument only
  returns photos from the last 12 hours, so ``min_taken_date`` and
  ``max_taken_date`` are sent on every call.
- **Rate limits and flaky networks.** Every API request takes a token from a
  bucket shared by all sources and threads of the process that use the same
  key (``queries_per_hour``; Flickr allows 3,600 per key). 429s, 5xx replies,
  timeouts, connection resets, malformed JSON and Flickr's own "temporarily
  unavailable" errors are retried with capped, jittered exponential backoff.
  When retries run out the query (or download) goes into the
  :class:`~graft.rejections.Rejections` ledger as ``query_failed:<kind>`` or
  ``download_failed:<kind>`` and the run goes on.
- **Secrets.** The key and secret are read from the environment (or a file)
  and registered for redaction; every message this module logs, raises or
  writes to the ledger is redacted, and a redaction filter is attached to the
  loggers of flickrapi/oauthlib/requests, which log the OAuth consumer key at
  DEBUG level.

Flickr's ``datetaken`` is the camera's local time with no time zone, so
``GroundPhoto.taken_at`` is a naive :class:`datetime.datetime`.

Example::

    cfg = FlickrConfig(min_taken=date(2015, 1, 1), max_taken=date(2020, 12, 31))
    ledger = Rejections()
    with FlickrSource(cfg, ledger) as src:
        photos = src.search(48.8584, 2.2945)
        photos = src.download_all(photos)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import flickrapi
import requests
from pydantic import Field, model_validator
from tqdm import tqdm

from graft.config import StrictModel
from graft.credentials import CredentialError, RedactingFilter, read_secret, redact
from graft.geometry import haversine_m
from graft.rejections import Rejected, Rejections
from graft.sources.base import GroundPhoto
from graft.sources.retry import RateLimiter, RetryConfig, TokenBucket, TransientError, call_with_retry

log = logging.getLogger(__name__)

# Flickr licence ids (flickr.photos.licenses.getInfo) -> short names recorded for attribution.
LICENSE_NAMES: dict[int, str] = {
    0: "All Rights Reserved",
    1: "CC BY-NC-SA 2.0",
    2: "CC BY-NC 2.0",
    3: "CC BY-NC-ND 2.0",
    4: "CC BY 2.0",
    5: "CC BY-SA 2.0",
    6: "CC BY-ND 2.0",
    7: "No known copyright restrictions",
    8: "United States Government Work",
    9: "CC0 1.0",
    10: "Public Domain Mark 1.0",
}
# Every Creative Commons 2.0 licence (NonCommercial and NoDerivs variants included, which is
# fine for research use) plus CC0 and the Public Domain Mark. For commercial use narrow it to
# [4, 5, 9, 10]. Flickr may add ids (flickr.photos.licenses.getInfo lists the current ones).
DEFAULT_LICENSES: list[int] = [1, 2, 3, 4, 5, 6, 9, 10]

EXTRAS = "geo,date_taken,license,owner_name,url_z,url_c,url_m"
# Preferred download sizes: z is 640 px on the long side, c 800 px, m 240 px.
URL_SIZES = ("url_z", "url_c", "url_m")
# JPEG start- and end-of-image markers: a download that starts with one must end with the other.
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"

# Flickr API error codes (stat=fail) that mean "try again later"; every other code is permanent.
TRANSIENT_API_CODES = frozenset({10, 105, 106})  # search unavailable, service unavailable, temporary failure
# Codes that mean the credentials are wrong: no query can succeed, so stop instead of failing each one.
AUTH_API_CODES = frozenset({96, 97, 98, 99, 100})

# A window shorter than this is split in space instead of time: photos cluster in time
# (events), and halving a day further buys little while it multiplies queries.
MIN_SPLIT_WINDOW = dt.timedelta(days=1)
# Below this bbox side (degrees, ~100 m) a query is not split further; what it cannot page
# through is recorded as ``query_truncated``.
MIN_SPLIT_DEG = 1e-3
KM_PER_DEG_LAT = 111.32
TAKEN_FORMAT = "%Y-%m-%d %H:%M:%S"

_HTTP_STATUS_RE = re.compile(r"Status code (\d{3})")

# One token bucket per (API key, rate) for the whole process, so several sources (one per
# partition, say) on the same key stay within Flickr's per-key quota together.
_BUCKETS: dict[tuple[str, float], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()

# Third-party loggers that may print the OAuth consumer key or a URL.
_GUARDED_LOGGER_PREFIXES = ("flickrapi", "oauthlib", "requests_oauthlib", "requests", "urllib3")


class FlickrConfig(StrictModel):
    """Settings of the Flickr ground source.

    The key and secret are never part of the config: it names the environment
    variables that hold them (or ``<NAME>_FILE`` variables naming files that do).

    Attributes:
        api_key_env: environment variable holding the API key.
        api_secret_env: environment variable holding the API secret.
        licenses: Flickr license ids accepted (default: Creative Commons, CC0, Public Domain Mark).
        min_taken: earliest capture date searched.
        max_taken: latest capture date searched.
        timeout_s: timeout of one HTTP request.
        retry: retries of transient failures.
        max_photos_per_point: cap on photos kept per search point (None: no cap).
    """

    api_key_env: str = "FLICKR_API_KEY"
    api_secret_env: str = "FLICKR_API_SECRET"
    rest_url: str | None = Field(None, description="REST endpoint override (a mirror, or a local fake in tests)")
    licenses: list[int] = Field(default_factory=lambda: list(DEFAULT_LICENSES), min_length=1)
    min_accuracy: int = Field(
        15, ge=0, le=16, description="drop photos whose geotag accuracy is below this (1 world .. 16 street)"
    )
    per_page: int = Field(250, ge=1, le=250, description="geo queries return at most 250 per page")
    query_cap: int = Field(4000, ge=1, description="results Flickr lets one query page through")
    queries_per_hour: float = Field(
        3600, gt=0, description="API requests per hour for this key: per process, and under "
        "`graft build --distributor ray` for all the build's workers together (one shared limiter)"
    )
    radius_km: float = Field(1.0, gt=0, lt=32, description="search radius around a point (Flickr: < 32 km)")
    min_taken: dt.date
    max_taken: dt.date
    timeout_s: float = Field(30, gt=0)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    max_photos_per_point: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_window(self) -> FlickrConfig:
        if self.min_taken > self.max_taken:
            raise ValueError(f"min_taken ({self.min_taken}) is after max_taken ({self.max_taken}); swap them")
        if self.per_page > self.query_cap:
            raise ValueError(f"per_page ({self.per_page}) is larger than query_cap ({self.query_cap})")
        return self


class FlickrAuthError(CredentialError):
    """Flickr rejected the API key or the request signature; no query can succeed."""


class _PermanentError(Rejected):
    """A failure that retrying will not fix; ``reason`` is the ledger key suffix."""


@dataclass(frozen=True)
class _Region:
    """Where one query searches: a bbox, or a circle sent as lat/lon/radius.

    ``circle`` stays set on the bbox quadrants a circle is split into, so photos
    outside the original circle are dropped client-side.
    """

    bbox: tuple[float, float, float, float] | None = None  # min_lon, min_lat, max_lon, max_lat
    circle: tuple[float, float, float] | None = None  # lat, lon, radius_km

    def params(self) -> dict[str, str]:
        if self.bbox is not None:
            return {"bbox": ",".join(f"{v:.6f}" for v in self.bbox)}
        lat, lon, r = self.circle  # type: ignore[misc]
        return {"lat": f"{lat:.6f}", "lon": f"{lon:.6f}", "radius": f"{r:g}", "radius_units": "km"}

    def describe(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.params().items())

    def quadrants(self) -> list[_Region] | None:
        """Four sub-regions covering this one, or None if it is too small to split."""
        if self.bbox is not None:
            x0, y0, x1, y1 = self.bbox
        else:
            lat, lon, r = self.circle  # type: ignore[misc]
            dlat = r / KM_PER_DEG_LAT
            dlon = r / (KM_PER_DEG_LAT * max(math.cos(math.radians(lat)), 1e-6))
            x0, y0 = max(lon - dlon, -180.0), max(lat - dlat, -90.0)
            x1, y1 = min(lon + dlon, 180.0), min(lat + dlat, 90.0)
        if x1 - x0 < MIN_SPLIT_DEG and y1 - y0 < MIN_SPLIT_DEG:
            return None
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        boxes = [(x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)]
        return [_Region(bbox=b, circle=self.circle) for b in boxes]

    def contains(self, lat: float, lon: float) -> bool:
        """False for a point outside the circle this quadrant was cut from (root queries trust Flickr)."""
        if self.circle is None or self.bbox is None:
            return True
        clat, clon, r = self.circle
        return float(haversine_m(clat, clon, lat, lon)) <= r * 1000.0


@dataclass
class _Page:
    total: int
    pages: int
    photos: list[dict[str, Any]]


@dataclass
class _Collect:
    """Per-call state of one search: unique photos kept, ids seen, and the stop condition."""

    out: dict[str, GroundPhoto]
    seen: set[str]
    limit: int | None
    bar: tqdm | None = None

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.out) >= self.limit


def shared_bucket(api_key: str, queries_per_hour: float) -> TokenBucket:
    """The process-wide token bucket for ``api_key`` at ``queries_per_hour``."""
    ident = (hashlib.sha256(api_key.encode()).hexdigest(), float(queries_per_hour))
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(ident)
        if bucket is None:
            bucket = _BUCKETS[ident] = TokenBucket(queries_per_hour)
        return bucket


def _guard_logs() -> None:
    """Attach a redacting filter to every logger that may print the key or a signed URL.

    Logger filters only see records created on that very logger, not on its
    children, so each existing logger under the guarded prefixes gets one.
    flickrapi creates some loggers lazily (per instance), hence the repeat calls.
    """
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in _GUARDED_LOGGER_PREFIXES]
    for name in [*names, *_GUARDED_LOGGER_PREFIXES, __name__]:
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in lg.filters):
            lg.addFilter(RedactingFilter())


# A JSON reply can carry any number: a 400-digit integer does not fit a float, an Infinity not an int.
# Either is as unusable as a missing value, and must not escape as OverflowError and fail the search.


def _to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if f == f else None  # NaN is not a coordinate


def _to_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _as_window(start: dt.date | dt.datetime, end: dt.date | dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Inclusive [start, end] as naive datetimes; a bare ``end`` date covers that whole day."""

    def conv(d: dt.date | dt.datetime, end_of_day: bool) -> dt.datetime:
        if isinstance(d, dt.datetime):
            return d.replace(tzinfo=None, microsecond=0)
        return dt.datetime.combine(d, dt.time(23, 59, 59) if end_of_day else dt.time(0, 0, 0))

    t0, t1 = conv(start, False), conv(end, True)
    if t0 > t1:
        raise ValueError(f"taken-date window is empty: start {t0} is after end {t1}; pass start <= end")
    return t0, t1


def parse_taken(raw: dict[str, Any]) -> dt.datetime | None:
    """Flickr's ``datetaken`` as a naive datetime, or None when missing, unknown or invalid.

    Flickr fills ``datetaken`` with the upload time when the camera gave none and
    flags it with ``datetakenunknown=1``; such a date is not a capture date.
    """
    if str(raw.get("datetakenunknown", "0")) == "1":
        return None
    text = str(raw.get("datetaken") or "").strip()
    if not text:
        return None
    try:
        taken = dt.datetime.strptime(text, TAKEN_FORMAT)
    except ValueError:
        return None
    return taken if taken.year >= 1826 else None  # the first photograph; "0000-..." and friends are junk


class FlickrSource:
    """Ground photos from Flickr: geo search with cap splitting, filtering, resilient downloads.

    Thread-safe: one instance may serve a pool of threads. Each thread gets its
    own ``flickrapi.FlickrAPI`` and ``requests.Session``; the token bucket and
    the ledger are shared.

    Args:
        cfg: the source settings.
        rejections: ledger that receives every photo, query or download dropped, with a reason.
        clock: monotonic clock for the rate limiter (tests inject a fake one).
        sleep: sleep function for the rate limiter and retry backoff (tests inject a fake one).
        bucket: an explicit rate limiter (a token bucket, or one shared by the processes of a
            build); by default the process-wide bucket for this key (or a private one on
            ``clock``/``sleep`` when those are injected).

    Attributes:
        counters: what the source did, for a run summary: ``api_requests`` (attempts included),
            ``pages``, ``queries_failed``, ``split_time``, ``split_space``, ``duplicates``,
            ``no_date`` (photos listed without a capture date; kept, ``taken_at=None``),
            ``image_requests``, ``downloads``, ``downloads_failed``, ``searches``.

    Raises:
        CredentialError: the key or secret is not set.
        FlickrAuthError: (from :meth:`search`) Flickr rejected the key or signature.
    """

    name = "flickr"

    def __init__(
        self,
        cfg: FlickrConfig,
        rejections: Rejections,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        bucket: RateLimiter | None = None,
    ):
        self.cfg = cfg
        self.rejections = rejections
        self._key = read_secret(cfg.api_key_env, f"{cfg.api_key_env}_FILE", what="the Flickr API")
        self._secret = read_secret(cfg.api_secret_env, f"{cfg.api_secret_env}_FILE", what="the Flickr API")
        self._sleep = sleep or time.sleep
        if bucket is not None:
            self.bucket = bucket
        elif clock is not None or sleep is not None:
            self.bucket = TokenBucket(cfg.queries_per_hour, clock=clock or time.monotonic, sleep=self._sleep)
        else:
            self.bucket = shared_bucket(self._key, cfg.queries_per_hour)  # type: ignore[arg-type]
        self._license_set = frozenset(cfg.licenses)
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        # Overlapping searches (neighbouring query points) return the same photos: each photo
        # is rejected, and so counted in the ledger, once per source.
        self._rejected: set[str] = set()
        _guard_logs()

    def __repr__(self) -> str:  # never show the key (flickrapi's own repr does)
        return redact(f"FlickrSource(rest_url={self.cfg.rest_url or flickrapi.FlickrAPI.REST_URL!r})")

    def __enter__(self) -> FlickrSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP sessions opened by this source's threads."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()

    def _reject(self, reason: str, photo_id: str, detail: str) -> None:
        with self._lock:
            if photo_id in self._rejected:
                return
            self._rejected.add(photo_id)
        self.rejections.add(reason, photo_id, detail)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _new_session(self) -> requests.Session:
        s = requests.Session()
        with self._lock:
            self._sessions.append(s)
        return s

    def _api(self) -> flickrapi.FlickrAPI:
        api = getattr(self._local, "api", None)
        if api is None:
            api = flickrapi.FlickrAPI(
                self._key, self._secret, format="parsed-json", store_token=False, timeout=self.cfg.timeout_s
            )
            if self.cfg.rest_url:
                api.REST_URL = self.cfg.rest_url  # flickrapi posts every call to self.REST_URL
            # flickrapi shares one class-level Session across all instances and threads; give this
            # thread its own so connection pools are not shared between threads.
            api.flickr_oauth.session = self._new_session()
            self._local.api = api
            _guard_logs()  # flickrapi created its per-instance loggers just now
        return api

    def _http(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = self._new_session()
        return s

    # ------------------------------------------------------------------ search

    def search(
        self,
        lat: float,
        lon: float,
        radius_km: float | None = None,
        start: dt.date | dt.datetime | None = None,
        end: dt.date | dt.datetime | None = None,
        *,
        progress: bool = False,
    ) -> list[GroundPhoto]:
        """Photos taken within ``radius_km`` of (lat, lon) between ``start`` and ``end``.

        Args:
            lat: latitude in WGS84 degrees.
            lon: longitude in WGS84 degrees.
            radius_km: search radius, default ``cfg.radius_km`` (Flickr allows < 32 km).
            start: first taken date (inclusive), default ``cfg.min_taken``.
            end: last taken date (inclusive; a date covers the whole day), default ``cfg.max_taken``.
            progress: show a tqdm bar of the photos listed.

        Returns:
            The unique photos that passed the filters, metadata only (``image`` is None).
        """
        r = self.cfg.radius_km if radius_km is None else float(radius_km)
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"search point ({lat}, {lon}) is not a WGS84 lat/lon in degrees")
        if not 0.0 < r < 32.0:
            raise ValueError(f"radius_km={r} is outside Flickr's range (0, 32) km")
        return self._search(_Region(circle=(float(lat), float(lon), r)), start, end, progress)

    def search_bbox(
        self,
        bbox: tuple[float, float, float, float],
        start: dt.date | dt.datetime | None = None,
        end: dt.date | dt.datetime | None = None,
        *,
        progress: bool = False,
    ) -> list[GroundPhoto]:
        """Photos taken inside ``bbox`` = (min_lon, min_lat, max_lon, max_lat) between ``start`` and ``end``.

        Same filters, splitting and defaults as :meth:`search`.
        """
        if len(bbox) != 4:
            raise ValueError(f"bbox must be (min_lon, min_lat, max_lon, max_lat), got {bbox!r}")
        x0, y0, x1, y1 = (float(v) for v in bbox)
        if not (-180.0 <= x0 < x1 <= 180.0 and -90.0 <= y0 < y1 <= 90.0):
            raise ValueError(
                f"bbox {bbox!r} is not (min_lon, min_lat, max_lon, max_lat) with min < max in WGS84 degrees "
                "(a box across the antimeridian must be searched as two boxes)"
            )
        return self._search(_Region(bbox=(x0, y0, x1, y1)), start, end, progress)

    def _search(self, region: _Region, start, end, progress: bool) -> list[GroundPhoto]:
        t0, t1 = _as_window(self.cfg.min_taken if start is None else start,
                            self.cfg.max_taken if end is None else end)
        state = _Collect(out={}, seen=set(), limit=self.cfg.max_photos_per_point)
        with tqdm(desc="flickr photos", unit="photo", disable=not progress, leave=False) as bar:
            state.bar = bar
            self._collect(region, t0, t1, state)
        self._count("searches")
        return list(state.out.values())

    def _collect(self, region: _Region, t0: dt.datetime, t1: dt.datetime, state: _Collect) -> None:
        """Fetch everything ``region`` x [t0, t1] holds, splitting while the total exceeds the cap."""
        if state.full:
            return
        first = self._fetch_page(region, t0, t1, 1)
        if first is None:
            return  # recorded in the ledger
        cap = self.cfg.query_cap
        if first.total > cap:
            if t1 - t0 >= MIN_SPLIT_WINDOW:
                mid = t0 + dt.timedelta(seconds=int((t1 - t0).total_seconds()) // 2)
                self._count("split_time")
                self._collect(region, t0, mid, state)
                self._collect(region, mid + dt.timedelta(seconds=1), t1, state)
                return
            quads = region.quadrants()
            if quads is not None:
                self._count("split_space")
                for q in quads:
                    self._collect(q, t0, t1, state)
                return
            self.rejections.add(
                "query_truncated", item=self._describe(region, t0, t1),
                detail=f"{first.total} results but only the first {cap} can be paged through; "
                "the window and area cannot be split further",
            )
        self._consume(first.photos, region, state)
        last_page = min(first.pages, -(-min(first.total, cap) // self.cfg.per_page))
        for page in range(2, last_page + 1):
            if state.full:
                return
            res = self._fetch_page(region, t0, t1, page)
            if res is not None:
                self._consume(res.photos, region, state)

    def _describe(self, region: _Region, t0: dt.datetime, t1: dt.datetime, page: int | None = None) -> str:
        s = f"{region.describe()} taken=[{t0:{TAKEN_FORMAT}}..{t1:{TAKEN_FORMAT}}]"
        return f"{s} page={page}" if page is not None else s

    def _query_params(self, region: _Region, t0: dt.datetime, t1: dt.datetime, page: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "has_geo": 1,
            "min_taken_date": t0.strftime(TAKEN_FORMAT),
            "max_taken_date": t1.strftime(TAKEN_FORMAT),
            "content_type": 1,
            "media": "photos",
            "license": ",".join(str(i) for i in self.cfg.licenses),
            "extras": EXTRAS,
            "per_page": self.cfg.per_page,
            "page": page,
        }
        params.update(region.params())
        return params

    def _fetch_page(self, region: _Region, t0: dt.datetime, t1: dt.datetime, page: int) -> _Page | None:
        """One page of a query, retried; None (and a ledger entry) if it cannot be had."""
        params = self._query_params(region, t0, t1, page)
        try:
            page_ = call_with_retry(lambda: self._call_search(params), self.cfg.retry, sleep=self._sleep)
            self._count("pages")
            return page_
        except (TransientError, _PermanentError) as e:
            item = self._describe(region, t0, t1, page)
            self.rejections.add(f"query_failed:{e.reason}", item=item, detail=redact(str(e)))
            log.warning("flickr query failed (%s): %s", e.reason, redact(item))
            self._count("queries_failed")
            return None

    def _call_search(self, params: dict[str, Any]) -> _Page:
        self.bucket.acquire()
        self._count("api_requests")
        try:
            reply = self._api().photos.search(**params)
        except flickrapi.FlickrError as e:
            raise self._classify_flickr_error(e) from None
        except requests.Timeout as e:
            raise TransientError("timeout", redact(str(e))) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
            raise TransientError("truncated_reply", redact(str(e))) from None
        except requests.ConnectionError as e:
            raise TransientError("connection_error", redact(str(e))) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as e:
            raise ValueError(redact(f"rest_url {self.cfg.rest_url!r} is not a usable URL: {e}")) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TransientError("malformed_json", str(e)[:200]) from None
        return _parse_page(reply)

    def _classify_flickr_error(self, e: flickrapi.FlickrError) -> Exception:
        msg = redact(str(e))
        if e.code is None:  # flickrapi raises FlickrError("... Status code N received") for HTTP errors
            m = _HTTP_STATUS_RE.search(msg)
            if m is None:
                return _PermanentError("flickr_error", msg)
            status = int(m.group(1))
            if status == 429 or status >= 500 or status == 408:
                return TransientError(f"http_{status}", msg)
            return _PermanentError(f"http_{status}", msg)
        if e.code in AUTH_API_CODES:
            return FlickrAuthError(
                f"Flickr rejected the credentials ({msg}). Check ${self.cfg.api_key_env} and "
                f"${self.cfg.api_secret_env} (or the files named by ${self.cfg.api_key_env}_FILE / "
                f"${self.cfg.api_secret_env}_FILE) against https://www.flickr.com/services/apps/"
            )
        if e.code in TRANSIENT_API_CODES:
            return TransientError(f"flickr_{e.code}", msg)
        return _PermanentError(f"flickr_{e.code}", msg)

    def _consume(self, raws: Iterable[dict[str, Any]], region: _Region, state: _Collect) -> None:
        for raw in raws:
            if state.full:
                return
            pid = str(raw.get("id") or "")
            if not pid:
                self.rejections.add("malformed_record", detail=redact(json.dumps(raw)[:200]))
                continue
            if pid in state.seen:
                self._count("duplicates")  # split boundaries are inclusive: expected, not an error
                continue
            state.seen.add(pid)  # also for rejected ones, so each photo is judged (and counted) once
            photo = self._to_photo(pid, raw, region)
            if photo is None:
                continue
            state.out[pid] = photo
            if state.bar is not None:
                state.bar.update(1)

    def _to_photo(self, pid: str, raw: dict[str, Any], region: _Region) -> GroundPhoto | None:
        """A GroundPhoto from one search record, or None (with a ledger entry) if it is unusable."""
        photo_id = f"flickr-{pid}"
        lat, lon = _to_float(raw.get("latitude")), _to_float(raw.get("longitude"))
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
            self._reject("bad_geo", photo_id, f"latitude={raw.get('latitude')!r} longitude={raw.get('longitude')!r}")
            return None
        if not region.contains(lat, lon):
            return None  # a quadrant of a split circle query reaches outside the circle: not part of the search
        acc = _to_int(raw.get("accuracy"))
        if acc is None or acc < self.cfg.min_accuracy:
            self._reject("low_geo_accuracy", photo_id, f"accuracy {acc} < {self.cfg.min_accuracy}")
            return None
        lic = _to_int(raw.get("license"))
        if lic is None or lic not in self._license_set:
            # Flickr applies the licence filter itself; a mirror or a changed licence may not.
            self._reject("license_not_allowed", photo_id, f"license {raw.get('license')!r}")
            return None
        size = next((k for k in URL_SIZES if raw.get(k)), None)
        if size is None:
            self._reject("no_download_url", photo_id, f"none of {', '.join(URL_SIZES)}")
            return None
        taken = parse_taken(raw)
        if taken is None:
            self._count("no_date")
        suffix = size.split("_", 1)[1]
        return GroundPhoto(
            photo_id=photo_id,
            lat=lat,
            lon=lon,
            taken_at=taken,
            source=self.name,
            uri=str(raw[size]),
            license=LICENSE_NAMES.get(lic, f"flickr-license-{lic}"),
            owner=str(raw.get("ownername") or raw.get("owner") or ""),
            accuracy=acc,
            extra={
                "flickr_id": pid,
                "license_id": lic,
                "owner_nsid": str(raw.get("owner") or ""),
                "datetakengranularity": _to_int(raw.get("datetakengranularity")),
                "url_size": suffix,
                "width": _to_int(raw.get(f"width_{suffix}")),
                "height": _to_int(raw.get(f"height_{suffix}")),
            },
        )

    # ---------------------------------------------------------------- download

    def download(self, photo: GroundPhoto) -> GroundPhoto | None:
        """Fetch ``photo.uri`` and set ``photo.image`` to the bytes as served.

        The transfer is checked (status, Content-Length, a JPEG that ends in its end-of-image
        marker) and retried when it is cut short, but the photo is not decoded here: the build
        decodes each photo once, in :func:`graft.pipeline.photos.prepare_photo`, which validates,
        orients and shrinks it. Decoding here too would double the CPU a download costs, which is
        what limits a 2-core machine at 32 downloads in flight.

        Returns the photo, or None after recording ``download_failed:<kind>`` (or
        ``no_download_url``) in the ledger.
        """
        if not photo.uri:
            self.rejections.add("no_download_url", photo.photo_id, "empty uri")
            return None
        try:
            photo.image = call_with_retry(lambda: self._fetch_image(photo.uri), self.cfg.retry, sleep=self._sleep)
        except (TransientError, _PermanentError) as e:
            self.rejections.add(f"download_failed:{e.reason}", photo.photo_id, redact(f"{photo.uri}: {e}"))
            self._count("downloads_failed")
            return None
        self._count("downloads")
        return photo

    def download_all(self, photos: list[GroundPhoto], workers: int = 8, progress: bool = True) -> list[GroundPhoto]:
        """Download ``photos`` on a thread pool; returns those that succeeded, in input order."""
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            done = list(tqdm(pool.map(self.download, photos), total=len(photos), desc="flickr downloads",
                             unit="photo", disable=not progress))
        return [p for p in done if p is not None]

    def _fetch_image(self, url: str) -> bytes:
        self._count("image_requests")
        try:
            resp = self._http().get(url, timeout=self.cfg.timeout_s)
            body = resp.content
        except requests.Timeout as e:
            raise TransientError("timeout", redact(str(e))) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as e:
            raise TransientError("truncated", redact(str(e))) from None
        except requests.ConnectionError as e:
            raise TransientError("connection_error", redact(str(e))) from None
        status = resp.status_code
        if status != 200:
            if status == 429 or status >= 500 or status == 408:
                raise TransientError(f"http_{status}")
            raise _PermanentError(f"http_{status}")
        expected = _to_int(resp.headers.get("Content-Length"))
        if expected is not None and "Content-Encoding" not in resp.headers and expected != len(body):
            raise TransientError("truncated", f"got {len(body)} of {expected} bytes")
        if not body:
            raise TransientError("truncated", "empty body")
        if body.startswith(JPEG_SOI) and not _ends_with_eoi(body):
            # A self-consistent reply can still carry a cut-off JPEG (an upstream cache that stored
            # half a file): no end-of-image marker means the tail is missing. Worth another try.
            raise TransientError("truncated", f"JPEG of {len(body)} bytes has no end-of-image marker")
        return body


def _ends_with_eoi(body: bytes) -> bool:
    """Whether a JPEG's end-of-image marker is at its end (some writers pad a few bytes after it)."""
    return JPEG_EOI in body[-32:]


def _parse_page(reply: Any) -> _Page:
    """Validate a parsed ``flickr.photos.search`` reply; a broken one is a transient failure."""
    try:
        photos = reply["photos"]
        total = int(photos["total"])
        pages = int(photos["pages"])
        items = photos.get("photo") or []
        if not isinstance(items, list):
            raise TypeError("photo is not a list")
    except (KeyError, TypeError, ValueError) as e:
        raise TransientError("malformed_json", f"unexpected reply shape: {e!r}") from None
    return _Page(total=total, pages=pages, photos=items)

