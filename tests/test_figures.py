"""What a learner sees: figures whose labels do not cover each other, whole-epoch ticks,
legends that leave the lines readable, and committed tables with readable names and numbers."""

import json
import re

import matplotlib
import nbformat
import pandas as pd
import pytest

from helpers.notebook import reference_results
from helpers.paths import NOTEBOOK_DIR
from helpers.plots import layer_profile, learning_curves, text_box, tradeoff_figure
from helpers.results import Result
from helpers.tables import summary_table

matplotlib.use("Agg")


def overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[:i])
            if a.overlaps(b)]


def test_the_tradeoff_figure_names_every_method_without_covering_another():
    summary = summary_table(reference_results("bench", quiet=True))
    figure = tradeoff_figure(summary)
    figure.canvas.draw()
    texts = [t for t in figure.axes[0].texts if t.get_text() in summary.index]
    assert sorted(t.get_text() for t in texts) == sorted(summary.index)
    renderer = figure.canvas.get_renderer()
    assert overlapping([text_box(t, renderer) for t in texts]) == []


def test_a_method_without_figures_is_left_off_the_tradeoff_figure(tmp_path):
    """A results file may hold an earlier record of another kind (no time, no CCC): the
    figure draws the others and saves."""
    summary = summary_table(reference_results("bench", quiet=True)).head(3)
    summary.loc["full", ["seconds_per_epoch", "ccc_mean"]] = float("nan")
    figure = tradeoff_figure(summary, path=tmp_path / "tradeoffs.png")
    assert (tmp_path / "tradeoffs.png").is_file()
    names = {t.get_text() for t in figure.axes[0].texts}
    assert "full" not in names and set(summary.index[1:]) <= names


def test_learning_curves_tick_whole_epochs(tmp_path):
    result = Result.__new__(Result)
    result.train_loss, result.dev_ccc = [0.9, 0.7, 0.6], [0.1, 0.3, 0.35]
    figure = learning_curves({"full": result})
    figure.canvas.draw()
    for axes in figure.axes:
        assert all(float(tick).is_integer() for tick in axes.get_xticks())


def test_the_probe_legend_sits_beside_the_lines():
    table = pd.DataFrame({d: [0.5, 0.6, 0.7] for d in ("arousal", "valence", "dominance",
                                                      "mean")})
    figure = layer_profile({"pretrained": table, "random": table - 0.2})
    figure.canvas.draw()
    legend = figure.axes[0].get_legend().get_window_extent()
    assert legend.x0 >= figure.axes[0].get_window_extent().x1  # outside the plotting area


def committed_outputs(notebook: str, source_start: str) -> str:
    cells = nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4).cells
    cell = next(c for c in cells if c.cell_type == "code" and source_start in c.source)
    return json.dumps(cell.get("outputs", []))


@pytest.mark.parametrize("notebook, source, shown, hidden", [
    ("02_full-finetuning", "readable(pd.DataFrame([full_result", "trainable (M)",
     "trainable_params"),
    ("00_data", "table = relative_paths(manifest.head())", "min-width: 24em", None),
])
def test_committed_tables_use_readable_names(notebook, source, shown, hidden):
    outputs = committed_outputs(notebook, source)
    assert shown in outputs and (hidden is None or hidden not in outputs)


def test_committed_results_are_rounded():
    outputs = committed_outputs("03_partial-finetuning", "partial_result = train(")
    assert not re.search(r"\d\.\d{4,}", outputs)
