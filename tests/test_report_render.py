"""The HTML report as a browser shows it: headless Chromium screenshots the synthetic report.

Chromium is taken from $EDGEATTACK_CHROMIUM, else the first of chromium / chromium-browser /
google-chrome on PATH; without one the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import synthetic_report

from edgeattack.report import write_report
from edgeattack.report.figures import ASR_CMAP

WIDTH, HEIGHT = 1280, 4000


def _chromium() -> str:
    configured = os.environ.get("EDGEATTACK_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium: apt-get install chromium (Debian)")


def _screenshot(html: Path, out: Path, profile: Path) -> Image.Image:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={out}",
        html.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert out.exists(), f"Chromium wrote no screenshot (exit {completed.returncode}):\n{completed.stderr[-2000:]}"
    image = Image.open(out)
    image.load()
    return image.convert("RGB")


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    root = tmp_path_factory.mktemp("render")
    files = write_report(synthetic_report(), root / "report.html")
    image = _screenshot(files.html, root / "screenshot.png", root / "profile")
    assert image.size == (WIDTH, HEIGHT)
    return np.asarray(image).astype(np.int16)


def test_screenshot_is_not_blank(screenshot):
    not_white = (screenshot < 235).any(axis=-1)
    assert not_white.mean() > 0.05, f"only {not_white.mean():.1%} of the page is not white"
    rows_with_ink = not_white.any(axis=1).mean()
    assert rows_with_ink > 0.5, f"only {rows_with_ink:.0%} of the rows hold anything"


def test_embedded_figures_really_rendered(screenshot):
    """The heatmap's saturated colours (ASR 95 % and 71 % cells) are on the page: the data-URI PNGs decoded."""
    from matplotlib import colormaps

    cmap = colormaps[ASR_CMAP]
    for asr in (0.95, 0.71):
        colour = np.array([round(c * 255) for c in cmap(asr)[:3]], dtype=np.int16)
        close = (np.abs(screenshot - colour).max(axis=-1) <= 6).sum()
        assert close > 2000, f"ASR {asr:.0%} heatmap colour {colour.tolist()} found on {close} pixels only"
    saturated = (screenshot.max(axis=-1) - screenshot.min(axis=-1)) > 120
    assert saturated.sum() > 20_000
