"""A real headless Chromium, driven through the distribution's chromedriver (Selenium), for the
viewer's tests and its page-load benchmark; and reading the viewer's canvas from inside the page."""
import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts" / "viewer"

# Statistics of the OpenSeadragon canvas, computed in the page (sending the pixels out is slow):
# the share of drawn (opaque, not white) pixels, and the mean absolute difference from a snapshot.
CANVAS_JS = """
const canvas = window.saganet.viewer.drawer.canvas;
const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
const what = arguments[0];
if (what === 'snapshot') { window.__snapshot = px; return px.length; }
let drawn = 0, diff = 0;
const base = window.__snapshot;
for (let i = 0; i < px.length; i += 4) {
  if (px[i + 3] > 0 && (px[i] < 235 || px[i + 1] < 235 || px[i + 2] < 235)) drawn++;
  if (base) diff += Math.abs(px[i] - base[i]) + Math.abs(px[i + 1] - base[i + 1]) + Math.abs(px[i + 2] - base[i + 2]);
}
return {drawn: drawn / (px.length / 4), diff: base ? diff / (px.length / 4 * 3) : null};
"""

# True once every visible image in the viewer is fully loaded (OpenSeadragon does not load what has
# opacity 0) and nothing is left to draw.
SETTLED_JS = """
const v = window.saganet && window.saganet.viewer;
if (!v || v.world.getItemCount() < arguments[0]) return false;
for (let i = 0; i < v.world.getItemCount(); i++) {
  const item = v.world.getItemAt(i);
  if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
}
return !v.world.needsDraw();
"""


def chrome():
    """A headless Chromium; missing Chromium/chromedriver/selenium fails under CI=true, else skips."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [name for name, found in (("chromium", binary), ("chromedriver", driver), ("selenium", webdriver)) if not found]
    if missing:
        msg = (f"the browser tests need {', '.join(missing)} (make setup installs them: apt packages chromium and "
               f"chromium-driver, pip selenium)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,900",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def shot(driver, name: str) -> Path:
    """A screenshot kept as a test artefact (runs/test-artifacts/viewer/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
