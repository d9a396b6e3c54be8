"""Browser check: notebook 03's layer-choice explorer renders in JupyterLab and moving its slider
redraws the figure.

Needs Chromium (Debian: `apt-get install chromium`) and Playwright (`pip install playwright`;
no browser download: it drives /usr/bin/chromium). Run:

    cd tests/browser && ../../.venv/bin/python check_slider.py ../../results/browser

It starts JupyterLab on a free loopback port with SMOKE=1, opens the notebook, runs all
cells, takes a screenshot, moves the first slider one step, checks that the figure
changed, and takes a second screenshot. Exit status 0 means the slider works.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "03_partial-finetuning.ipynb"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, token: str, root: Path) -> subprocess.Popen:
    env = {**os.environ, "SMOKE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    return subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.allow_root=True"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def figure_source(page) -> str:
    image = page.locator(".widget-output img").first
    image.wait_for(timeout=120_000)
    return image.get_attribute("src") or ""


@contextmanager
def running_notebook(notebook: str) -> Iterator:
    """A headless Chromium page showing a copy of ``notebook`` in JupyterLab (SMOKE mode),
    every cell run; the copy keeps autosave away from the committed notebook."""
    port, token = free_port(), "browser-check"
    root = Path(tempfile.mkdtemp())
    shutil.copy(ROOT / "notebooks" / notebook, root / notebook)
    lab = start_lab(port, token, root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            url = f"http://127.0.0.1:{port}/lab/tree/{notebook}?token={token}"
            for _ in range(60):  # wait for the server
                try:
                    page.goto(url, timeout=5_000)
                    break
                except Exception:
                    time.sleep(1)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            select = page.locator(".jp-Dialog button:has-text('Select')")
            try:  # JupyterLab may ask which kernel to start
                select.click(timeout=15_000)
            except Exception:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=120_000)
            page.keyboard.press("Escape")
            page.click("text=Run", timeout=30_000)
            page.click("text=Run All Cells", timeout=30_000)
            yield page
            browser.close()
    finally:
        lab.terminate()


def wait_for_new_figure(page, before: str, seconds: float = 60) -> str:
    """The explorer's figure once it differs from ``before`` (or after ``seconds``)."""
    deadline = time.time() + seconds
    while figure_source(page) == before and time.time() < deadline:
        time.sleep(1)
    return figure_source(page)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with running_notebook(NOTEBOOK) as page:
        slider = page.locator(".widget-slider .noUi-handle, .widget-slider input").first
        try:
            slider.wait_for(timeout=180_000)
        except Exception:
            page.screenshot(path=str(out_dir / "no-slider.png"), full_page=True)
            raise
        slider.scroll_into_view_if_needed()
        before = figure_source(page)
        page.screenshot(path=str(out_dir / "slider-before.png"))
        slider.focus()
        page.keyboard.press("ArrowLeft")
        after = wait_for_new_figure(page, before)
        page.screenshot(path=str(out_dir / "slider-after.png"))
    if after == before:
        sys.exit("the figure did not change after moving the slider")
    print(f"slider works: figure redrawn; screenshots in {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/browser"))
