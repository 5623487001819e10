"""graft map on the quick demo's outputs: a headless Chromium types each class name into the page, and the
top tile is of that class; no request leaves 127.0.0.1. Also the heat-map GeoTIFF's georeferencing.

Needs Debian's chromium and chromedriver (`make browser`, which `make test` runs). A missing browser is a
failure that says how to install it, never a silent skip.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio

pytestmark = pytest.mark.slow


def demo_paths(out: Path) -> dict[str, Path]:
    return {"map": out / "world" / "map.tif", "labels": out / "world" / "labels.tif",
            "classes": out / "world" / "classes.txt", "heldout": out / "heldout",
            "image": out / "train-image", "pixel": out / "train-pixel"}


def _graft_map_argv(out: Path, cache: Path, *extra: str) -> list[str]:
    p = demo_paths(out)
    template = (p["heldout"] / "templates.txt").read_text().splitlines()[0]  # the demo's own prompt
    return [sys.executable, "-m", "graft.cli", "map", str(p["map"]), "-m", str(p["image"]), "-m", str(p["pixel"]),
            "--cache", str(cache), "--template", template, *extra]


def _env() -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


class MapServer:
    """`graft map` as a user starts it, on a free port; stopped at the end."""

    def __init__(self, argv: list[str], timeout_s: float = 1200):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError("graft map did not start serving in time:\n" + "".join(self.log[-20:])) from None
            m = re.search(r"serving the map on (http://127\.0\.0\.1:\d+/)", line)
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None and self.lines.empty():
                raise RuntimeError("graft map exited:\n" + "".join(self.log[-30:]))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _chromium():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the map browser test needs Debian's headless Chromium: run `make browser` "
                    "(apt-get install chromium chromium-driver); found chromium="
                    f"{chromium}, chromedriver={driver}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]' (make setup)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
                 # Anything not on loopback goes to a closed local port, so nothing can leave the machine even
                 # if the page asked; the request log below still records such an attempt.
                 "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


@pytest.fixture(scope="module")
def map_cache(tmp_path_factory) -> Path:
    """One embedding cache for the demo region, shared by this module's tests (same region and models)."""
    return tmp_path_factory.mktemp("map-cache") / "cache"


