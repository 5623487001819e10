"""Earth Engine sources (Sentinel-2, NAIP) against a fake ``ee`` layer, plus one pass through the real client.

The fake (tests/fakes/fake_ee.py) records every query and computePixels request
and serves synthetic pixels, so these tests check what the adapter asks Earth
Engine for (collection, filters, window, footprint, grid, bands) and what it
does with the replies (nearest-date choice, chip cloud check, nodata, retries,
redaction). ``test_real_ee_client_*`` run the same adapter through the real
earthengine-api with its offline test algorithm table, to catch API misuse the
fake would not notice.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fakes.fake_ee import FakeEE, FakeEEException, FakeFilter, FakeImage, ms
from pyproj import Transformer

from graft.credentials import CredentialError
from graft.geometry import tile_grid_around
from graft.sources.base import ChipRejected
from graft.sources.earthengine import (
    HIGH_VOLUME_URL,
    EarthEngineConfig,
    NaipConfig,
    NaipSource,
    Sentinel2Config,
    Sentinel2Source,
    classify_ee_error,
)
from graft.sources.retry import RetryConfig

S2 = "COPERNICUS/S2_SR_HARMONIZED"
PROB = "COPERNICUS/S2_CLOUD_PROBABILITY"
NAIP = "USDA/NAIP/DOQQ"
LAT, LON = 48.2082, 16.3738  # Vienna, UTM 33N
SIZE = 448
FAST_RETRY = RetryConfig(max_attempts=3, initial_s=0.001, max_backoff_s=0.002)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("EE_SERVICE_ACCOUNT_KEY_FILE", "EE_PROJECT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake() -> FakeEE:
    return FakeEE()


@pytest.fixture
def grid():
    return tile_grid_around(LAT, LON, SIZE, 10.0)


def ee_cfg(**kw) -> EarthEngineConfig:
    return EarthEngineConfig(**{"project": "test-project", "retry": FAST_RETRY, **kw})


def s2_source(fake: FakeEE, **kw) -> Sentinel2Source:
    return Sentinel2Source(Sentinel2Config(**kw), ee_cfg(), ee_module=fake)


def scl_with(cls: int, fraction: float) -> np.ndarray:
    """SCL band: vegetation (4) everywhere except the first rows, set to ``cls`` over ``fraction`` of the chip."""
    scl = np.full((SIZE, SIZE), 4, np.uint8)
    scl[: int(round(fraction * SIZE))] = cls
    return scl


def add_scene(fake: FakeEE, day: str, cloudy_pct: float = 0.2, tile: str = "T33UXP", scl=4,
              bands: dict | None = None, hour: int = 10) -> str:
    compact = day.replace("-", "")
    index = f"{compact}T{hour:02d}0031_{compact}T{hour:02d}0455_{tile}"
    fake.add_image(S2, index, ms(day, hour), properties={"CLOUDY_PIXEL_PERCENTAGE": cloudy_pct},
                   bands=bands or {"B4": 1200, "B3": 900, "B2": 600, "SCL": scl})
    return f"{S2}/{index}"


# --------------------------------------------------------------------------- Sentinel-2: the query


def test_s2_queries_collection_with_cloud_filter_window_and_footprint(fake, grid):
    add_scene(fake, "2021-06-10")
    s2_source(fake).fetch(grid, dt.date(2021, 6, 15))

    assert len(fake.getinfo_calls) == 1  # one round trip lists the candidates
    (query,) = fake.getinfo_calls[0].collections[:1]
    assert all(c == query for c in fake.getinfo_calls[0].collections)
    assert query["collection"] == S2
    assert query["filters"] == [FakeFilter("lt", "CLOUDY_PIXEL_PERCENTAGE", 1.0)]
    assert query["date_range"] == ("2021-05-01", "2021-07-31")  # +-45 days, end exclusive
    bounds = query["bounds"]
    assert bounds.proj == grid.crs and bounds.geodesic is False
    assert bounds.coords == pytest.approx(list(grid.bounds))


def test_s2_cloud_filter_follows_config(fake, grid):
    add_scene(fake, "2021-06-10", cloudy_pct=7.0)
    chip = s2_source(fake, max_cloud=10.0, window_days=5).fetch(grid, dt.date(2021, 6, 12))
    query = fake.getinfo_calls[0].collections[0]
    assert query["filters"] == [FakeFilter("lt", "CLOUDY_PIXEL_PERCENTAGE", 10.0)]
    assert query["date_range"] == ("2021-06-07", "2021-06-18")
    assert chip.meta["cloudy_pixel_percentage"] == 7.0


@pytest.mark.parametrize("requested, expected", [
    ("2021-06-15", "2021-06-19"),  # 4 days after beats 5 days before
    ("2021-06-12", "2021-06-10"),
    ("2021-05-01", "2021-05-20"),
    ("2021-08-30", "2021-07-20"),
])
def test_s2_picks_the_scene_nearest_in_time(fake, grid, requested, expected):
    ids = {d: add_scene(fake, d, tile=f"T33U{i}") for i, d in
           enumerate(["2021-05-20", "2021-06-10", "2021-06-19", "2021-07-20"])}
    add_scene(fake, "2021-06-15", cloudy_pct=30.0)  # the same day, but cloudy: filtered out server-side
    chip = s2_source(fake, window_days=120).fetch(grid, dt.date.fromisoformat(requested))

    (request,) = fake.compute_requests
    assert request["expression"].image_ids == [ids[expected]]
    assert chip.date == dt.date.fromisoformat(expected)
    assert chip.meta["image_ids"] == [ids[expected]]
    assert chip.meta["candidates"] == 4


def test_s2_compute_pixels_request_is_the_tile_grid(fake, grid):
    add_scene(fake, "2021-06-10")
    s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    (req,) = fake.compute_requests
    assert req["fileFormat"] == "NUMPY_NDARRAY"
    assert req["bandIds"] == ["B4", "B3", "B2", "SCL"]
    assert req["expression"].selected == ["B4", "B3", "B2", "SCL"]
    g = req["grid"]
    assert g["dimensions"] == {"width": SIZE, "height": SIZE}
    assert g["crsCode"] == grid.crs == "EPSG:32633"
    t = grid.transform
    assert g["affineTransform"] == {"scaleX": t.a, "shearX": t.b, "translateX": t.c,
                                    "shearY": t.d, "scaleY": t.e, "translateY": t.f}
    assert (g["affineTransform"]["scaleX"], g["affineTransform"]["scaleY"]) == (10.0, -10.0)
    # Independently of graft.geometry: the requested point lies in the middle of the requested grid.
    x, y = Transformer.from_crs("EPSG:4326", g["crsCode"], always_xy=True).transform(LON, LAT)
    col = (x - g["affineTransform"]["translateX"]) / g["affineTransform"]["scaleX"]
    row = (y - g["affineTransform"]["translateY"]) / g["affineTransform"]["scaleY"]
    assert abs(col - SIZE / 2) <= 1 and abs(row - SIZE / 2) <= 1


def test_s2_chip_holds_configured_bands_as_uint16_without_scl(fake, grid):
    ramp = (np.arange(SIZE, dtype=np.uint16)[None, :] + 1000) * np.ones((SIZE, 1), np.uint16)
    add_scene(fake, "2021-06-10", bands={"B4": ramp, "B3": 900, "B2": 600, "B8": 3000, "SCL": 4})
    chip = s2_source(fake, bands=["B8", "B4", "B3", "B2"]).fetch(grid, dt.date(2021, 6, 10))
    assert chip.array.dtype == np.uint16 and chip.array.shape == (4, SIZE, SIZE)
    assert chip.bands == ["B8", "B4", "B3", "B2"]
    assert (chip.array[0] == 3000).all() and (chip.array[2] == 900).all() and (chip.array[3] == 600).all()
    np.testing.assert_array_equal(chip.array[1], ramp)  # orientation kept: columns increase eastwards
    assert chip.grid == grid and chip.source == "sentinel2"
    assert chip.meta["chip_cloud_fraction"] == 0.0 and chip.meta["valid_fraction"] == 1.0


@pytest.mark.parametrize("cls", [3, 8, 9, 10])
def test_s2_cloudy_chip_is_rejected_per_scl_class(fake, grid, cls):
    add_scene(fake, "2021-06-10", scl=scl_with(cls, 0.10))
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == "cloudy_chip"


@pytest.mark.parametrize("cls, fraction", [(9, 0.03), (2, 0.5), (7, 0.5), (11, 0.5)])
def test_s2_chip_passes_below_threshold_or_with_non_cloud_classes(fake, grid, cls, fraction):
    add_scene(fake, "2021-06-10", scl=scl_with(cls, fraction))
    chip = s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    expected = fraction if cls == 9 else 0.0
    assert chip.meta["chip_cloud_fraction"] == pytest.approx(expected, abs=1 / SIZE)


def test_s2_falls_back_to_next_datatake_only_when_configured(fake, grid):
    add_scene(fake, "2021-06-10", scl=scl_with(9, 0.5))
    clean = add_scene(fake, "2021-06-14", tile="T33UXQ")
    with pytest.raises(ChipRejected, match="cloudy_chip"):
        s2_source(fake).fetch(grid, dt.date(2021, 6, 11))
    chip = s2_source(fake, max_images_tried=2).fetch(grid, dt.date(2021, 6, 11))
    assert chip.meta["image_ids"] == [clean] and chip.date == dt.date(2021, 6, 14)


def test_s2_nodata_chips_are_rejected(fake, grid):
    add_scene(fake, "2021-06-10", bands={"B4": 0, "B3": 0, "B2": 0, "SCL": 0})
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == "nodata"
    with pytest.raises(ChipRejected, match="nodata"):  # empty even when partial chips are allowed
        s2_source(fake, min_valid_fraction=0.0).fetch(grid, dt.date(2021, 6, 10))


def test_s2_partial_chip_obeys_min_valid_fraction(fake, grid):
    half = np.zeros((SIZE, SIZE), np.uint16)
    half[:, : SIZE // 2] = 800
    add_scene(fake, "2021-06-10", bands={"B4": half, "B3": half, "B2": half, "SCL": np.where(half > 0, 4, 0)})
    with pytest.raises(ChipRejected, match="nodata"):
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    chip = s2_source(fake, min_valid_fraction=0.4).fetch(grid, dt.date(2021, 6, 10))
    assert chip.meta["valid_fraction"] == pytest.approx(0.5)


def test_s2_mosaics_granules_of_the_same_datatake(fake, grid):
    west = np.zeros((SIZE, SIZE), np.uint16)
    west[:, : SIZE // 2] = 700
    east = np.where(west > 0, 0, 900).astype(np.uint16)
    a = add_scene(fake, "2021-06-10", tile="T33UWP", bands={"B4": west, "B3": west, "B2": west,
                                                              "SCL": np.where(west > 0, 4, 0)})
    b = add_scene(fake, "2021-06-10", tile="T33UXP", bands={"B4": east, "B3": east, "B2": east,
                                                              "SCL": np.where(east > 0, 5, 0)})
    add_scene(fake, "2021-06-20", tile="T33UXP")  # another datatake: not mixed in
    chip = s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert sorted(chip.meta["image_ids"]) == sorted([a, b])
    assert chip.meta["valid_fraction"] == 1.0
    assert (chip.array[0, :, : SIZE // 2] == 700).all() and (chip.array[0, :, SIZE // 2:] == 900).all()
    (req,) = fake.compute_requests
    assert sorted(req["expression"].image_ids) == sorted([a, b])


def test_s2_no_scene_in_window(fake, grid):
    add_scene(fake, "2021-01-10")
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == "no_image_in_window"
    assert fake.compute_requests == []


def test_s2_cloud_probability_alternative(fake, grid):
    idx = add_scene(fake, "2021-06-10").rsplit("/", 1)[1]
    prob = np.zeros((SIZE, SIZE), np.uint8)
    prob[: SIZE // 10] = 80
    fake.add_image(PROB, idx, ms("2021-06-10"), bands={"probability": prob}, dtypes={"probability": "uint8"})
    with pytest.raises(ChipRejected, match="cloudy_chip"):
        s2_source(fake, chip_cloud_band="probability").fetch(grid, dt.date(2021, 6, 10))
    (req,) = fake.compute_requests
    assert req["bandIds"] == ["B4", "B3", "B2", "probability"]
    assert req["expression"].image_ids == [f"{S2}/{idx}", f"{PROB}/{idx}"]
    chip = s2_source(fake, chip_cloud_band="probability", cloud_probability_threshold=90).fetch(
        grid, dt.date(2021, 6, 10))
    assert chip.meta["chip_cloud_fraction"] == 0.0


def test_s2_without_date_uses_default_date(fake, grid):
    add_scene(fake, "2019-03-02")
    chip = s2_source(fake, default_date=dt.date(2019, 3, 1)).fetch(grid, None)
    assert chip.date == dt.date(2019, 3, 2) and chip.meta["requested_date"] == "2019-03-01"


# --------------------------------------------------------------------------- retries and errors


def test_quota_errors_are_retried(fake, grid):
    add_scene(fake, "2021-06-10")
    fake.fail("getInfo", FakeEEException("Quota exceeded for quota metric 'Number of read requests'"))
    fake.fail("computePixels", FakeEEException("Too many concurrent aggregations."), times=2)
    chip = s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert chip.array.shape == (3, SIZE, SIZE)
    assert fake.attempts == {"getInfo": 2, "computePixels": 3}


def test_retries_stop_at_the_cap_with_a_fetch_failed_reason(fake, grid):
    add_scene(fake, "2021-06-10")
    fake.fail("computePixels", FakeEEException("Too many concurrent requests."), times=10)
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == "fetch_failed:quota"
    assert fake.attempts["computePixels"] == FAST_RETRY.max_attempts


def test_timeouts_and_server_errors_are_retried(fake, grid):
    add_scene(fake, "2021-06-10")
    fake.fail("computePixels", TimeoutError("read timed out"))
    fake.fail("computePixels", FakeEEException("The service is currently unavailable."))
    s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert fake.attempts["computePixels"] == 3


@pytest.mark.parametrize("message, reason", [
    ("Image.select: Pattern 'B99' did not match any bands.", "ee_missing_band"),
    ("Image.load: Image asset 'COPERNICUS/S2_SR_HARMONIZED/x' not found (does not exist or caller does not "
     "have access).", "ee_asset_not_found"),
    ("User memory limit exceeded.", "ee_memory_limit"),
    ("Total request size (60000000 bytes) must be less than or equal to 50331648 bytes.", "ee_request_too_large"),
    ("Something nobody has seen before.", "fetch_failed:ee_error"),
])
def test_permanent_ee_errors_are_not_retried(fake, grid, message, reason):
    add_scene(fake, "2021-06-10")
    fake.fail("computePixels", FakeEEException(message), times=5)
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == reason
    assert fake.attempts["computePixels"] == 1


def test_malformed_reply_is_retried_as_bad_reply(fake, grid):
    add_scene(fake, "2021-06-10", bands={"B4": 1, "B3": 1, "B2": 1, "SCL": 4})
    real = fake._compute_pixels
    fake._compute_pixels = lambda req: real(req)[:10]  # truncated
    with pytest.raises(ChipRejected) as e:
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))
    assert e.value.reason == "fetch_failed:bad_reply"
    assert len(fake.compute_requests) == FAST_RETRY.max_attempts


@pytest.mark.parametrize("exc, kind", [
    (FakeEEException("Too many concurrent aggregations."), "quota"),
    (FakeEEException("Quota exceeded for quota metric 'Number of read requests'"), "quota"),
    (FakeEEException("Computation timed out."), "timeout"),
    (FakeEEException("An internal error has occurred (request: 1234)."), "server"),
    (FakeEEException("<HttpError 503 when requesting ...>"), "server"),
    (FakeEEException("status: 429"), "quota"),
    (ConnectionResetError("connection reset by peer"), "network"),
    (TimeoutError(), "timeout"),
    (FakeEEException("User memory limit exceeded."), None),
    (FakeEEException("Image.load: Image asset 'x' not found."), None),
    (FakeEEException("Too many pixels in the region. Found 500 pixels"), None),
])
def test_error_classification(exc, kind):
    assert classify_ee_error(exc) == kind


def _ee_build(fake: FakeEE, tmp_path):
    """A small folder build whose chips come from the fake ``ee`` (Sentinel-2, 32-px tiles at 10 m)."""
    from helpers_build import build_config, make_world

    from graft.config import validate
    from graft.pipeline.build import BuildConfig, build_dataset

    day = dt.date(2021, 4, 1)
    while day < dt.date(2021, 9, 1):
        add_scene(fake, day.isoformat())
        day += dt.timedelta(days=7)
    world = make_world(tmp_path / "world", n_scattered=12, n_cluster=3)
    cfg = validate(BuildConfig, build_config(world, tmp_path / "ds", **{
        "satellite": {"kind": "sentinel2", "tile_size": 32, "gsd": 10.0}, "region.block_km": 10.0}))
    summary = build_dataset(cfg, satellite=s2_source(fake))
    return summary, fake.attempts["computePixels"]


def test_a_permanent_ee_error_drops_one_tile_with_its_reason_and_the_build_completes(fake, tmp_path):
    fake.fail("computePixels", FakeEEException("Image.select: Pattern 'B4' did not match any bands."))
    summary, calls = _ee_build(fake, tmp_path)
    s = summary.stats
    assert s["failures"] == [] and s["partitions"]["failed"] == 0
    assert s["tile_rejections"] == {"ee_missing_band": 1}
    assert s["rejections"]["counts"]["tile_ee_missing_band"] >= 1
    assert calls == s["tiles"] + 1  # one attempt per tile: the permanent error was not retried
    assert "tile_ee_missing_band" in summary.table()


def test_a_transient_ee_error_is_retried_in_a_build(fake, tmp_path):
    fake.fail("computePixels", FakeEEException("Too many concurrent aggregations."), times=2)
    summary, calls = _ee_build(fake, tmp_path)
    s = summary.stats
    assert s["failures"] == [] and s["tile_rejections"] == {}
    assert calls == s["tiles"] + 2 and s["tiles"] == s["counts"]["tiles_planned"]


def test_adapter_bugs_are_not_swallowed_as_rejections(fake, grid):
    add_scene(fake, "2021-06-10")
    fake.fail("computePixels", KeyError("bug"))
    with pytest.raises(KeyError):
        s2_source(fake).fetch(grid, dt.date(2021, 6, 10))


# --------------------------------------------------------------------------- credentials and initialisation


SECRET = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-a-real-key\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": "key-project",
                                "private_key_id": "0123456789abcdef0123", "private_key": SECRET,
                                "client_email": "graft@key-project.iam.gserviceaccount.com"}))
    path.chmod(0o600)
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(path))
    return path


def test_service_account_init_and_secrets_never_in_errors(fake, grid, key_file):
    add_scene(fake, "2021-06-10")
    # A server error that (hypothetically) echoes the key material back must not leak it.
    fake.fail("computePixels", FakeEEException(f"invalid grant for key {SECRET.strip()}"))
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(retry=FAST_RETRY), ee_module=fake)
    with pytest.raises(ChipRejected) as e:
        src.fetch(grid, dt.date(2021, 6, 10))
    assert "not-a-real-key" not in str(e.value) and "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in e.value.detail
    assert "***" in e.value.detail
    assert fake.credentials_calls == [("graft@key-project.iam.gserviceaccount.com", str(key_file))]
    (init,) = fake.initialize_calls
    assert init["project"] == "key-project" and init["credentials"][0] == "fake-credentials"
    assert init["opt_url"] is None


def test_init_failure_is_a_redacted_credential_error(fake, grid, key_file):
    fake.fail("Initialize", FakeEEException(f"could not parse {SECRET}"))
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(retry=FAST_RETRY), ee_module=fake)
    with pytest.raises(CredentialError) as e:
        src.fetch(grid, dt.date(2021, 6, 10))
    assert "not-a-real-key" not in str(e.value) and "graft doctor" in str(e.value)


def test_world_readable_key_warns(fake, grid, key_file):
    key_file.chmod(0o644)
    add_scene(fake, "2021-06-10")
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(retry=FAST_RETRY), ee_module=fake)
    with pytest.warns(UserWarning, match="chmod 600"):
        src.fetch(grid, dt.date(2021, 6, 10))


def test_bad_key_file_names_the_variable(fake, grid, tmp_path, monkeypatch):
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(tmp_path / "missing.json"))
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(), ee_module=fake)
    with pytest.raises(CredentialError, match="EE_SERVICE_ACCOUNT_KEY_FILE points to"):
        src.fetch(grid, dt.date(2021, 6, 10))
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "authorized_user", "private_key": "zzzz-secret-zzzz"}')
    bad.chmod(0o600)
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(bad))
    with pytest.raises(CredentialError) as e:
        src.fetch(grid, dt.date(2021, 6, 10))
    assert "not a service-account key" in str(e.value) and "zzzz-secret-zzzz" not in str(e.value)


def test_adc_without_project_says_how_to_fix(fake, grid):
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(), ee_module=fake)
    with pytest.raises(CredentialError, match="EE_PROJECT"):
        src.fetch(grid, dt.date(2021, 6, 10))
    assert fake.initialize_calls == []


def test_adc_project_from_env_and_high_volume_endpoint(fake, grid, monkeypatch):
    monkeypatch.setenv("EE_PROJECT", "env-project")
    add_scene(fake, "2021-06-10")
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(high_volume=True), ee_module=fake)
    src.fetch(grid, dt.date(2021, 6, 10))
    (init,) = fake.initialize_calls
    assert init == {"credentials": "persistent", "project": "env-project", "opt_url": HIGH_VOLUME_URL}


def test_initialises_lazily_once_across_threads(fake):
    for d in ("2021-06-10", "2021-06-20"):
        add_scene(fake, d)
    src = s2_source(fake)
    assert fake.calls == []  # nothing at construction
    grids = [tile_grid_around(LAT + 0.01 * i, LON, SIZE, 10.0) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        chips = list(pool.map(lambda g: src.fetch(g, dt.date(2021, 6, 18)), grids))
    assert len(fake.initialize_calls) == 1
    assert [c.grid for c in chips] == grids and all(c.date == dt.date(2021, 6, 20) for c in chips)


def test_in_flight_requests_are_bounded(fake, grid):
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow_band(_request):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)  # long enough that six threads always overlap
        with lock:
            state["now"] -= 1
        return 500

    add_scene(fake, "2021-06-10", bands={"B4": slow_band, "B3": 1, "B2": 1, "SCL": 4})
    src = Sentinel2Source(Sentinel2Config(), ee_cfg(max_in_flight=2), ee_module=fake)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: src.fetch(grid, dt.date(2021, 6, 10)), range(6)))
    assert state["peak"] == 2


def test_source_pickles_for_ray_and_reinitialises(fake, grid):
    import ee as real_ee

    src = Sentinel2Source(Sentinel2Config(), ee_cfg())
    src.session._ee = real_ee  # as after a first fetch
    src.session._initialized = True
    clone = pickle.loads(pickle.dumps(src))
    assert clone.session._ee is None and clone.session._initialized is False
    assert clone.cfg == src.cfg and clone.session.cfg == src.session.cfg


# --------------------------------------------------------------------------- NAIP


def naip_image(fake: FakeEE, day: str, name: str, footprint=None, value: int = 120):
    fake.add_image(NAIP, name, ms(day, 17), footprint=footprint,
                   bands={"R": value, "G": value + 1, "B": value + 2, "N": value + 3},
                   dtypes=dict.fromkeys("RGBN", "uint8"))
    return f"{NAIP}/{name}"


@pytest.fixture
def naip_grid():
    return tile_grid_around(38.9, -77.03, 448, 1.0)  # Washington DC, UTM 18N


def test_naip_uses_latest_year_mosaic(fake, naip_grid):
    west, east = (-77.2, 38.8, -77.03, 39.0), (-77.03, 38.8, -76.9, 39.0)
    naip_image(fake, "2018-07-01", "m_3807701_ne_18_060_20180701", west, 50)
    naip_image(fake, "2020-06-15", "m_3807701_ne_18_060_20200615", west, 60)
    a = naip_image(fake, "2022-08-02", "m_3807701_ne_18_060_20220802", west, 70)
    b = naip_image(fake, "2022-08-05", "m_3807702_nw_18_060_20220805", east, 80)
    naip_image(fake, "2023-07-01", "elsewhere_2023", (-100.0, 40.0, -99.0, 41.0), 90)  # newer, not here
    src = NaipSource(NaipConfig(), ee_cfg(), ee_module=fake)
    chip = src.fetch(naip_grid, dt.date(2015, 1, 1))  # the photo date does not matter under "latest"

    assert chip.meta["year"] == 2022 and chip.meta["years_available"] == [2018, 2020, 2022]
    assert chip.meta["image_ids"] == [a, b] and chip.date == dt.date(2022, 8, 5)
    assert chip.array.dtype == np.uint8 and chip.array.shape == (3, 448, 448) and chip.bands == ["R", "G", "B"]
    assert set(np.unique(chip.array[0])) <= {70, 80} and (chip.array[2] >= 72).all()
    (req,) = fake.compute_requests
    mosaic: FakeImage = req["expression"]
    assert req["bandIds"] == ["R", "G", "B"]
    assert req["grid"]["affineTransform"]["scaleX"] == 1.0 and req["grid"]["crsCode"] == "EPSG:32618"
    mosaic_of = dict(mosaic.ops)["mosaic"]
    assert mosaic_of["collection"] == NAIP and mosaic_of["date_range"] == ("2022-01-01", "2023-01-01")
    assert mosaic_of["bounds"].coords == pytest.approx(list(naip_grid.bounds))
    assert [s.label for s in mosaic.sources] == [a, b]
    assert all(s.resampling == "bilinear" for s in mosaic.sources)  # per image: mosaics cannot resample


def test_naip_nearest_year_policy_and_pinned_year(fake, naip_grid):
    for year in (2016, 2018, 2020):
        naip_image(fake, f"{year}-07-01", f"doqq_{year}")
    near = NaipSource(NaipConfig(year_policy="nearest", bands=["R", "G", "B", "N"]), ee_cfg(), ee_module=fake)
    assert near.fetch(naip_grid, dt.date(2019, 3, 1)).meta["year"] == 2020  # tie 2018/2020 -> later
    chip = near.fetch(naip_grid, dt.date(2016, 9, 1))
    assert chip.meta["year"] == 2016 and chip.array.shape[0] == 4 and (chip.array[3] == 123).all()
    pinned = NaipSource(NaipConfig(year=2018), ee_cfg(), ee_module=fake)
    assert pinned.fetch(naip_grid, None).meta["year"] == 2018
    with pytest.raises(ChipRejected, match="no_image_in_window"):
        NaipSource(NaipConfig(year=2019), ee_cfg(), ee_module=fake).fetch(naip_grid, None)


def test_naip_outside_coverage_and_nodata(fake, naip_grid):
    src = NaipSource(NaipConfig(), ee_cfg(), ee_module=fake)
    with pytest.raises(ChipRejected) as e:
        src.fetch(tile_grid_around(48.2, 16.37, 448, 1.0), None)
    assert e.value.reason == "outside_coverage"
    naip_image(fake, "2021-07-01", "empty", value=0)
    fake.catalog[NAIP][0].bands = dict.fromkeys("RGBN", 0)
    with pytest.raises(ChipRejected) as e:
        src.fetch(naip_grid, None)
    assert e.value.reason == "nodata"


# --------------------------------------------------------------------------- the real earthengine-api client


@pytest.fixture
def real_ee(monkeypatch):
    """The real ``ee`` module, initialised offline with its bundled algorithm table."""
    ee = pytest.importorskip("ee")
    from ee import apitestcase

    captured: dict[str, list] = {"values": [], "pixels": []}
    monkeypatch.setattr(ee.data, "_install_cloud_api_resource", lambda: None)
    monkeypatch.setattr(ee.data, "getAlgorithms", apitestcase.GetAlgorithms)
    monkeypatch.setattr(ee.data, "get_persistent_credentials", lambda: None)
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", lambda: {})
    ee.Reset()
    yield ee, captured, monkeypatch
    ee.Reset()


def test_real_ee_client_builds_and_serialises_the_sentinel2_requests(real_ee, grid):
    ee, captured, monkeypatch = real_ee
    day = ms("2021-06-12")

    def compute_value(obj):
        captured["values"].append(json.dumps(ee.serializer.encode(obj)))
        return [[day], ["20210612T100031_20210612T100455_T33UXP"], [0.3]]

    def compute_pixels(params):
        captured["pixels"].append({**params, "expression": json.dumps(ee.serializer.encode(params["expression"]))})
        out = np.zeros((SIZE, SIZE), dtype=[("B4", "<u2"), ("B3", "<u2"), ("B2", "<u2"), ("SCL", "u1")])
        out["B4"], out["B3"], out["B2"], out["SCL"] = 1000, 800, 600, 4
        return out

    monkeypatch.setattr(ee.data, "computeValue", compute_value)
    monkeypatch.setattr(ee.data, "computePixels", compute_pixels)
    src = Sentinel2Source(Sentinel2Config(), ee_cfg(high_volume=True), ee_module=ee)
    chip = src.fetch(grid, dt.date(2021, 6, 15))

    assert chip.date == dt.date(2021, 6, 12) and chip.array[:, 0, 0].tolist() == [1000, 800, 600]
    (listing,) = captured["values"]
    for needle in (S2, '"Filter.lessThan"', '"CLOUDY_PIXEL_PERCENTAGE"', '"GeometryConstructors.Rectangle"',
                   '"EPSG:32633"', '"2021-05-01"', '"2021-07-31"', '"system:time_start"', '"system:index"'):
        assert needle in listing, needle
    (pixels,) = captured["pixels"]
    assert f"{S2}/20210612T100031_20210612T100455_T33UXP" in pixels["expression"]
    assert pixels["bandIds"] == ["B4", "B3", "B2", "SCL"] and pixels["fileFormat"] == "NUMPY_NDARRAY"
    assert pixels["grid"]["affineTransform"]["translateX"] == grid.transform.c
    assert ee.data._get_state().cloud_api_base_url == HIGH_VOLUME_URL


def test_real_ee_client_builds_the_naip_mosaic(real_ee, naip_grid):
    ee, captured, monkeypatch = real_ee

    def compute_value(obj):
        captured["values"].append(json.dumps(ee.serializer.encode(obj)))
        return [[ms("2021-07-01"), ms("2019-07-01")], ["a_2021", "b_2019"]]

    def compute_pixels(params):
        captured["pixels"].append(json.dumps(ee.serializer.encode(params["expression"])))
        out = np.zeros((448, 448), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        out["R"] = 9
        out["G"] = out["B"] = 10
        return out

    monkeypatch.setattr(ee.data, "computeValue", compute_value)
    monkeypatch.setattr(ee.data, "computePixels", compute_pixels)
    chip = NaipSource(NaipConfig(), ee_cfg(), ee_module=ee).fetch(naip_grid, None)
    assert chip.meta["year"] == 2021 and chip.array.dtype == np.uint8
    (expr,) = captured["pixels"]
    for needle in ('"ImageCollection.mosaic"', '"Image.resample"', '"bilinear"', '"2021-01-01"', '"2022-01-01"',
                   NAIP):
        assert needle in expr, needle


def test_real_key_file_credentials_are_built_by_ee(real_ee, grid, key_file):
    """ee.ServiceAccountCredentials accepts the key path we pass (the key itself is syntactically fake)."""
    ee, _, _ = real_ee
    src = Sentinel2Source(Sentinel2Config(), EarthEngineConfig(), ee_module=ee)
    with pytest.raises(CredentialError) as e:  # the fake PEM cannot be parsed: a clean, redacted error
        src.session.ensure_initialized()
    assert "not-a-real-key" not in str(e.value)
    assert os.environ["EE_SERVICE_ACCOUNT_KEY_FILE"] == str(key_file)


# --------------------------------------------------------------------------- Sentinel-2: multispectral bands


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_s2_20m_and_60m_bands_are_requested_on_the_10m_chip_grid(fake, grid, resampling):
    bands = ["B4", "B3", "B2", "B8", "B5", "B8A", "B11", "B12", "B1"]
    add_scene(fake, "2021-06-10", bands={b: 100 * (i + 1) for i, b in enumerate(bands)} | {"SCL": 4})
    chip = s2_source(fake, bands=bands, resampling=resampling).fetch(grid, dt.date(2021, 6, 10))
    (req,) = fake.compute_requests
    t = grid.transform
    assert {k: v for k, v in req.items() if k != "expression"} == {
        "fileFormat": "NUMPY_NDARRAY",
        "bandIds": [*bands, "SCL"],
        "grid": {"dimensions": {"width": SIZE, "height": SIZE}, "crsCode": "EPSG:32633",
                 "affineTransform": {"scaleX": 10.0, "shearX": 0.0, "translateX": t.c,
                                     "shearY": 0.0, "scaleY": -10.0, "translateY": t.f}},
    }
    ops = req["expression"].ops
    if resampling == "nearest":  # Earth Engine's default: no resample call at all
        assert ops == (("select", (*bands, "SCL")),)
    else:  # reflectance resampled, the class map (SCL) not
        assert ops == (("select", tuple(bands)), ("resample", "bilinear"), ("addBands", req["expression"].label),
                       ("select", (*bands, "SCL")))
    assert chip.bands == bands and chip.array.dtype == np.uint16 and chip.array.shape == (len(bands), SIZE, SIZE)
    assert [int(chip.array[i, 0, 0]) for i in range(len(bands))] == [100 * (i + 1) for i in range(len(bands))]


def test_s2_band_list_is_checked(fake):
    with pytest.raises(ValueError, match="not Sentinel-2 MSI bands"):
        Sentinel2Config(bands=["B4", "B3", "B2", "NIR"])
    with pytest.raises(ValueError, match="has no band B10"):
        Sentinel2Config(bands=["B4", "B3", "B2", "B10"])
    assert Sentinel2Config(collection="COPERNICUS/S2_HARMONIZED", bands=["B4", "B3", "B2", "B10"]).bands[-1] == "B10"
