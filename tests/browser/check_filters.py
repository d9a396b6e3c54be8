"""Browser check: notebook 07's filters redraw the trade-off figure and say when nothing matches.

Same set-up as ``check_slider.py`` (Chromium and Playwright):

    cd tests/browser && ../../.venv/bin/python check_filters.py ../../results/browser

It opens 07 in JupyterLab with SMOKE=1, runs all cells, picks bf16 in the precision filter and
checks that the figure changed, then keeps only LoRA (which has no bf16 run) and checks that the
explorer says no method matches. Exit status 0 means the filters work.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from check_slider import CHROMIUM, ROOT, figure_source, free_port, start_lab

NOTEBOOK = "07_tradeoffs.ipynb"


def open_and_run(page, url: str) -> None:
    for _ in range(60):  # wait for the server
        try:
            page.goto(url, timeout=5_000)
            break
        except Exception:
            time.sleep(1)
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    try:  # JupyterLab may ask which kernel to start
        page.locator(".jp-Dialog button:has-text('Select')").click(timeout=15_000)
    except Exception:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=120_000)
    page.keyboard.press("Escape")
    page.click("text=Run", timeout=30_000)
    page.click("text=Run All Cells", timeout=30_000)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), "filter-check"
    root = Path(tempfile.mkdtemp())  # a copy: autosave must not touch the committed notebook
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    lab = start_lab(port, token, root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_and_run(page, f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}")
            precision = page.locator(".widget-dropdown select").first
            precision.wait_for(timeout=180_000)
            precision.scroll_into_view_if_needed()
            before = figure_source(page)
            precision.select_option("bf16")
            deadline = time.time() + 60
            while figure_source(page) == before and time.time() < deadline:
                time.sleep(1)
            changed = figure_source(page) != before
            page.locator(".widget-output img").first.scroll_into_view_if_needed()
            page.screenshot(path=str(out_dir / "filters-bf16.png"))
            page.locator(".widget-select-multiple select").first.select_option(["lora"])
            message = page.locator(".widget-output:has-text('no method matches')")
            message.first.wait_for(timeout=60_000)
            message.first.scroll_into_view_if_needed()
            page.screenshot(path=str(out_dir / "filters-no-match.png"))
            browser.close()
        if not changed:
            sys.exit("the figure did not change after filtering by precision")
        print(f"filters work: figure redrawn, empty selection reported; screenshots in {out_dir}")
    finally:
        lab.terminate()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/browser"))
