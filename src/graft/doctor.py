"""``graft doctor``: say exactly which credential, package or service a live build is missing.

A dataset build that fails on its first Earth Engine or Flickr call, hours into
a queue, is the costliest way to learn that a key is missing. The doctor checks
up front, prints one table row per check with what is missing and the command
or variable that fixes it, and exits 0 only when everything the build needs is
present. It never prints a secret: only variable names, file paths and
non-secret identifiers (service-account e-mail, project id).

With ``--config`` the whole config is validated first (a misspelt key is a
failure), every weights file it needs (indoor filter, CLIP towers) is looked
for on disk and in the download caches without downloading, and only the
sources that dataset uses are checked (its ``ground.kind`` and ``satellite.kind``); without it every source is checked
and required. Unless ``--offline``, it also calls each service once with a
short timeout (``ee.Initialize`` plus a trivial ``getInfo``; ``flickr.test.echo``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from graft.config import ConfigError, load_yaml, validate
from graft.credentials import CredentialError, read_secret, redact
from graft.sources.earthengine import (
    PROJECT_ENV,
    EarthEngineConfig,
    import_ee,
    initialize_earth_engine,
    read_service_account_key,
    resolve_project,
)

# Where the Flickr source reads its credentials (value, or a file holding it).
FLICKR_KEY_ENV, FLICKR_KEY_FILE_ENV = "FLICKR_API_KEY", "FLICKR_API_KEY_FILE"
FLICKR_SECRET_ENV, FLICKR_SECRET_FILE_ENV = "FLICKR_API_SECRET", "FLICKR_API_SECRET_FILE"

GROUND_SERVICES = {"flickr": "flickr", "folder": None}
SATELLITE_SERVICES = {"sentinel2": "earthengine", "naip": "earthengine", "geotiff": "geotiff"}

# (import name, pip distribution, what needs it). Checked by a real import, since a
# package can be installed yet fail to load (binary mismatch, missing system library).
CORE_PACKAGES = [
    ("numpy", "numpy", "everything"),
    ("yaml", "pyyaml", "configs"),
    ("pydantic", "pydantic", "configs"),
    ("tenacity", "tenacity", "retries"),
    ("pyproj", "pyproj", "tile geometry"),
    ("shapely", "shapely", "tile geometry"),
    ("rasterio", "rasterio", "GeoTIFF tiles"),
    ("PIL", "pillow", "photos"),
    ("pyarrow", "pyarrow", "manifest.parquet"),
    ("webdataset", "webdataset", "shards"),
    ("torch", "torch", "indoor filter and embeddings"),
    ("open_clip", "open_clip_torch", "CLIP towers"),
]
SERVICE_PACKAGES = {
    "earthengine": [("ee", "earthengine-api", "Earth Engine sources")],
    "flickr": [("flickrapi", "flickrapi", "Flickr source")],
    "geotiff": [],
}

OK, WARN, MISSING, FAIL, SKIP = "ok", "WARN", "MISSING", "FAIL", "skip"


@dataclass
class Check:
    """One row of the doctor's table. ``fix`` says what to do when the status is not ok."""

    name: str
    status: str
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def blocking(self) -> bool:
        return self.required and self.status in (MISSING, FAIL)


# --------------------------------------------------------------------------- what the config needs


def services_needed(config_path: str | None) -> tuple[set[str], list[Check], dict[str, Any]]:
    """The services a dataset config uses, rows about the config itself, and its raw YAML.

    Without a config (or one without ``ground``/``satellite`` kinds) every service is needed.
    """
    every = {"flickr", "earthengine", "geotiff"}
    if not config_path:
        return every, [], {}
    rows: list[Check] = []
    try:
        data = load_yaml(config_path)
    except ConfigError as e:
        return every, [Check("config", FAIL, str(e), f"fix or remove --config {config_path}")], {}
    needed: set[str] = set()
    found_any = False
    for section, table in (("ground", GROUND_SERVICES), ("satellite", SATELLITE_SERVICES)):
        node = data.get(section)
        kind = node.get("kind") if isinstance(node, dict) else None
        if kind is None:
            continue
        found_any = True
        if kind not in table:
            rows.append(Check(f"config {section}.kind", FAIL, f"unknown {section}.kind {kind!r} in {config_path}",
                              f"use one of {sorted(table)}"))
            continue
        if table[kind]:
            needed.add(table[kind])
        rows.append(Check(f"config {section}.kind", OK, f"{kind} ({config_path})", required=False))
    if not found_any:
        rows.append(Check("config", WARN, f"{config_path} names no ground.kind/satellite.kind; checking every "
                          "source", required=False))
        return every, rows, data
    return needed, rows, data


