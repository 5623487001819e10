"""No secret reaches an output file or a log line, on the happy path or on failing requests.

Sentinel credentials are set the way a user sets them (``FLICKR_API_KEY``, the
secret through ``FLICKR_API_SECRET_FILE``, a service-account JSON key named by
``EE_SERVICE_ACCOUNT_KEY_FILE``, ``EE_PROJECT``), then real ``graft``
commands run:

- ``graft -v build`` in a subprocess: Flickr ground photos from the local fake
  Flickr (which checks the key and the OAuth signature) through an endpoint
  URL that carries the key (a mirror that wants it there), with resets, 5xx
  and broken JSON, some of them permanent, so request errors quoting the URL
  end up in the ledger and the logs;
- ``graft -v build`` in-process: folder photos and Sentinel-2 through the fake
  Earth Engine, whose failures quote the private key; the first run loses
  partitions to them, the second resumes;
- a Flickr build against a server that refuses the key, and ``graft doctor``
  with a good and a corrupt key file.

Then every file the commands wrote (recursively; parquet and tar members
decoded too) and all captured output must be free of every sentinel, while
the requests really carried them (the test would prove nothing otherwise).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from fakes.fake_ee import FakeEE, FakeEEException, ms
from fakes.flickr_server import FakeFlickr, FaultSpec, make_catalogue
from helpers_build import CLUSTER, build_config, make_world
from PIL import Image

import graft.sources.earthengine as earthengine
from graft.cli import main as graft_main
from graft.credentials import MASK
from graft.pipeline.build import resources

FLICKR_KEY = "sentinelFlickrKey5b7e1c9a"
FLICKR_SECRET = "sentinelFlickrSecret3f8d2a6b"
PEM_LINES = ["MIIEvAIBADANBgkqSENTINELpemLine1aa77", "hkiG9w0BAQEFAASCSENTINELpemLine2bb88"]
PRIVATE_KEY_ID = "sentinelKeyId0c4e9d21ab"
SECRETS = [FLICKR_KEY, FLICKR_SECRET, *PEM_LINES, PRIVATE_KEY_ID]
START, END = dt.date(2021, 1, 1), dt.date(2021, 12, 31)
FAST_RETRY = {"max_attempts": 3, "initial_s": 0.001, "max_backoff_s": 0.002}
S2 = "COPERNICUS/S2_SR_HARMONIZED"


@pytest.fixture(scope="module")
def creds(tmp_path_factory) -> dict[str, str]:
    """The environment of a user with every credential set (files chmod 600, as the docs ask)."""
    d = tmp_path_factory.mktemp("creds")
    secret_file = d / "flickr_secret"
    secret_file.write_text(FLICKR_SECRET + "\n")
    key_file = d / "ee-key.json"
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(PEM_LINES) + "\n-----END PRIVATE KEY-----\n"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "graft-sentinel-project", "private_key_id": PRIVATE_KEY_ID,
        "private_key": pem, "client_email": "builder@graft-sentinel-project.iam.gserviceaccount.com",
    }))
    for f in (secret_file, key_file):
        f.chmod(0o600)
    return {"FLICKR_API_KEY": FLICKR_KEY, "FLICKR_API_SECRET_FILE": str(secret_file),
            "EE_SERVICE_ACCOUNT_KEY_FILE": str(key_file), "EE_PROJECT": "graft-sentinel-project"}


@pytest.fixture
def env(creds, monkeypatch) -> dict[str, str]:
    for var in ("FLICKR_API_SECRET", "FLICKR_API_KEY_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    return creds


# ---------------------------------------------------------------- the grep


def _texts_of(path: Path) -> list[bytes]:
    """The file's bytes, plus decoded views of containers whose bytes could hide a string."""
    raw = path.read_bytes()
    out = [raw]
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        out.append(str(table.schema.metadata).encode() + str(table.to_pylist()).encode())
    elif path.suffix == ".tar":
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                out.append(m.name.encode())
                f = tar.extractfile(m)
                if f is not None:
                    out.append(f.read())
    elif path.suffix == ".png":
        with Image.open(path) as im:
            out.append(str(im.info).encode())
    return out


def assert_no_secret(roots: list[Path], logs: str) -> int:
    """No sentinel in any file under ``roots`` nor in ``logs``; returns how many files were read."""
    n = 0
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            n += 1
            for blob in _texts_of(path):
                for s in SECRETS:
                    assert s.encode() not in blob, f"{s} leaked into {path}"
    for s in SECRETS:
        at = logs.find(s)
        assert at < 0, f"{s} leaked into the output: ...{logs[max(0, at - 300):at + 60]}..."
    return n


def _world(root: Path):
    return make_world(root, n_scattered=24, n_cluster=6)


# ---------------------------------------------------------------- Flickr, through the CLI in a subprocess


