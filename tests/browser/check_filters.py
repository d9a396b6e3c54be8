"""Browser check: notebook 07's filters redraw the trade-off figure and say when nothing matches.

Same set-up as ``check_slider.py`` (Chromium and Playwright):

    cd tests/browser && ../../.venv/bin/python check_filters.py ../../results/browser

It opens 07 in JupyterLab with SMOKE=1, runs all cells, picks bf16 in the precision filter and
checks that the figure changed, then keeps only LoRA (which has no bf16 run) and checks that the
explorer says no method matches. Exit status 0 means the filters work.
"""

from __future__ import annotations

import sys
from pathlib import Path

from check_slider import figure_source, running_notebook, wait_for_new_figure

NOTEBOOK = "07_tradeoffs.ipynb"


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with running_notebook(NOTEBOOK) as page:
        precision = page.locator(".widget-dropdown select").first
        precision.wait_for(timeout=180_000)
        precision.scroll_into_view_if_needed()
        before = figure_source(page)
        precision.select_option("bf16")
        changed = wait_for_new_figure(page, before) != before
        page.locator(".widget-output img").first.scroll_into_view_if_needed()
        page.screenshot(path=str(out_dir / "filters-bf16.png"))
        page.locator(".widget-select-multiple select").first.select_option(["lora"])
        message = page.locator(".widget-output:has-text('no method matches')")
        message.first.wait_for(timeout=60_000)
        message.first.scroll_into_view_if_needed()
        page.screenshot(path=str(out_dir / "filters-no-match.png"))
    if not changed:
        sys.exit("the figure did not change after filtering by precision")
    print(f"filters work: figure redrawn, empty selection reported; screenshots in {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/browser"))
