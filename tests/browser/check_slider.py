"""Browser check: notebook 03's layer-choice explorer renders in JupyterLab and moving its slider
redraws the figure.

Needs Chromium (Debian: `apt-get install chromium`) and Playwright (`.venv/bin/python -m pip
install playwright`; no browser download: it drives /usr/bin/chromium, or $CHROMIUM). Run:

    cd tests/browser && ../../.venv/bin/python check_slider.py ../../results/browser

It starts JupyterLab on a free loopback port with SMOKE=1, opens the notebook, runs all
cells, takes a screenshot, moves the first slider one step, checks that the figure
changed, and takes a second screenshot. Then it switches the backbone to wav2vec2-base
(12 layers), focuses the "layers trained" slider, presses End and checks that the slider
reads the new maximum (its "layers kept"), not the bundled model's 6; it lowers "layers kept"
one step and checks End again (screenshots slider-end*.png). Exit status 0 means the
sliders work.
"""

from __future__ import annotations

import os
import re
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


def labelled_slider(page, description: str):
    """The ipywidgets slider whose description is exactly ``description``."""
    label = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$"))
    return page.locator(".widget-slider", has=label).first


def readout(slider, seconds: float = 60, differs_from: int | None = None) -> int:
    """The slider's value as its readout shows it (once it differs from ``differs_from``)."""
    deadline = time.time() + seconds
    while True:
        text = slider.locator(".widget-readout").inner_text().strip()
        if text.isdigit() and (int(text) != differs_from or time.time() > deadline):
            return int(text)
        time.sleep(0.5)


def press_end(page, slider) -> tuple[int, int]:
    """Focus ``slider``'s handle, press End; its readout and the handle's aria-valuenow."""
    handle = slider.locator(".noUi-handle")
    handle.focus()
    page.keyboard.press("End")
    time.sleep(2)  # the handle moves at once; give the model a moment to echo
    return readout(slider), round(float(handle.get_attribute("aria-valuenow") or "nan"))


def check_end_key(page, out_dir: Path) -> list[str]:
    """After switching to a 12-layer backbone, End takes "layers trained" to the new maximum
    (which is "layers kept"); again after lowering "layers kept" one step."""
    problems = []
    backbone = page.locator(".widget-dropdown", has=page.locator(
        ".widget-label", has_text=re.compile("^backbone$"))).locator("select")
    kept = readout(labelled_slider(page, "layers kept"))
    backbone.select_option("wav2vec2-base")
    kept = readout(labelled_slider(page, "layers kept"), differs_from=kept)
    if kept != 12:
        problems.append(f"switching to wav2vec2-base kept {kept} layers, not 12")
    for step in ("", "-kept-lowered"):
        layers = labelled_slider(page, "layers trained")
        layers.scroll_into_view_if_needed()
        value, aria = press_end(page, layers)
        page.screenshot(path=str(out_dir / f"slider-end{step}.png"))
        print(f"End on 'layers trained' ({kept} layers kept): readout {value}, "
              f"aria-valuenow {aria}")
        if value != kept or aria != kept:
            problems.append(f"End took 'layers trained' to {value} (aria-valuenow {aria}), "
                            f"not the maximum {kept}")
        if not step:  # lower "layers kept" by one: the trained slider's max follows it
            keep = labelled_slider(page, "layers kept")
            keep.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowLeft")
            kept = readout(keep, differs_from=kept)
            readout(labelled_slider(page, "layers trained"), seconds=10, differs_from=value)
    return problems


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
        problems = check_end_key(page, out_dir)
    if after == before:
        problems.insert(0, "the figure did not change after moving the slider")
    if problems:
        sys.exit("\n".join(problems))
    print(f"slider works: figure redrawn, End reaches the new maximum; screenshots in {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/browser"))