def run_browser_queries(out: Path, cache: Path, screenshot: Path) -> dict:
    """Open the map page for the demo, query every held-out class; returns what the browser saw."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    p = demo_paths(out)
    queries = (p["heldout"] / "classnames.txt").read_text().split()
    world_classes = p["classes"].read_text().split()
    with rasterio.open(p["labels"]) as src:
        labels = src.read(1)
    server = MapServer(_graft_map_argv(out, cache, "--port", "0", "--top-k", "8"))
    driver = None
    try:
        driver = _chromium()
        wait = WebDriverWait(driver, 120)
        driver.get(server.url)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
        found, urls = {}, []
        for q in queries:
            box = driver.find_element(By.ID, "query")
            box.clear()
            box.send_keys(q, Keys.ENTER)
            wait.until(lambda d, q=q: d.execute_script("return document.body.dataset.lastQuery") == q)
            first = driver.find_element(By.CSS_SELECTOR, "#results li.result")
            r0, c0, size = (int(first.get_attribute(f"data-{k}")) for k in ("row0", "col0", "size"))
            first.click()  # shows the tile and its patch heat map
            wait.until(lambda d: d.execute_script(
                "const i = document.getElementById('tile-img'); return i.complete && i.naturalWidth > 0"))
            window = labels[r0:r0 + size, c0:c0 + size]
            true = world_classes[int(np.bincount(window.ravel(), minlength=len(world_classes)).argmax())]
            found[q] = {"tile": first.get_attribute("data-tile-id"), "true_class": true,
                        "purity": float((window == world_classes.index(true)).mean())}
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('heat'); return i.complete && i.naturalWidth > 0"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        urls = _requested_urls(driver)
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
    return {"found": found, "urls": urls, "url": server.url}


def _check_map_page(out: Path, cache: Path, shot: Path, min_right: int) -> None:
    seen = run_browser_queries(out, cache, shot)
    print(f"\nmap page screenshot: {shot}")
    for q, f in seen["found"].items():
        print(f"  query {q!r}: top tile {f['tile']} is {f['true_class']} ({f['purity']:.0%} of its pixels)")
    right = sum(f["true_class"] == q for q, f in seen["found"].items())
    print(f"  {right}/{len(seen['found'])} classes: the top tile's true class is the query")
    print(f"  {len(seen['urls'])} requests recorded")
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert len(seen["urls"]) >= 1 + 3 * len(seen["found"])  # page, assets, search + heat + tile per query
    outside = [u for u in seen["urls"] if urlparse(u).scheme not in ("data", "blob", "about")
               and urlparse(u).hostname != "127.0.0.1"]
    assert not outside, f"requests left 127.0.0.1: {outside}"
    assert len(seen["found"]) == 6 and right >= min_right, seen["found"]


def test_map_page_finds_each_class_and_stays_on_localhost(quick_demo, map_cache, tmp_path):
    """The quick demo's models are trained for a fraction of the full demo's steps: at least 4 of 6 classes."""
    out, _ = quick_demo
    _check_map_page(out, map_cache, tmp_path / "map_screenshot.png", min_right=4)


@pytest.mark.heavy
def test_map_page_on_the_full_demo(tmp_path):
    """On `make demo`'s outputs (runs/demo): the top tile's true class is the query for at least 5 of 6."""
    out = Path(__file__).resolve().parents[1] / "runs" / "demo"
    assert (out / "report.json").is_file(), f"run `make demo` first: {out} holds no finished demo"
    _check_map_page(out, tmp_path / "cache", Path(os.environ.get("GRAFT_MAP_SCREENSHOT", tmp_path / "map.png")),
                    min_right=5)


def test_map_heat_geotiff_is_georeferenced_like_the_source(quick_demo, map_cache, tmp_path):
    out, _ = quick_demo
    p = demo_paths(out)
    heat_path = tmp_path / "water.tif"
    res = subprocess.run(_graft_map_argv(out, map_cache, "--query", "water", "--out", str(heat_path)),
                         capture_output=True, text=True, env=_env(), timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    with rasterio.open(p["map"]) as src, rasterio.open(heat_path) as heat, rasterio.open(p["labels"]) as lab:
        assert heat.crs == src.crs
        step = heat.transform.a / src.transform.a  # source pixels per heat pixel (tile_px / patch grid)
        assert heat.transform.b == src.transform.b == 0 and heat.transform.e == pytest.approx(src.transform.e * step)
        assert (heat.transform.c, heat.transform.f) == (src.transform.c, src.transform.f)
        assert heat.width * step >= src.width and heat.height * step >= src.height
        # Heat pixel (r, c) and the source pixel under its centre are the same ground point.
        for r, c in [(0, 0), (heat.height // 2, heat.width // 3), (heat.height - 1, 0)]:
            x, y = heat.xy(r, c)
            sr, sc = src.index(x, y)
            assert (sr, sc) == (int((r + 0.5) * step), int((c + 0.5) * step))
            xs, ys = src.xy(sr, sc)
            assert abs(xs - x) <= abs(src.transform.a) / 2 + 1e-6 and abs(ys - y) <= abs(src.transform.e) / 2 + 1e-6
        h = heat.read(1)
        # The map means something: patches over water score higher for "water" than patches elsewhere.
        labels = lab.read(1)
        water = p["classes"].read_text().split().index("water")
        rows = np.minimum(((np.arange(h.shape[0]) + 0.5) * step).astype(int), labels.shape[0] - 1)
        cols = np.minimum(((np.arange(h.shape[1]) + 0.5) * step).astype(int), labels.shape[1] - 1)
        under = labels[np.ix_(rows, cols)]
        inside = np.isfinite(h)
        assert np.mean(h[inside & (under == water)]) > np.mean(h[inside & (under != water)])