def _earthengine_config(data: dict[str, Any]) -> tuple[EarthEngineConfig, list[Check]]:
    """The ``earthengine`` section of the dataset config (``satellite.earthengine`` or top level), if any."""
    sat = data.get("satellite") if isinstance(data.get("satellite"), dict) else {}
    section = sat.get("earthengine", data.get("earthengine"))
    if not isinstance(section, dict):
        return EarthEngineConfig(), []
    try:
        return validate(EarthEngineConfig, section, "earthengine section"), []
    except ConfigError as e:
        return EarthEngineConfig(), [Check("config earthengine", FAIL, str(e), "fix the earthengine section")]


def check_config(config_path: str) -> tuple[list[Check], Any]:
    """Validate the whole config, as the command that runs it would: every key, type and value.

    A YAML with ``run_dir`` is a training config (``graft train``); any other a dataset config
    (``graft build``). Returns the rows and the validated config (None if invalid).
    """
    try:
        data = load_yaml(config_path)
        if "run_dir" in data:
            from graft.training.config import TrainConfig

            cfg: Any = validate(TrainConfig, data, source=config_path)
        else:
            from graft.pipeline.build import BuildConfig

            cfg = validate(BuildConfig, data, source=config_path)
    except ConfigError as e:
        return [Check("config valid", FAIL, str(e).replace("\n", " "), f"fix {config_path}")], None
    return [Check("config valid", OK, f"{config_path} ({type(cfg).__name__})")], cfg


def check_weights(cfg: Any) -> list[Check]:
    """Whether every weights file the config needs is on this machine: indoor filter, CLIP towers.

    Nothing is downloaded: a URL counts as present when its file is in the download cache.
    """
    from graft.models.clip_tower import cached_weights

    rows = []
    specs = []
    filt = getattr(cfg, "filter", None)
    if filt is not None and filt.kind.startswith("resnet18"):
        from graft.pipeline.indoor import cached_filter_weights

        present, detail = cached_filter_weights(filt)
        rows.append(Check("filter weights", OK if present else MISSING, detail,
                          "download the weights where there is network and set filter.weights to the file, "
                          "or use filter.kind: clip / none"))
    elif filt is not None and filt.kind == "clip":
        specs.append(("filter.clip", filt.clip))
    if getattr(cfg, "clip", None) is not None:
        specs.append(("clip", cfg.clip))
    for name, spec in specs:
        present, detail = cached_weights(spec)
        rows.append(Check(f"{name} weights", OK if present else MISSING, detail,
                          f"fetch {spec.model} ({spec.pretrained}) once where there is network (it is cached), or "
                          f"set {name}.pretrained to a local file / {name}.model to local-dir:DIR"))
    return rows


# --------------------------------------------------------------------------- individual checks


def check_geotiff_paths(data: dict[str, Any]) -> list[Check]:
    """Whether the config's GeoTIFF paths (``satellite.geotiff.paths`` or ``satellite.paths``) match files."""
    from graft.sources.geotiff import expand_paths

    sat = data.get("satellite") if isinstance(data.get("satellite"), dict) else {}
    section = sat.get("geotiff") if isinstance(sat.get("geotiff"), dict) else sat
    paths = section.get("paths")
    if not paths:
        return [Check("geotiff files", SKIP, "no satellite paths in the config to check", required=False)]
    paths = [paths] if isinstance(paths, str) else [str(p) for p in paths]
    files = expand_paths(paths)
    if not files:
        return [Check("geotiff files", MISSING, f"no file matches {paths}",
                      "fix satellite paths (files, folders or globs; ** recurses)")]
    return [Check("geotiff files", OK, f"{len(files)} file(s) match {paths} (CRS and dtype are checked at build "
                  "start)")]


