"""A local fake of Flickr's REST search API and photo server, with fault injection.

It is a real HTTP server (``http.server.ThreadingHTTPServer`` on 127.0.0.1,
an ephemeral port, HTTP/1.1 keep-alive, one thread per connection), so a
client is exercised end to end: ``flickrapi`` builds, signs and POSTs its
request, ``requests`` opens sockets, timeouts and resets really happen.

What it speaks, as ``flickrapi`` uses it:

- ``POST /services/rest/`` with a form-encoded body (GET with a query string
  works too): ``method=flickr.photos.search``, ``format=json``,
  ``nojsoncallback=1`` and the search arguments. Replies are
  ``{"photos": {"page", "pages", "perpage", "total", "photo": [...]}, "stat": "ok"}``
  or ``{"stat": "fail", "code": N, "message": "..."}``.
- Search arguments honoured: ``bbox``; ``lat``/``lon``/``radius``/``radius_units``
  (default 5 km, must be < 32 km); ``min_taken_date``/``max_taken_date``
  (MySQL datetime or unix timestamp, both inclusive); ``license`` (comma
  list); ``has_geo``; ``per_page`` (default 100, at most 250 for geo queries);
  ``page``; ``sort`` (``date-taken-asc|desc``; default date-posted-desc, or
  distance for radial queries); ``extras`` (``geo``, ``date_taken``,
  ``license``, ``owner_name``, ``url_z``/``url_c``/``url_m``). Others are ignored.
- Flickr's quirks: a geo query with no limiting argument (no
  ``min_taken_date``/``min_upload_date``/``tags``/``text``/``user_id``) only
  sees photos taken in the 12 hours before ``now``; a query reports its true
  ``total`` but only the first ``max_results`` (4,000) hits can be paged
  through: a page past that answers error 20, "Excessive photo offset in
  search". ``latitude``, ``longitude``, ``accuracy`` and ``license`` come as
  strings, as in Flickr's JSON.
- Authentication: the OAuth 1 ``Authorization`` header flickrapi sends (or an
  ``api_key`` argument). Given ``api_key``, other keys get error 100; given
  ``api_secret`` too, the HMAC-SHA1 signature is verified (error 96 if wrong).
- ``GET /img/<id>.jpg``: the photo's JPEG (a generated gradient of the
  catalogue entry's size), which is what ``url_z``/``url_c``/``url_m`` point at.

Fault injection (:class:`FaultSpec`), per request, from a seeded RNG:

========================  ==========  =======================================================
kind                      endpoints   what the client sees
========================  ==========  =======================================================
``429``                   rest, img   HTTP 429 Too Many Requests
``500``                   rest, img   HTTP 500
``timeout``               rest, img   no reply for ``timeout_sleep_s`` (set it above the client timeout)
``reset``                 rest, img   the socket is closed with a TCP reset, no reply
``malformed_json``        rest        HTTP 200 with half a JSON document
``api_unavailable``       rest        ``stat=fail`` code 105 (Flickr's "temporarily unavailable")
``api_error``             rest        ``stat=fail`` code 18 "Illogical arguments" (permanent)
``truncated_image``       img         alternately: a short body under the full Content-Length, then
                                      a consistent Content-Length on a cut-off JPEG
========================  ==========  =======================================================

``FaultSpec.permanent_fraction`` makes a fixed, hash-chosen fraction of items
fail on every request with ``permanent_kind``: an item is a photo id for
images and a query (all its arguments, page included) for the REST API.
:meth:`FakeFlickr.is_permanent` tells which.

Example::

    catalogue = make_catalogue(9000, lat=48.85, lon=2.35, spread_km=0.5,
                               start=date(2015, 1, 1), end=date(2016, 12, 31))
    with FakeFlickr(catalogue, faults=FaultSpec(rate=0.3, kinds=("429", "500"))) as fake:
        cfg = FlickrConfig(rest_url=fake.rest_url, min_taken=..., max_taken=...)
        ...
        fake.count("rest")               # REST requests served (faulty ones included)
        fake.count("rest", fault="429")  # of which answered 429
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from oauthlib.oauth1.rfc5849 import signature, utils
from PIL import Image

REST_PATH = "/services/rest/"
IMG_PREFIX = "/img/"
MAX_RESULTS = 4000
TAKEN_FORMAT = "%Y-%m-%d %H:%M:%S"

REST_FAULTS = frozenset({"429", "500", "timeout", "reset", "malformed_json", "api_unavailable", "api_error"})
IMG_FAULTS = frozenset({"429", "500", "timeout", "reset", "truncated_image"})
FAULT_KINDS = REST_FAULTS | IMG_FAULTS
_FAULTS_FOR = {"rest": REST_FAULTS, "img": IMG_FAULTS}


@dataclass(frozen=True)
class CatalogPhoto:
    """One photo the fake Flickr knows.

    ``datetaken`` is Flickr's ``YYYY-MM-DD HH:MM:SS`` (camera local time); when
    ``datetakenunknown`` is set it holds a stand-in date, as on Flickr. ``sizes``
    lists which of ``z``, ``c``, ``m`` have a URL.
    """

    id: str
    lat: float
    lon: float
    datetaken: str
    accuracy: int = 16
    license: int = 4
    ownername: str = "owner"
    owner: str = "10000001@N00"
    width: int = 160
    height: int = 120
    sizes: tuple[str, ...] = ("z",)
    datetakenunknown: bool = False


def make_catalogue(
    n: int,
    *,
    lat: float,
    lon: float,
    spread_km: float,
    start: dt.date,
    end: dt.date,
    seed: int = 0,
    first_id: int = 1,
    license: int = 4,
    accuracy: int = 16,
    size: tuple[int, int] = (160, 120),
) -> list[CatalogPhoto]:
    """``n`` photos scattered uniformly in a square of ``2*spread_km`` around (lat, lon), taken uniformly in [start, end].

    Ids are consecutive from ``first_id``; owners cycle through 50 names. Tweak
    single entries with :func:`dataclasses.replace` for edge cases.
    """
    rng = np.random.default_rng(seed)
    dlat = spread_km / 111.32
    dlon = spread_km / (111.32 * math.cos(math.radians(lat)))
    lats = lat + rng.uniform(-dlat, dlat, n)
    lons = lon + rng.uniform(-dlon, dlon, n)
    t0 = dt.datetime.combine(start, dt.time())
    span = int((dt.datetime.combine(end, dt.time(23, 59, 59)) - t0).total_seconds())
    secs = rng.integers(0, span + 1, n)
    return [
        CatalogPhoto(
            id=str(first_id + i),
            lat=round(float(lats[i]), 6),
            lon=round(float(lons[i]), 6),
            datetaken=(t0 + dt.timedelta(seconds=int(secs[i]))).strftime(TAKEN_FORMAT),
            accuracy=accuracy,
            license=license,
            ownername=f"owner {i % 50}",
            owner=f"{10000000 + i % 50}@N00",
            width=size[0],
            height=size[1],
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class FaultSpec:
    """Which failures the fake injects.

    Args:
        rate: probability (0..1) that a request gets a transient fault, drawn from a seeded RNG.
        kinds: the transient fault kinds to draw from (see the module docstring); each request
            draws among those that apply to its endpoint.
        seed: seeds the RNG and the choice of permanently failing items.
        permanent_fraction: fraction (0..1) of items that fail on every request.
        permanent_kind: the fault those items get.
        endpoints: where faults apply: ``"rest"``, ``"img"`` or both.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "500")
    seed: int = 0
    permanent_fraction: float = 0.0
    permanent_kind: str = "500"
    endpoints: tuple[str, ...] = ("rest", "img")

    def __post_init__(self) -> None:
        bad = [k for k in (*self.kinds, self.permanent_kind) if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; expected some of {sorted(FAULT_KINDS)}")
        if not (0.0 <= self.rate <= 1.0 and 0.0 <= self.permanent_fraction <= 1.0):
            raise ValueError(f"rate ({self.rate}) and permanent_fraction ({self.permanent_fraction}) must be in [0, 1]")
        if not set(self.endpoints) <= {"rest", "img"}:
            raise ValueError(f"endpoints must be among 'rest', 'img', got {self.endpoints}")


@dataclass(frozen=True)
class RequestRecord:
    """One request the fake received: endpoint (``rest``, ``img`` or ``other``), its arguments
    (for ``img``: ``{"id": ...}``), the fault injected (None if served normally), whether that
    fault was a permanent one, the API key it carried, and when it arrived (``time.monotonic``)."""

    endpoint: str
    params: dict[str, str]
    fault: str | None
    permanent: bool
    api_key: str | None
    t: float = field(default_factory=time.monotonic)


def rest_item_key(params: dict[str, str]) -> str:
    """The identity of a REST query for permanent faults: every argument, page included."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if not k.startswith("oauth_"))


def _parse_date(value: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    for fmt in (TAKEN_FORMAT, "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            continue
    raise ValueError(value)


def _ts(taken: str) -> float:
    try:
        return dt.datetime.strptime(taken, TAKEN_FORMAT).replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return math.nan


class _FlickrError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FakeFlickr:
    """The fake server. Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        catalogue: the photos it holds.
        faults: fault injection; change it between runs with :meth:`set_faults`.
        latency_s: added to every reply (simulates a network round trip).
        max_results: how far one query can be paged (Flickr: 4,000).
        api_key: if set, requests signed with another key get error 100.
        api_secret: with ``api_key``, verify the OAuth HMAC-SHA1 signature (error 96 if wrong).
        timeout_sleep_s: how long a ``timeout`` fault stalls before replying.
        now: "now" for the 12-hour rule of queries without a limiting argument.

    Attributes:
        requests: every request received, as :class:`RequestRecord`, in arrival order.
    """

    def __init__(
        self,
        catalogue: Sequence[CatalogPhoto],
        *,
        faults: FaultSpec | None = None,
        latency_s: float = 0.0,
        max_results: int = MAX_RESULTS,
        api_key: str | None = None,
        api_secret: str | None = None,
        timeout_sleep_s: float = 2.0,
        now: dt.datetime | None = None,
    ):
        self.catalogue = list(catalogue)
        self._by_id = {p.id: p for p in self.catalogue}
        if len(self._by_id) != len(self.catalogue):
            raise ValueError("catalogue photo ids must be unique")
        self.latency_s = latency_s
        self.max_results = max_results
        self.api_key, self.api_secret = api_key, api_secret
        self.timeout_sleep_s = timeout_sleep_s
        self.now = now or dt.datetime.now()
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._jpeg_cache: dict[str, bytes] = {}
        self._truncations = 0
        self.set_faults(faults or FaultSpec())
        # Column arrays so a search over thousands of photos is a few vector ops.
        self._lat = np.array([p.lat for p in self.catalogue], dtype=np.float64)
        self._lon = np.array([p.lon for p in self.catalogue], dtype=np.float64)
        self._taken = np.array([_ts(p.datetaken) for p in self.catalogue], dtype=np.float64)
        self._license = np.array([p.license for p in self.catalogue], dtype=np.int64)
        self._num_id = np.array([int(p.id) if p.id.isdigit() else i for i, p in enumerate(self.catalogue)])
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- control

    def start(self) -> FakeFlickr:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._stop.clear()
        # A short poll interval so stop() returns promptly (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-flickr",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port; stalled handlers are woken up."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeFlickr:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(self, faults: FaultSpec) -> None:
        """Switch fault injection (and re-seed its RNG)."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)

    def reset_records(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self.requests = []

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeFlickr is not running: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def rest_url(self) -> str:
        return self.base_url + REST_PATH

    def image_url(self, photo_id: str) -> str:
        return f"{self.base_url}{IMG_PREFIX}{photo_id}.jpg"

    # --------------------------------------------------------------- inspection

    def count(self, endpoint: str | None = None, fault: str | None = None, *, served: bool = False) -> int:
        """Requests received, optionally only for ``endpoint``, only with ``fault``, or only served without fault."""
        with self._lock:
            recs = list(self.requests)
        return sum(
            1 for r in recs
            if (endpoint is None or r.endpoint == endpoint)
            and (fault is None or r.fault == fault)
            and (not served or r.fault is None)
        )

    def rest_params(self) -> list[dict[str, str]]:
        """The arguments of every REST request received, in order."""
        with self._lock:
            return [r.params for r in self.requests if r.endpoint == "rest"]

    def is_permanent(self, endpoint: str, key: str) -> bool:
        """Whether item ``key`` (a photo id, or :func:`rest_item_key` of a query) fails permanently."""
        spec = self.faults
        if spec.permanent_fraction <= 0 or endpoint not in spec.endpoints:
            return False
        if spec.permanent_kind not in _FAULTS_FOR[endpoint]:
            return False
        h = hashlib.sha256(f"{spec.seed}:{endpoint}:{key}".encode()).digest()
        return struct.unpack(">Q", h[:8])[0] / 2**64 < spec.permanent_fraction

    def jpeg(self, photo_id: str) -> bytes:
        """The JPEG served for ``photo_id`` (generated once, then cached)."""
        with self._lock:
            data = self._jpeg_cache.get(photo_id)
        if data is not None:
            return data
        p = self._by_id[photo_id]
        seed = int(hashlib.sha256(photo_id.encode()).hexdigest()[:8], 16)
        yy, xx = np.mgrid[0:p.height, 0:p.width]
        rgb = np.stack([(xx * 255 // max(p.width - 1, 1)), (yy * 255 // max(p.height - 1, 1)),
                        np.full_like(xx, seed % 256)], axis=-1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._jpeg_cache[photo_id] = data
        return data

    # ----------------------------------------------------------------- internals

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def _pick_fault(self, endpoint: str, key: str) -> tuple[str | None, bool]:
        spec = self.faults
        if endpoint not in spec.endpoints:
            return None, False
        if self.is_permanent(endpoint, key):
            return spec.permanent_kind, True
        kinds = [k for k in spec.kinds if k in _FAULTS_FOR[endpoint]]
        if not kinds or spec.rate <= 0:
            return None, False
        with self._lock:
            hit = self._rng.random() < spec.rate
            kind = self._rng.choice(kinds)
        return (kind if hit else None), False

    def _next_truncation(self) -> int:
        with self._lock:
            self._truncations += 1
            return self._truncations

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    @staticmethod
    def _oauth(headers: dict[str, str]) -> dict[str, str]:
        auth = headers.get("authorization", "")
        return {k: utils.unescape(v) for k, v in utils.parse_authorization_header(auth)} if auth.startswith("OAuth ") else {}

    def presented_key(self, params: dict[str, str], headers: dict[str, str]) -> str | None:
        """The API key a request carries (OAuth header or ``api_key`` argument), valid or not."""
        return self._oauth(headers).get("oauth_consumer_key") or params.get("api_key")

    def _check_auth(self, params: dict[str, str], headers: dict[str, str], uri: str, body: str) -> str | None:
        """The API key the request carries; raises _FlickrError if the fake is strict and it is wrong."""
        auth = headers.get("authorization", "")
        oauth = self._oauth(headers)
        key = self.presented_key(params, headers)
        if self.api_key is not None and key != self.api_key:
            raise _FlickrError(100, "Invalid API Key (Key not found)")
        if self.api_key is not None and self.api_secret is not None:
            if not oauth:
                raise _FlickrError(97, "Missing signature")
            req = type("SignedRequest", (), {})()
            req.http_method = "POST" if body else "GET"
            req.uri = uri
            req.params = signature.collect_parameters(
                uri_query=urlsplit(uri).query, body=body, headers={"Authorization": auth}
            )
            req.signature = oauth.get("oauth_signature", "")
            if not signature.verify_hmac_sha1(req, client_secret=self.api_secret):
                raise _FlickrError(96, "Invalid signature")
        return key

    def search(self, params: dict[str, str]) -> dict:
        """Answer ``flickr.photos.search`` (raises _FlickrError for a Flickr-level failure)."""
        mask = np.ones(len(self.catalogue), dtype=bool)
        radial = False
        dist = None
        if params.get("bbox"):
            try:
                x0, y0, x1, y1 = (float(v) for v in params["bbox"].split(","))
            except ValueError:
                raise _FlickrError(18, f"Illogical arguments (bbox={params['bbox']!r})") from None
            mask &= (self._lon >= x0) & (self._lon <= x1) & (self._lat >= y0) & (self._lat <= y1)
        elif params.get("lat") and params.get("lon"):
            radial = True
            lat, lon = float(params["lat"]), float(params["lon"])
            r_km = float(params.get("radius", 5)) * (1.609344 if params.get("radius_units") == "mi" else 1.0)
            if not 0 < r_km < 32:
                raise _FlickrError(18, f"Illogical arguments (radius must be > 0 and < 32 km, got {r_km})")
            p1, p2 = np.radians(lat), np.radians(self._lat)
            a = (np.sin((p2 - p1) / 2) ** 2
                 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(self._lon - lon) / 2) ** 2)
            dist = 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
            mask &= dist <= r_km
        if params.get("has_geo") == "0":
            mask &= False  # every catalogue photo is geotagged
        try:
            t_min = _parse_date(params.get("min_taken_date", ""))
            t_max = _parse_date(params.get("max_taken_date", ""))
        except ValueError as e:
            raise _FlickrError(18, f"Illogical arguments (bad date {e})") from None
        limiting = any(params.get(k) for k in ("min_taken_date", "min_upload_date", "tags", "text", "user_id"))
        if not limiting:  # Flickr: a geo query with no limiting argument sees only the last 12 hours
            t_min = max(t_min or -math.inf, self.now.replace(tzinfo=dt.timezone.utc).timestamp() - 12 * 3600)
        if t_min is not None:
            mask &= self._taken >= t_min
        if t_max is not None:
            mask &= self._taken <= t_max
        if params.get("license"):
            wanted = [int(v) for v in params["license"].split(",") if v.strip()]
            mask &= np.isin(self._license, wanted)

        idx = np.flatnonzero(mask)
        sort = params.get("sort", "")
        if sort == "date-taken-asc":
            idx = idx[np.lexsort((self._num_id[idx], self._taken[idx]))]
        elif sort == "date-taken-desc":
            idx = idx[np.lexsort((-self._num_id[idx], -self._taken[idx]))]
        elif radial and not sort and dist is not None:
            idx = idx[np.lexsort((self._num_id[idx], dist[idx]))]
        else:  # date-posted-desc: ids grow with upload time
            idx = idx[np.argsort(-self._num_id[idx], kind="stable")]

        total = int(idx.size)
        per_page = int(params.get("per_page") or 100)
        per_page = max(1, min(per_page, 250 if (radial or "bbox" in params) else 500))
        page = max(1, int(params.get("page") or 1))
        pages = max(1, -(-total // per_page))
        offset = (page - 1) * per_page
        if offset >= self.max_results:
            raise _FlickrError(20, "Excessive photo offset in search")
        chosen = idx[offset:min(offset + per_page, total, self.max_results)]
        extras = {e.strip() for e in params.get("extras", "").split(",") if e.strip()}
        return {
            "photos": {
                "page": page, "pages": pages, "perpage": per_page, "total": total,
                "photo": [self._record_json(self.catalogue[i], extras) for i in chosen],
            },
            "stat": "ok",
        }

    def _record_json(self, p: CatalogPhoto, extras: set[str]) -> dict:
        rec: dict = {"id": p.id, "owner": p.owner, "secret": "0123456789", "server": "65535", "farm": 66,
                     "title": f"photo {p.id}", "ispublic": 1, "isfriend": 0, "isfamily": 0}
        if "license" in extras:
            rec["license"] = str(p.license)
        if "date_taken" in extras:
            rec.update(datetaken=p.datetaken, datetakengranularity=0,
                       datetakenunknown="1" if p.datetakenunknown else "0")
        if "owner_name" in extras:
            rec["ownername"] = p.ownername
        if "geo" in extras:
            rec.update(latitude=f"{p.lat:.6f}", longitude=f"{p.lon:.6f}", accuracy=str(p.accuracy),
                       context=0, place_id="", woeid="", geo_is_public=1, geo_is_contact=0,
                       geo_is_friend=0, geo_is_family=0)
        for s in ("z", "c", "m"):
            if f"url_{s}" in extras and s in p.sizes:
                rec[f"url_{s}"] = self.image_url(p.id)
                rec[f"height_{s}"], rec[f"width_{s}"] = p.height, p.width
        return rec


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every reply carries Content-Length
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the client's
    # delayed ACK stalls every keep-alive reply by ~40 ms.
    disable_nagle_algorithm = True
    fake: FakeFlickr  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep http.server quiet
        pass

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(self.rfile.read(length) if length else b"")

    # -------------------------------------------------------------- plumbing

    def _dispatch(self, body: bytes) -> None:
        try:
            parts = urlsplit(self.path)
            if parts.path == REST_PATH:
                self._rest(parts.query, body)
            elif parts.path.startswith(IMG_PREFIX) and parts.path.endswith(".jpg"):
                self._image(parts.path[len(IMG_PREFIX):-len(".jpg")])
            else:
                self.fake._record(RequestRecord("other", {"path": parts.path}, None, False, None))
                self._send(404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. after its timeout)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None,
              declared_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close the connection with a TCP RST and no reply."""
        self.close_connection = True
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The makefile() wrappers hold references: the socket closes only once they are closed too.
        self.wfile.close()
        self.rfile.close()
        self.connection.close()
        self.wfile = io.BytesIO()  # http.server flushes wfile after the handler returns

    def _common_fault(self, fault: str | None) -> bool:
        """Apply a fault both endpoints share; True if the request is finished."""
        if fault == "timeout":
            self.fake._wait(self.fake.timeout_sleep_s)
            return False  # then reply normally: to a client that waited long enough, it is just slow
        if fault == "reset":
            self._reset()
            return True
        if fault == "429":
            self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": "1"})
            return True
        if fault == "500":
            self._send(500, b"Internal Server Error", "text/plain")
            return True
        return False

    def _rest(self, query: str, body: bytes) -> None:
        fake = self.fake
        text = body.decode("utf-8", "replace")
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(text, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault, permanent = fake._pick_fault("rest", rest_item_key(params))
        key = fake.presented_key(params, headers)  # recorded even when refused: tests check what was sent
        try:
            key = fake._check_auth(params, headers, fake.base_url + self.path, text)
        except _FlickrError as e:
            fake._record(RequestRecord("rest", params, None, False, key))
            self._json({"stat": "fail", "code": e.code, "message": e.message}, params)
            return
        fake._record(RequestRecord("rest", params, fault, permanent, key))
        fake._wait(fake.latency_s)
        if self._common_fault(fault):
            return
        if fault == "api_unavailable":
            self._json({"stat": "fail", "code": 105, "message": "Service currently unavailable"}, params)
            return
        if fault == "api_error":
            self._json({"stat": "fail", "code": 18, "message": "Illogical arguments"}, params)
            return
        method = params.get("method", "")
        try:
            if params.get("format") != "json":
                raise _FlickrError(111, f'Format "{params.get("format", "")}" not found')
            if method != "flickr.photos.search":
                raise _FlickrError(112, f'Method "{method}" not found')
            reply = fake.search(params)
        except _FlickrError as e:
            reply = {"stat": "fail", "code": e.code, "message": e.message}
        if fault == "malformed_json":
            data = json.dumps(reply).encode()
            self._send(200, data[: max(1, len(data) // 2)], "application/json")
            return
        self._json(reply, params)

    def _json(self, reply: dict, params: dict[str, str]) -> None:
        data = json.dumps(reply)
        if params.get("nojsoncallback") != "1":
            data = f"jsonFlickrApi({data})"
        self._send(200, data.encode(), "application/json; charset=utf-8")

    def _image(self, photo_id: str) -> None:
        fake = self.fake
        fault, permanent = fake._pick_fault("img", photo_id)
        fake._record(RequestRecord("img", {"id": photo_id}, fault, permanent, None))
        fake._wait(fake.latency_s)
        if self._common_fault(fault):
            return
        if photo_id not in fake._by_id:
            self._send(404, b"Not Found", "text/plain")
            return
        data = fake.jpeg(photo_id)
        if fault == "truncated_image":
            cut = data[: len(data) // 2]
            if fake._next_truncation() % 2:
                # Promise the full length, deliver half, hang up: the client sees an incomplete read.
                self.close_connection = True
                self._send(200, cut, "image/jpeg", declared_length=len(data))
            else:
                # A self-consistent reply whose JPEG is cut off: only decoding can tell.
                self._send(200, cut, "image/jpeg")
            return
        self._send(200, data, "image/jpeg")
