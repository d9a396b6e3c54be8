"""Browser check: notebook 07's filters redraw the trade-off figure, keep its marker sizes, and
say when nothing matches.

Same set-up as ``check_slider.py`` (Chromium and Playwright):

    cd tests/browser && ../../.venv/bin/python check_filters.py ../../results/browser

It opens 07 in JupyterLab with SMOKE=1 and runs all cells. It counts the pixels of the cached
family's colour (its markers: cached(3) and cached(3)+bf16) in the figure of every method, keeps
only the cached family and checks that the count stays within 10% (markers scaled to the largest
memory of the shown methods instead of all of them grow about 1.6-fold here); then it selects
every family again, picks bf16 in the precision filter and checks that the figure changed, then
keeps only LoRA (which has no bf16 run) and checks that the explorer says no method matches.
Exit status 0 means the filters work.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from check_slider import ROOT, figure_source, running_notebook, wait_for_new_figure

sys.path.insert(0, str(ROOT))
from helpers.methods import KINDS  # noqa: E402  (the families' colours)

NOTEBOOK = "07_tradeoffs.ipynb"
FAMILY = "cached"  # the family with the smallest memory: the one a per-view scale grows most


def family_pixels(source: str, family: str = FAMILY) -> int:
    """Pixels of the figure (an ``img`` src, base64 PNG) drawn in ``family``'s colour, blended
    with white by at most 40% (marker faces and edges, alpha 0.8, anti-aliasing aside)."""
    png = base64.b64decode(source.split(",", 1)[1])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    white, ink = np.full(3, 255.0), np.array(to_rgb(KINDS[family].colour)) * 255
    offset, direction = image - white, ink - white
    share = np.clip(offset @ direction / (direction @ direction), 0, 1)
    distance = np.linalg.norm(offset - share[..., None] * direction, axis=-1)
    return int(((share >= 0.6) & (distance < 25)).sum())


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = []
    with running_notebook(NOTEBOOK) as page:
        precision = page.locator(".widget-dropdown select").first
        precision.wait_for(timeout=180_000)
        methods = page.locator(".widget-select-multiple select").first
        families = methods.locator("option").evaluate_all("options => options.map(o => o.value)")
        every = figure_source(page)
        page.locator(".widget-output img").first.scroll_into_view_if_needed()
        page.screenshot(path=str(out_dir / "filters-all.png"))
        methods.select_option([FAMILY])
        only = wait_for_new_figure(page, every)
        page.screenshot(path=str(out_dir / f"filters-{FAMILY}.png"))
        before, after = family_pixels(every), family_pixels(only)
        print(f"{FAMILY} marker pixels: {before} with every method, {after} with {FAMILY} only")
        if only == every:
            problems.append(f"the figure did not change after keeping only {FAMILY}")
        elif not before or abs(after / before - 1) > 0.1:
            problems.append(f"{FAMILY}'s markers changed size under filtering: {before} "
                            f"pixels with every method, {after} with {FAMILY} only")
        methods.select_option(families)
        wait_for_new_figure(page, only)
        precision.scroll_into_view_if_needed()
        before = figure_source(page)
        precision.select_option("bf16")
        if wait_for_new_figure(page, before) == before:
            problems.append("the figure did not change after filtering by precision")
        page.locator(".widget-output img").first.scroll_into_view_if_needed()
        page.screenshot(path=str(out_dir / "filters-bf16.png"))
        methods.select_option(["lora"])
        message = page.locator(".widget-output:has-text('no method matches')")
        message.first.wait_for(timeout=60_000)
        message.first.scroll_into_view_if_needed()
        page.screenshot(path=str(out_dir / "filters-no-match.png"))
    if problems:
        sys.exit("\n".join(problems))
    print("filters work: marker sizes kept, figure redrawn, empty selection reported; "
          f"screenshots in {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/browser"))
