"""``graft doctor``: credential, package and config checks offline; reachability through injected fakes."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from fakes.fake_ee import FakeEE, FakeEEException

from graft import doctor
from graft.cli import main

FLICKR_KEY = "fk-0123456789abcdef"
FLICKR_SECRET = "fs-fedcba9876543210"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCdoctor-test-key"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real credentials leak in from the machine; only light packages are import-checked."""
    for var in ("FLICKR_API_KEY", "FLICKR_API_KEY_FILE", "FLICKR_API_SECRET", "FLICKR_API_SECRET_FILE",
                "EE_SERVICE_ACCOUNT_KEY_FILE", "EE_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(doctor, "CORE_PACKAGES", [("numpy", "numpy", "everything"), ("yaml", "pyyaml", "configs")])
    return home


def rows_by_name(rows):
    return {r.name: r for r in rows}


def write_key(path, mode=0o600):
    path.write_text(json.dumps({"type": "service_account", "project_id": "sa-project",
                                "private_key_id": "abcdef0123456789abcd",
                                "private_key": f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n",
                                "client_email": "builder@sa-project.iam.gserviceaccount.com"}))
    path.chmod(mode)
    return path


def set_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("FLICKR_API_KEY", FLICKR_KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", FLICKR_SECRET)
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(write_key(tmp_path / "sa.json")))


def write_config(tmp_path, data) -> str:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_nothing_set_offline_names_every_fix(capsys):
    code = main(["doctor", "--offline"])
    out = capsys.readouterr().out
    assert code == 1
    for needle in ("FLICKR_API_KEY", "FLICKR_API_SECRET_FILE", "EE_SERVICE_ACCOUNT_KEY_FILE",
                   "earthengine authenticate", "EE_PROJECT", "How to fix", "block a live build"):
        assert needle in out, needle
    rows = rows_by_name(doctor.run_doctor(offline=True))
    assert rows["flickr api key"].status == "MISSING" and rows["earthengine credentials"].status == "MISSING"
    assert rows["earthengine reachable"].status == "skip" and rows["package numpy"].status == "ok"


def test_everything_present_offline_passes_and_prints_no_secret(monkeypatch, tmp_path, capsys):
    set_everything(monkeypatch, tmp_path)
    code = main(["doctor", "--offline"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "builder@sa-project.iam.gserviceaccount.com" in out and "sa-project" in out
    for secret in (FLICKR_KEY, FLICKR_SECRET, PEM_BODY, "abcdef0123456789abcd"):
        assert secret not in out
    assert "everything needed for every source is present (offline" in out


def test_secrets_from_files_and_world_readable_warning(monkeypatch, tmp_path):
    key_file, secret_file = tmp_path / "flickr_key", tmp_path / "flickr_secret"
    key_file.write_text(FLICKR_KEY + "\n")
    key_file.chmod(0o600)
    secret_file.write_text(FLICKR_SECRET)
    secret_file.chmod(0o644)
    monkeypatch.setenv("FLICKR_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("FLICKR_API_SECRET_FILE", str(secret_file))
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(write_key(tmp_path / "sa.json", 0o644)))
    rows = rows_by_name(doctor.run_doctor(offline=True))
    assert rows["flickr api key"].status == "ok" and "file in $FLICKR_API_KEY_FILE" in rows["flickr api key"].detail
    assert rows["flickr api secret"].status == "WARN" and "chmod 600" in rows["flickr api secret"].fix
    assert rows["earthengine credentials"].status == "WARN"
    assert not any(r.blocking for r in rows.values())
    table = doctor.format_table(list(rows.values()))
    assert FLICKR_SECRET not in table and FLICKR_KEY not in table


def test_missing_secret_file_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("FLICKR_API_KEY_FILE", str(tmp_path / "nope"))
    monkeypatch.setenv("EE_SERVICE_ACCOUNT_KEY_FILE", str(tmp_path / "nope.json"))
    rows = rows_by_name(doctor.run_doctor(offline=True))
    assert rows["flickr api key"].status == "MISSING" and "does not exist" in rows["flickr api key"].detail
    assert rows["earthengine credentials"].status == "MISSING"
    assert "nope.json" in rows["earthengine credentials"].detail


def test_application_default_credentials_and_project(monkeypatch, _isolated):
    ee_creds = _isolated / ".config" / "earthengine" / "credentials"
    ee_creds.parent.mkdir(parents=True)
    ee_creds.write_text("{}")
    rows = rows_by_name(doctor.run_doctor(offline=True))
    assert rows["earthengine credentials"].status == "ok" and str(ee_creds) in rows["earthengine credentials"].detail
    assert rows["earthengine project"].status == "MISSING" and "EE_PROJECT" in rows["earthengine project"].fix
    monkeypatch.setenv("EE_PROJECT", "my-ee-project")
    rows = rows_by_name(doctor.run_doctor(offline=True))
    assert rows["earthengine project"].status == "ok" and "$EE_PROJECT" in rows["earthengine project"].detail


def test_config_limits_checks_to_the_sources_it_uses(monkeypatch, tmp_path):
    tifs = tmp_path / "tiles"
    tifs.mkdir()
    (tifs / "a.tif").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    cfg = write_config(tmp_path, {"out_dir": str(tmp_path / "out"), "region": {"bbox": [0.0, 0.0, 1.0, 1.0]},
                                  "ground": {"kind": "folder", "folder": {"root": str(tmp_path / "photos")}},
                                  "filter": {"kind": "none"},
                                  "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(tifs / "*.tif")],
                                                                              "gsd": 10, "size": 64}}})
    rows = rows_by_name(doctor.run_doctor(config=cfg, offline=True))
    assert not any(n.startswith(("flickr", "earthengine")) for n in rows)
    assert rows["geotiff files"].status == "ok" and "package ee" not in rows
    assert rows["config valid"].status == "ok"
    assert main(["doctor", "--offline", "--config", cfg]) == 0

    cfg = write_config(tmp_path, {"ground": {"kind": "folder"},
                                  "satellite": {"kind": "geotiff", "geotiff": {"paths": [str(tmp_path / "x*.tif")]}}})
    assert rows_by_name(doctor.run_doctor(config=cfg, offline=True))["geotiff files"].status == "MISSING"
    assert main(["doctor", "--offline", "--config", cfg]) == 1


def test_config_with_earth_engine_only(monkeypatch, tmp_path):
    monkeypatch.setenv("EE_PROJECT", "env-project")
    cfg = write_config(tmp_path, {"ground": {"kind": "folder"},
                                  "satellite": {"kind": "sentinel2",
                                                "earthengine": {"project": "cfg-project", "high_volume": True}}})
    rows = rows_by_name(doctor.run_doctor(config=cfg, offline=True))
    assert "flickr api key" not in rows and "package ee" in rows and "package flickrapi" not in rows
    assert rows["earthengine project"].detail == "cfg-project (from config)"
    assert rows["earthengine endpoint"].detail == "high-volume"
    assert rows["earthengine credentials"].status == "MISSING"  # no key, no ADC file under the fake HOME


def test_bad_config_kinds_fail(tmp_path):
    cfg = write_config(tmp_path, {"ground": {"kind": "instagram"}, "satellite": {"kind": "naip"}})
    rows = rows_by_name(doctor.run_doctor(config=cfg, offline=True))
    assert rows["config ground.kind"].status == "FAIL" and "flickr" in rows["config ground.kind"].fix
    assert main(["doctor", "--offline", "--config", str(tmp_path / "missing.yaml")]) == 1


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(doctor, "CORE_PACKAGES", [("graft_no_such_module", "graft-no-such-dist", "testing")])
    rows = rows_by_name(doctor.run_doctor(offline=True))
    row = rows["package graft_no_such_module"]
    assert row.status == "MISSING" and row.fix == "pip install graft-no-such-dist" and row.blocking


class FakeFlickr:
    def __init__(self, reply=None, delay: float = 0.0):
        self.reply = reply if reply is not None else {"stat": "ok"}
        self.delay = delay
        self.test = self

    def echo(self):
        time.sleep(self.delay)
        return self.reply


def test_online_checks_pass_through_the_services(monkeypatch, tmp_path):
    set_everything(monkeypatch, tmp_path)
    fake = FakeEE()
    seen = {}

    def factory(key, secret, timeout):
        seen.update(key=key, secret=secret, timeout=timeout)
        return FakeFlickr()

    rows = rows_by_name(doctor.run_doctor(offline=False, timeout_s=5, ee_module=fake, flickr_factory=factory))
    assert rows["earthengine reachable"].status == "ok" and rows["flickr reachable"].status == "ok"
    assert seen == {"key": FLICKR_KEY, "secret": FLICKR_SECRET, "timeout": 5}
    (init,) = fake.initialize_calls
    assert init["project"] == "sa-project" and init["credentials"][0] == "fake-credentials"
    assert not any(r.blocking for r in rows.values())


def test_online_failures_are_reported_redacted(monkeypatch, tmp_path):
    set_everything(monkeypatch, tmp_path)
    fake = FakeEE()
    fake.fail("Initialize", FakeEEException(f"Permission denied for key {PEM_BODY}"))
    rows = rows_by_name(doctor.run_doctor(offline=False, timeout_s=5, ee_module=fake,
                                          flickr_factory=lambda *a: FakeFlickr({"stat": "fail", "code": 100})))
    ee_row, fl_row = rows["earthengine reachable"], rows["flickr reachable"]
    assert ee_row.status == "FAIL" and "Permission denied" in ee_row.detail and PEM_BODY not in ee_row.detail
    assert fl_row.status == "FAIL" and "stat='fail'" in fl_row.detail


def test_online_timeout(monkeypatch, tmp_path):
    set_everything(monkeypatch, tmp_path)
    started = time.monotonic()
    rows = rows_by_name(doctor.run_doctor(offline=False, timeout_s=0.2, ee_module=FakeEE(),
                                          flickr_factory=lambda *a: FakeFlickr(delay=2.0)))
    assert time.monotonic() - started < 1.5
    assert rows["flickr reachable"].status == "FAIL" and "no answer within 0.2 s" in rows["flickr reachable"].detail


def test_ambient_credentials_that_work_are_not_blocking(monkeypatch):
    monkeypatch.setenv("EE_PROJECT", "vm-project")
    monkeypatch.setenv("FLICKR_API_KEY", FLICKR_KEY)
    monkeypatch.setenv("FLICKR_API_SECRET", FLICKR_SECRET)
    rows = rows_by_name(doctor.run_doctor(offline=False, timeout_s=5, ee_module=FakeEE(),
                                          flickr_factory=lambda *a: FakeFlickr()))
    creds = rows["earthengine credentials"]
    assert creds.status == "WARN" and not creds.blocking and rows["earthengine reachable"].status == "ok"