def test_flickr_cli_build_with_failing_requests_leaks_no_secret(env, tmp_path):
    world = _world(tmp_path / "world")
    catalogue = make_catalogue(60, lat=CLUSTER[0], lon=CLUSTER[1], spread_km=2.5, start=START, end=END, seed=4)
    spec = FaultSpec(rate=0.3, kinds=("reset", "500", "malformed_json", "api_unavailable"), seed=9,
                     permanent_fraction=0.25, permanent_kind="reset")
    out, home, work = tmp_path / "out", tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    with FakeFlickr(catalogue, faults=spec, api_key=FLICKR_KEY, api_secret=FLICKR_SECRET) as fake:
        data = build_config(world, out, **{
            "ground": {"kind": "flickr", "n_points": 8, "seed": 2, "short_side": 64,
                       "flickr": {"rest_url": f"{fake.rest_url}?k={FLICKR_KEY}", "min_taken": str(START),
                                  "max_taken": str(END), "radius_km": 1.5, "per_page": 10,
                                  "queries_per_hour": 1e9, "timeout_s": 5.0, "retry": FAST_RETRY}},
        })
        config = tmp_path / "flickr.yaml"  # an input, written by the user: it may name the endpoint as they like
        config.write_text(yaml.safe_dump(data))
        sub_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLICKR_", "EE_", "GOOGLE_"))}
        sub_env.update(env, HOME=str(home), PYTHONUNBUFFERED="1")
        proc = subprocess.run([sys.executable, "-m", "graft.cli", "-v", "build", str(config)],
                              cwd=work, env=sub_env, capture_output=True, text=True, timeout=300)
        logs = proc.stdout + proc.stderr
        assert proc.returncode == 0, logs[-3000:]
        # The credentials were really used, in the signed requests and in the endpoint URL.
        rest = [r for r in fake.requests if r.endpoint == "rest"]
        assert rest and {r.api_key for r in rest} == {FLICKR_KEY} and all(r.params["k"] == FLICKR_KEY for r in rest)

    stats = json.loads((out / "stats.json").read_text())
    failed = {k: v for k, v in stats["rejections"]["counts"].items() if k.startswith(("query_failed", "download_failed"))}
    assert failed.get("query_failed:connection_error") and failed.get("download_failed:connection_error"), failed
    # urllib3 logs every request line at DEBUG, endpoint URL and key included: masked, not dropped.
    assert any("urllib3" in line and f"?k={MASK}" in line for line in logs.splitlines()), logs[-2000:]
    assert "oauthlib" in logs  # and oauthlib's debug lines (which quote the consumer key) were there to leak
    saved = yaml.safe_load((out / "build_config.yaml").read_text())
    assert saved["ground"]["flickr"]["rest_url"].endswith(f"?k={MASK}")
    assert pq.read_table(out / "manifest.parquet").num_rows > 0
    assert assert_no_secret([out, work, home], logs) > 10


# ---------------------------------------------------------------- Earth Engine, Flickr auth failure, doctor


class _Scl:
    def __call__(self, request: dict) -> np.ndarray:
        d = request["grid"]["dimensions"]
        return np.full((d["height"], d["width"]), 4, np.uint8)


@pytest.fixture
def fake_ee(monkeypatch) -> FakeEE:
    """The fake ``ee`` module, handed to the configured Sentinel-2 source as ``import ee`` would be."""
    fake = FakeEE()
    fake.add_image(S2, "20210525T101559_20210525T102043_T32TNR", ms("2021-05-25"),
                   properties={"CLOUDY_PIXEL_PERCENTAGE": 0.3},
                   bands={"B4": 1100, "B3": 900, "B2": 700, "SCL": _Scl()})
    monkeypatch.setattr(earthengine, "import_ee", lambda: fake)
    before = set(resources._CACHE)
    yield fake
    for k in set(resources._CACHE) - before:  # the cached source is bound to this fake: do not leak it to others
        resources._CACHE.pop(k, None)