def _read_secret_check(name: str, env: str, file_env: str) -> tuple[Check, str | None]:
    """Check a secret from ``$env`` or the file in ``$file_env``; return the row and the value (not printed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = read_secret(env, file_env, required=False)
        except CredentialError as e:
            return Check(name, MISSING, str(e), f"set {env}, or {file_env} to an existing file"), None
    if not value:
        return Check(name, MISSING, f"neither {env} nor {file_env} is set",
                     f"export {env}=... or put it in a file (chmod 600) and export {file_env}=/path"), None
    where = f"from ${env}" if os.environ.get(env) else f"from the file in ${file_env}"
    if caught:
        return Check(name, WARN, f"set ({where}); {caught[0].message}", f"chmod 600 {os.environ.get(file_env)}",
                     required=False), value
    return Check(name, OK, f"set ({where})"), value


def check_flickr_credentials() -> tuple[list[Check], tuple[str, str] | None]:
    key_row, key = _read_secret_check("flickr api key", FLICKR_KEY_ENV, FLICKR_KEY_FILE_ENV)
    secret_row, secret = _read_secret_check("flickr api secret", FLICKR_SECRET_ENV, FLICKR_SECRET_FILE_ENV)
    creds = (key, secret) if key and secret else None
    return [key_row, secret_row], creds


def adc_files() -> list[Path]:
    """Credential files ``ee.Initialize`` would pick up without a service-account key, that exist."""
    candidates = [Path("~/.config/earthengine/credentials").expanduser()]
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        candidates.append(Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]).expanduser())
    gcloud = os.environ.get("CLOUDSDK_CONFIG") or (
        str(Path(os.environ["APPDATA"]) / "gcloud") if os.name == "nt" and os.environ.get("APPDATA")
        else "~/.config/gcloud")
    candidates.append(Path(gcloud).expanduser() / "application_default_credentials.json")
    return [p for p in candidates if p.is_file()]


def check_earthengine_credentials(cfg: EarthEngineConfig) -> tuple[list[Check], bool]:
    """Rows for the EE credential and project; the bool says whether initialising can be attempted."""
    rows: list[Check] = []
    key_fix = (f"export {cfg.key_file_env}=/path/to/service-account.json (chmod 600), or run "
               "'earthengine authenticate' (or 'gcloud auth application-default login')")
    key = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            key = read_service_account_key(cfg)
        except CredentialError as e:
            rows.append(Check("earthengine credentials", MISSING, str(e), key_fix))
            return rows, False
    if key is not None:
        detail = f"service account {cfg.service_account or key.client_email} (key file from ${cfg.key_file_env})"
        if caught:
            rows.append(Check("earthengine credentials", WARN, f"{detail}; {caught[0].message}",
                              f"chmod 600 {key.path}", required=False))
        else:
            rows.append(Check("earthengine credentials", OK, detail))
    else:
        files = adc_files()
        if files:
            rows.append(Check("earthengine credentials", OK,
                              f"application-default credentials ({', '.join(map(str, files))}); "
                              f"${cfg.key_file_env} not set"))
        else:
            rows.append(Check("earthengine credentials", MISSING,
                              f"${cfg.key_file_env} is not set and no application-default credentials file "
                              "was found (on a Google Cloud VM the metadata server may still work: run "
                              "without --offline to find out)", key_fix))
    project = resolve_project(cfg, key)
    if project:
        origin = ("config" if cfg.project else f"${PROJECT_ENV}" if os.environ.get(PROJECT_ENV)
                  else "service-account key")
        rows.append(Check("earthengine project", OK, f"{project} (from {origin})"))
    else:
        rows.append(Check("earthengine project", MISSING, "no Cloud project for Earth Engine calls",
                          f"export {PROJECT_ENV}=<project-id> (a project registered for Earth Engine at "
                          "https://code.earthengine.google.com/register)"))
    endpoint = "high-volume" if cfg.high_volume else "standard (set earthengine.high_volume: true for builds)"
    rows.append(Check("earthengine endpoint", OK, endpoint, required=False))
    return rows, project is not None


def check_packages(services: set[str]) -> list[Check]:
    rows = []
    wanted = list(CORE_PACKAGES) + [p for s in sorted(services) for p in SERVICE_PACKAGES.get(s, [])]
    for module, dist, purpose in wanted:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
            rows.append(Check(f"package {module}", MISSING, f"needed for {purpose}: {type(e).__name__}: {e}",
                              f"pip install {dist}"))
            continue
        version = getattr(mod, "__version__", "")
        if not version:
            with contextlib.suppress(metadata.PackageNotFoundError):
                version = metadata.version(dist)
        rows.append(Check(f"package {module}", OK, f"{version} ({purpose})".strip()))
    return rows


def _with_timeout(fn: Callable[[], str], timeout_s: float) -> tuple[bool, str]:
    """Run ``fn`` in a daemon thread; (True, its message) or (False, why it failed or timed out)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["ok"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported, never raised
            result["err"] = f"{type(e).__name__}: {e}"

    t = threading.Thread(target=target, daemon=True, name="graft-doctor-probe")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return False, f"no answer within {timeout_s:g} s (network, proxy or firewall?)"
    if "err" in result:
        return False, redact(result["err"])
    return True, redact(str(result["ok"]))


def probe_earthengine(cfg: EarthEngineConfig, timeout_s: float, ee_module: Any | None = None) -> Check:
    def run() -> str:
        ee = ee_module if ee_module is not None else import_ee()
        set_deadline = getattr(getattr(ee, "data", None), "setDeadline", None)
        if set_deadline is not None:
            set_deadline(int(timeout_s * 1000))
        how = initialize_earth_engine(cfg, ee)
        value = ee.Number(1).getInfo()
        if value != 1:
            raise RuntimeError(f"trivial getInfo returned {value!r}, expected 1")
        return f"initialised ({how}) and answered a getInfo"

    ok, msg = _with_timeout(run, timeout_s)
    if ok:
        return Check("earthengine reachable", OK, msg)
    return Check("earthengine reachable", FAIL, msg,
                 "check the credentials and project above, that the project is registered for Earth Engine, "
                 "and network access to earthengine.googleapis.com")


def probe_flickr(creds: tuple[str, str], timeout_s: float,
                 flickr_factory: Callable[[str, str, float], Any] | None = None) -> Check:
    def default_factory(key: str, secret: str, timeout: float) -> Any:
        import flickrapi

        return flickrapi.FlickrAPI(key, secret, format="parsed-json", store_token=False, timeout=timeout)

    def run() -> str:
        api = (flickr_factory or default_factory)(creds[0], creds[1], timeout_s)
        reply = api.test.echo()
        stat = reply.get("stat") if isinstance(reply, dict) else None
        if stat != "ok":
            raise RuntimeError(f"flickr.test.echo answered stat={stat!r}")
        return "flickr.test.echo answered ok"

    ok, msg = _with_timeout(run, timeout_s)
    if ok:
        return Check("flickr reachable", OK, msg)
    return Check("flickr reachable", FAIL, msg,
                 "check the API key and secret (https://www.flickr.com/services/apps/) and network access to "
                 "api.flickr.com")


# --------------------------------------------------------------------------- the command


def run_doctor(config: str | None = None, offline: bool = False, timeout_s: float = 10.0,
               ee_module: Any | None = None,
               flickr_factory: Callable[[str, str, float], Any] | None = None) -> list[Check]:
    """Run every check the config needs; return the rows (nothing printed).

    With a config: first the whole config is validated, then every weights file it needs is
    looked for locally, then credentials, packages and services.
    """
    cfg_rows, cfg = check_config(config) if config else ([], None)
    services, rows, data = services_needed(config)
    rows = cfg_rows + rows
    if cfg is not None:
        rows += check_weights(cfg)
    ee_cfg, cfg_rows = _earthengine_config(data)
    rows += cfg_rows
    rows += check_packages(services)
    if "geotiff" in services and data:
        rows += check_geotiff_paths(data)
    if "flickr" in services:
        flickr_rows, creds = check_flickr_credentials()
        rows += flickr_rows
        if offline:
            rows.append(Check("flickr reachable", SKIP, "--offline", required=False))
        elif creds is None:
            rows.append(Check("flickr reachable", SKIP, "credentials missing", required=False))
        else:
            rows.append(probe_flickr(creds, timeout_s, flickr_factory))
    if "earthengine" in services:
        ee_rows, can_init = check_earthengine_credentials(ee_cfg)
        rows += ee_rows
        if offline:
            rows.append(Check("earthengine reachable", SKIP, "--offline", required=False))
        elif not can_init:
            rows.append(Check("earthengine reachable", SKIP, "credentials or project missing", required=False))
        else:
            probe = probe_earthengine(ee_cfg, timeout_s, ee_module)
            if probe.status == OK:
                # Credentials that worked are present, whatever the file search said (metadata server).
                for r in ee_rows:
                    if r.name == "earthengine credentials" and r.status == MISSING:
                        r.status, r.required = WARN, False
                        r.detail = "no credential file found, but Earth Engine accepted the ambient credentials"
            rows.append(probe)
    return rows


def format_table(rows: list[Check]) -> str:
    """The checks as an aligned text table, then a 'how to fix' list for the failing ones."""
    w_name = max(len("CHECK"), *(len(r.name) for r in rows))
    w_status = max(len("STATUS"), *(len(r.status) for r in rows))
    lines = [f"{'CHECK':<{w_name}}  {'STATUS':<{w_status}}  DETAIL"]
    lines += [f"{r.name:<{w_name}}  {r.status:<{w_status}}  {r.detail}" for r in rows]
    fixes = [r for r in rows if r.fix and r.status in (MISSING, FAIL, WARN)]
    if fixes:
        lines += ["", "How to fix:"]
        lines += [f"  - {r.name}: {r.fix}" for r in fixes]
    return redact("\n".join(lines))


def run_doctor_command(args: argparse.Namespace) -> int:
    """Entry point of ``graft doctor``: print the table; 0 if nothing required is missing, else 1."""
    rows = run_doctor(config=getattr(args, "config", None), offline=bool(getattr(args, "offline", False)),
                      timeout_s=float(getattr(args, "timeout", 10.0) or 10.0))
    print(format_table(rows))
    blocking = [r for r in rows if r.blocking]
    print()
    if blocking:
        print(f"graft doctor: {len(blocking)} problem(s) block a live build: {', '.join(r.name for r in blocking)}")
        return 1
    scope = f"for {args.config}" if getattr(args, "config", None) else "for every source"
    mode = " (offline: services not contacted)" if getattr(args, "offline", False) else ""
    print(f"graft doctor: everything needed {scope} is present{mode}")
    return 0