def test_earth_engine_build_failing_flickr_and_doctor_leak_no_secret(env, fake_ee, tmp_path, capfd, caplog,
                                                                      monkeypatch):
    caplog.set_level("DEBUG")
    world = _world(tmp_path / "world")
    out = tmp_path / "s2"
    data = build_config(world, out, **{
        "satellite": {"kind": "sentinel2", "tile_size": 32, "gsd": 10.0,
                      "earthengine": {"retry": FAST_RETRY, "max_in_flight": 4}},
    })
    config = tmp_path / "s2.yaml"
    config.write_text(yaml.safe_dump(data))
    # A library that echoes the credential in its errors: first a transient one (retried), then two
    # permanent ones, which fail their partitions until the re-run.
    fake_ee.fail("computePixels", FakeEEException(f"Service unavailable (key {PRIVATE_KEY_ID})"))
    fake_ee.fail("computePixels", FakeEEException(f"invalid_grant: JWT signed by {PEM_LINES[0]} rejected"), 2)

    assert graft_main(["-v", "build", str(config)]) == 1  # partitions failed
    first = json.loads((out / "stats.json").read_text())
    assert first["failures"] and all(MASK in f["error"] for f in first["failures"])
    assert graft_main(["-v", "build", str(config)]) == 0  # resumed
    second = json.loads((out / "stats.json").read_text())
    assert second["failures"] == [] and second["photos"]["kept"] > 0
    assert fake_ee.credentials_calls and fake_ee.initialize_calls[0]["project"] == "graft-sentinel-project"

    # Flickr unreachable through an endpoint URL that carries the key: the connection errors quote it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # closed again at once: nothing listens there
    dead = build_config(world, tmp_path / "unreachable", **{
        "ground": {"kind": "flickr", "n_points": 3, "seed": 1, "short_side": 64,
                   "flickr": {"rest_url": f"http://127.0.0.1:{dead_port}/services/rest/?api_key={FLICKR_KEY}",
                              "min_taken": str(START), "max_taken": str(END),
                              "queries_per_hour": 1e9, "retry": FAST_RETRY}},
    })
    dead_config = tmp_path / "unreachable.yaml"
    dead_config.write_text(yaml.safe_dump(dead))
    # Failed queries are ledger entries; with every one failed the build kept nothing, an error (exit 2)
    # raised after stats.json is written.
    assert graft_main(["build", str(dead_config)]) == 2
    earlier = capfd.readouterr()  # kept for the leak check below
    assert "searches failed" in earlier.err
    unreachable = json.loads((tmp_path / "unreachable" / "stats.json").read_text())
    # Each of the 3 points is searched by its own partition and again by each neighbour block its
    # circle reaches (FlickrGround.plan): one failed query per search.
    searches = unreachable["counts"]
    assert searches["query_points"] == 3 and searches["neighbour_searches"] == searches["neighbour_searches_planned"]
    assert unreachable["rejections"]["counts"] == {
        "query_failed:connection_error": searches["query_points"] + searches["neighbour_searches"]}
    assert all(f"api_key={MASK}" in e["detail"] for e in unreachable["rejections"]["examples"])

    # Flickr refusing the key: every partition fails, with a message that names the variables only.
    with FakeFlickr(make_catalogue(10, lat=CLUSTER[0], lon=CLUSTER[1], spread_km=1.0, start=START, end=END),
                    api_key="another-key") as strict:
        bad = build_config(world, tmp_path / "refused", **{
            "ground": {"kind": "flickr", "n_points": 3, "seed": 1, "short_side": 64,
                       "flickr": {"rest_url": strict.rest_url, "min_taken": str(START), "max_taken": str(END),
                                  "queries_per_hour": 1e9, "retry": FAST_RETRY}},
        })
        bad_config = tmp_path / "refused.yaml"
        bad_config.write_text(yaml.safe_dump(bad))
        assert graft_main(["build", str(bad_config)]) == 1
        assert {r.api_key for r in strict.requests if r.endpoint == "rest"} == {FLICKR_KEY}
    refused = json.loads((tmp_path / "refused" / "stats.json").read_text())
    assert refused["failures"] and all("FLICKR_API_KEY" in f["error"] for f in refused["failures"])

    # graft doctor with the good key file, then with a corrupt one that holds key material.
    assert graft_main(["doctor", "--offline"]) == 0
    broken = tmp_path / "broken-key.json"
    broken.write_text(f'{{"private_key": "{PEM_LINES[1]}", oops')
    broken.chmod(0o600)
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(broken))
    assert graft_main(["doctor", "--offline"]) == 1

    captured = capfd.readouterr()
    logs = earlier.out + earlier.err + captured.out + captured.err + caplog.text
    logs += "".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "not readable JSON" in logs and "builder@graft-sentinel-project" in logs  # doctor said what it saw
    assert any(r.levelname == "ERROR" and "partition" in r.getMessage() for r in caplog.records)
    assert assert_no_secret([out, tmp_path / "unreachable", tmp_path / "refused"], logs) > 10


def test_the_grep_would_notice_a_leak(tmp_path):
    """The checker itself: a secret inside a parquet file, a tar member or a log line is found."""
    import pyarrow as pa

    pq.write_table(pa.table({"x": [f"a{FLICKR_SECRET}b" * 50]}), tmp_path / "t.parquet")  # compressed pages
    with pytest.raises(AssertionError, match="leaked into"):
        assert_no_secret([tmp_path], "")
    (tmp_path / "t.parquet").unlink()
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        blob = f"{{'k': '{PEM_LINES[0]}'}}".encode()
        info = tarfile.TarInfo("x.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(AssertionError, match="leaked into"):
        assert_no_secret([tmp_path], "")
    (tmp_path / "s.tar").unlink()
    with pytest.raises(AssertionError, match="leaked into the output"):
        assert_no_secret([tmp_path], f"INFO something {PRIVATE_KEY_ID}")
