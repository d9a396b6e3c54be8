"""Seeing trade-offs: static figures (for reading) and ipywidgets explorers (for playing)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
import pandas as pd

from .backbone import backbone_config
from .config import RunConfig
from .methods import KINDS, colour, parse_method
from .results import Result, label, memory_column, readable


def tradeoff_figure(summary: pd.DataFrame, time_column: str = "seconds_per_epoch",
                    path: str | Path | None = None, title: str | None = None,
                    limits: tuple[tuple[float, float], tuple[float, float]] | None = None,
                    largest_memory: float | None = None):
    """Time per epoch (x) against mean test CCC (y); marker area = peak memory, colour = the
    method's family (filled: fp32, hollow: mixed precision). ``limits`` fixes the axes
    (x, y) and ``largest_memory`` the memory a full-size marker stands for, so that filtered
    views can be compared (the same method keeps its marker size). A method without a time or a
    CCC (an earlier record of another kind in the same results file) has no point to draw."""
    memory = memory_column(summary)
    data = summary.reset_index().dropna(subset=[time_column, "ccc_mean"])
    figure, axes = plt.subplots(figsize=(8, 4.8))
    scale = 400 / (largest_memory or summary[memory].max())
    for _, row in data.iterrows():
        method = parse_method(row["method"])
        axes.scatter(row[time_column], row["ccc_mean"], s=max(row[memory] * scale, 30),
                     facecolors="none" if method.mixed_precision else colour(method),
                     edgecolors=colour(method), linewidths=2, alpha=0.8)
        if "ccc_sd" in data and pd.notna(row["ccc_sd"]):
            axes.errorbar(row[time_column], row["ccc_mean"], yerr=row["ccc_sd"], fmt="none",
                          ecolor="grey", alpha=0.6)
    if limits is not None:
        axes.set(xlim=limits[0], ylim=limits[1])
    axes.set_xlabel(label(time_column))
    axes.set_ylabel("mean test CCC (arousal, valence, dominance)")
    axes.set_title(title or f"speed vs accuracy (marker area: {label(memory)})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    label_points(axes, data[time_column], data["ccc_mean"], data["method"])  # on the final axes
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def label_points(axes, xs: pd.Series, ys: pd.Series, names: pd.Series,
                 line_height: float = 10) -> None:
    """Name each point beside it; a name that would cover one already placed moves up a line
    at a time (measured as drawn), with a thin line back to its point, so that close methods
    stay readable."""
    axes.autoscale_view()
    renderer = axes.figure.canvas.get_renderer()
    placed = []
    for x, y, name in sorted(zip(xs, ys, names), key=lambda point: point[1]):
        rise = 5.0
        text = axes.annotate(name, (x, y), textcoords="offset points", xytext=(7, rise),
                             fontsize=8)
        while any(text_box(text, renderer).overlaps(box) for box in placed) \
                and rise < 20 * line_height:
            rise += line_height
            text.xyann = (7, rise)
        if rise > 5:  # drawn again with a line back to its point
            text.remove()
            text = axes.annotate(name, (x, y), textcoords="offset points", xytext=(7, rise),
                                 fontsize=8, arrowprops={"arrowstyle": "-", "color": "grey",
                                                         "lw": 0.5})
        placed.append(text_box(text, renderer))


def text_box(annotation, renderer):
    """Where a name is drawn, leaving out the line back to its point."""
    annotation.update_positions(renderer)  # its offset from the point, as drawn
    return Text.get_window_extent(annotation, renderer)


def axis_limits(summary: pd.DataFrame, time_column: str) -> tuple[tuple, tuple]:
    """Axes that hold every method of ``summary`` (the explorer keeps them while filtering)."""
    times, scores = summary[time_column], summary["ccc_mean"]
    spread = summary["ccc_sd"].fillna(0) if "ccc_sd" in summary else 0
    return ((0, times.max() * 1.25), (max(0, (scores - spread).min() - 0.05),
                                       min(1, (scores + spread).max() + 0.05)))


DIMENSION_COLOURS = {"arousal": "tab:red", "valence": "tab:blue", "dominance": "tab:green",
                     "mean": "black"}


def layer_profile(probes: dict[str, pd.DataFrame], title: str = "what each layer knows"):
    """Probe CCC per layer and dimension; one line style per backbone (e.g. pretrained/random)."""
    figure, axes = plt.subplots(figsize=(9, 4))
    for style, (backbone, table) in zip(["-", "--", ":"], probes.items()):
        for dimension, line_colour in DIMENSION_COLOURS.items():
            if dimension in table:
                axes.plot(table.index, table[dimension], style, color=line_colour, marker="o",
                          markersize=3, label=f"{dimension} ({backbone})")
    axes.set_xlabel("layer (0 = input to the first transformer layer)")
    axes.set_ylabel("test CCC of a ridge probe")
    axes.set_title(title)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, not over
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def learning_curves(results: dict[str, Result]):
    """Training loss and dev CCC per epoch for one or more runs (``Result`` of ``run``)."""
    figure, (loss_axes, ccc_axes) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, result in results.items():
        epochs = range(1, len(result.train_loss) + 1)
        loss_axes.plot(epochs, result.train_loss, marker="o", label=name)
        ccc_axes.plot(epochs, result.dev_ccc, marker="o", label=name)
    loss_axes.set(xlabel="epoch", ylabel="training loss (1 - CCC)")
    ccc_axes.set(xlabel="epoch", ylabel="dev CCC (mean of A, V, D)")
    for axes in (loss_axes, ccc_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ccc_axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def sweep_figure(summary: pd.DataFrame, layers: pd.Series, highlight: int | None = None,
                 time_column: str = "seconds_per_epoch"):
    """Accuracy, time and memory against the number of layers trained (full at the right)."""
    memory = memory_column(summary)
    columns = [("ccc_mean", "mean test CCC"), (time_column, label(time_column)),
               (memory, label(memory)), ("trainable_params", "trainable parameters (M)")]
    figure, axes = plt.subplots(1, len(columns), figsize=(13, 3))
    for ax, (column, title) in zip(axes, columns):
        values = summary[column] / (1e6 if column == "trainable_params" else 1)
        ax.plot(layers, values, marker="o", color=KINDS["partial"].colour)
        if column == "ccc_mean" and "ccc_sd" in summary:
            ax.fill_between(layers, summary["ccc_mean"] - summary["ccc_sd"].fillna(0),
                            summary["ccc_mean"] + summary["ccc_sd"].fillna(0), alpha=0.2)
        if highlight is not None:
            ax.axvline(highlight, color="tab:red", alpha=0.6)
        ax.set(xlabel="layers trained (n; the last is full finetuning)", title=title)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def cumulative_time(epoch_seconds: dict[str, float], build_seconds: dict[str, float],
                    horizon: int = 20):
    """Total training time after each epoch (up to ``horizon`` epochs), one-off costs (the
    cache build) included."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    epochs = range(0, horizon + 1)
    for name, seconds in epoch_seconds.items():
        start = build_seconds.get(name, 0.0)
        axes.plot(epochs, [start + e * seconds for e in epochs], label=name)
    axes.set(xlabel="epochs", ylabel="cumulative seconds", title="when does caching pay off?")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def results_explorer(benches: dict[str, pd.DataFrame], time_column: str = "seconds_per_epoch"):
    """Filter the trade-off table and figure of one bench (``benches``: name -> summary) by
    method family and precision; within a bench the axes, colours and marker sizes stay fixed,
    so that filtered views can be compared. Benches are shown one at a time: each was measured
    on its own machine and batching, so their times are not comparable with each other."""
    # optional: the Jupyter stack is not installed on every machine that draws figures
    import ipywidgets as widgets
    from IPython.display import display

    bench = widgets.Dropdown(options=list(benches), description="bench")
    chosen = widgets.SelectMultiple(description="methods")
    hint = widgets.Label("Ctrl-click (Cmd-click on a Mac) to choose several methods")
    precisions = widgets.Dropdown(options=["any", "fp32", "bf16"], value="any",
                                  description="precision")
    output = widgets.Output()

    def new_bench(_=None):
        families = sorted({parse_method(name).kind for name in benches[bench.value].index})
        chosen.unobserve(redraw, names="value")  # one redraw for the new bench, not three
        chosen.value = ()
        chosen.options = families
        chosen.value = tuple(families)
        chosen.observe(redraw, names="value")
        redraw()

    def redraw(_=None):
        summary = benches[bench.value]
        keep = [name for name in summary.index
                if parse_method(name).kind in chosen.value
                and precisions.value in ("any", parse_method(name).precision)]
        with output:
            output.clear_output(wait=True)
            if not keep:
                print("no method matches these filters")
                return
            tradeoff_figure(summary.loc[keep], time_column,
                            limits=axis_limits(summary, time_column),
                            largest_memory=summary[memory_column(summary)].max())
            plt.show()
            display(readable(summary.loc[keep]))

    bench.observe(new_bench, names="value")
    for control in (chosen, precisions):
        control.observe(redraw, names="value")
    new_bench()
    return widgets.VBox([widgets.HBox([chosen, precisions, bench]), hint, output])


# ------------------------------------------------------------------ choosing layers to train
BACKBONE_CHOICES = {"bundled tiny": "tiny", "wav2vec2-base": "random:wav2vec2-base",
                    "wav2vec2-large": "random:wav2vec2-large", "hubert-base": "random:hubert-base",
                    "hubert-large": "random:hubert-large",
                    "wavlm-base-plus": "random:wavlm-base-plus",
                    "wavlm-large": "random:wavlm-large"}


def layer_choice_figure(costs: pd.DataFrame, n: int, predicted: pd.DataFrame,
                        measured: pd.DataFrame, devices: dict[str, str],
                        probe: pd.DataFrame | None = None, accuracy: pd.DataFrame | None = None,
                        title: str = "", inference_gflops: float | None = None,
                        num_layers: int | None = None):
    """Four views of training the top ``n`` of the layers kept (``len(costs)`` of the
    backbone's ``num_layers``), on fixed axes so that choices can be compared: what each layer
    knows (probe CCC per layer, trained layers shaded, pruned ones greyed), the predicted time
    and peak memory of a training step for every n (partial and cached, on each device, with
    the measured steps at this shape as crosses), and the measured test CCC of partial(n).
    """
    kept = len(costs)
    num_layers = num_layers or kept
    figure, (know, time, memory, score) = plt.subplots(1, 4, figsize=(17, 3.8))
    _knowledge_panel(know, probe, n, kept, num_layers)
    for axes, unit, what in ((time, "s/step", "predicted s per training step"),
                             (memory, "MiB", "predicted peak memory (MiB)")):
        for (kind, device), line in predicted.groupby(["kind", "device"], sort=False):
            axes.plot(line["layers trained"], line[unit],
                      "--" if KINDS[kind].trains_on_cache else "-",
                      color=KINDS[kind].colour, alpha=1 if device == "CPU" else 0.55,
                      marker="o" if device == "CPU" else "s", markersize=3,
                      label=f"{kind}, {devices.get(device, device)}")
            chosen = line[line["layers trained"] == n]
            axes.plot(chosen["layers trained"], chosen[unit], "o", markersize=10,
                      markerfacecolor="none", markeredgecolor="black")
        if len(measured):
            axes.plot(measured["layers trained"], measured[unit], "x", color="black",
                      label="measured at this shape")
        axes.set(yscale="log", xlim=(0.5, kept + 0.5), xlabel="layers trained (n)",
                 ylabel=what, title=f"what a step {'takes' if unit == 's/step' else 'needs'}")
    _score_panel(score, accuracy, n, kept)
    for axes in (know, time, memory, score):
        axes.grid(alpha=0.3)
    figure.suptitle(title or f"training the top {n} of {kept} layers", fontsize=11)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    handles, names = time.get_legend_handles_labels()  # one legend for both middle panels
    figure.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return figure


def _knowledge_panel(know, probe: pd.DataFrame | None, n: int, kept: int,
                     num_layers: int) -> None:
    if probe is not None:
        for dimension, line_colour in DIMENSION_COLOURS.items():
            know.plot(probe.index, probe[dimension], color=line_colour, marker="o",
                      markersize=3, label=dimension)
        know.legend(fontsize=7, loc="lower left")
    else:
        know.text(0.5, 0.5, "probe shown for the bundled\nbackbone only (these are random\n"
                  "weights); notebook 01 with\nBACKBONE = its Hub id probes it", ha="center",
                  va="center", transform=know.transAxes, fontsize=9)
    know.axvspan(kept - n + 0.5, kept + 0.5, color="tab:orange", alpha=0.15, label="trained")
    if kept < num_layers:
        know.axvspan(kept + 0.5, num_layers + 0.5, color="grey", alpha=0.3, label="pruned")
    know.set(xlim=(-0.5, num_layers + 0.5), ylim=(0, 1), xlabel="layer output (0 = input "
             "to layer 1)", ylabel="probe test CCC", title="what each layer knows")


def _score_panel(score, accuracy: pd.DataFrame | None, n: int, kept: int) -> None:
    if accuracy is not None and len(accuracy):
        score.errorbar(accuracy.index, accuracy["ccc_mean"], yerr=accuracy["ccc_sd"].fillna(0),
                       marker="o", capsize=3, color=KINDS["partial"].colour)
        if n in accuracy.index:
            score.plot([n], [accuracy.at[n, "ccc_mean"]], "o", markersize=11,
                       markerfacecolor="none", markeredgecolor="black")
    else:
        score.text(0.5, 0.5, "scores shown for the bundled\nbackbone only; python -m helpers\n"
                   "bench --backbone <its id>\nmeasures them", ha="center", va="center",
                   transform=score.transAxes, fontsize=9)
    score.set(xlim=(0.5, kept + 0.5), ylim=(0, 1), xlabel="layers trained (n)",
              ylabel="test CCC (mean ± sd over seeds)", title="what it scores (bench)")


def layer_choice_explorer(inputs: Callable[[str, int, float], dict], start: int = 3,
                          start_batch: int = int(RunConfig.max_batch_seconds //
                                                 RunConfig.max_clip_seconds),
                          start_clip: float = RunConfig.max_clip_seconds):
    """Sliders over the backbone, the layers kept (prune(k)), the layers trained, the batch
    and the clip length; the figure (``layer_choice_figure``) redraws from
    ``inputs(backbone, batch, clip, keep)``, which returns what ``explorer_inputs`` does
    (FLOPs counted, time and memory predicted, probe and scores measured before)."""
    # optional: the Jupyter stack is not installed on every machine that draws figures
    import ipywidgets as widgets
    from IPython.display import display

    backbone = widgets.Dropdown(options=list(BACKBONE_CHOICES), description="backbone")
    keep = widgets.IntSlider(value=6, min=1, max=6, description="layers kept",
                             continuous_update=False, style={"description_width": "initial"})
    layers = widgets.IntSlider(value=start, min=1, max=6, description="layers trained",
                               continuous_update=False, style={"description_width": "initial"})
    batch = widgets.IntSlider(value=start_batch, min=1, max=64, description="batch",
                              continuous_update=False)
    clip = widgets.FloatSlider(value=start_clip, min=1, max=10, step=0.5,
                               description="clip (s)", continuous_update=False)
    output = widgets.Output()

    def fresh(old, value, total):
        # a new slider drawn with this range: the frontend's End key (noUiSlider) keeps the max
        # a slider was first drawn with, whatever max is set later
        new = widgets.IntSlider(value=value, min=1, max=total, description=old.description,
                                style=old.style, continuous_update=False)
        new.observe(redraw, names="value")
        old.close()
        return new

    def new_backbone(_=None):
        nonlocal keep, layers
        total = backbone_config(BACKBONE_CHOICES[backbone.value]).num_hidden_layers
        keep = fresh(keep, total, total)  # unpruned at first
        layers = fresh(layers, min(layers.value, total), total)
        knobs.children, sliders.children = (backbone, keep), (layers, batch, clip)
        redraw()

    def redraw(_=None):
        chosen = inputs(BACKBONE_CHOICES[backbone.value], batch.value, clip.value, keep.value)
        layers.max = len(chosen["costs"])
        n = min(layers.value, layers.max)
        with output:
            output.clear_output(wait=True)
            layer_choice_figure(n=n, **chosen, title=f"{backbone.value}: top {n} of "
                                f"{layers.max} layers kept, {batch.value} x {clip.value:g} s")
            plt.show()
            display(layer_choice_summary(chosen, n))

    backbone.observe(new_backbone, names="value")
    for control in (keep, layers, batch, clip):
        control.observe(redraw, names="value")
    knobs, sliders = widgets.HBox(), widgets.HBox()
    new_backbone()
    return widgets.VBox([knobs, sliders, output])


def layer_choice_summary(chosen: dict, n: int) -> pd.DataFrame:
    """One row: the cost and (where measured) the score of training the top n layers."""
    costs, predicted, row = chosen["costs"], chosen["predicted"], {}
    row["layers kept"] = len(costs)
    row["trainable (M)"] = round(costs.at[n, "trainable params"] / 1e6, 1)
    for column in [c for c in costs if c.endswith("GFLOP/step")]:  # partial, cached
        row[column] = round(costs.at[n, column], 1)
    row["partial FLOPs / full's"] = \
        f"{costs.at[n, 'partial GFLOP/step'] / costs['partial GFLOP/step'].iloc[-1]:.0%}"
    row.update(chosen["devices"])  # which CPU and GPU the predictions stand for
    for _, line in predicted[predicted["layers trained"] == n].iterrows():
        row[f"{line['kind']} s/step ({line['device']})"] = round(line["s/step"], 3)
        row[f"{line['kind']} MiB ({line['device']})"] = round(line["MiB"])
    if chosen.get("inference_gflops"):
        row["inference GFLOP/batch"] = round(chosen["inference_gflops"], 1)
    accuracy = chosen.get("accuracy")
    if accuracy is not None and n in accuracy.index:
        row["test CCC"] = round(accuracy.at[n, "ccc_mean"], 3)
    return pd.DataFrame([row], index=[f"top {n}"]).T

def precision_figure(steps: pd.DataFrame):
    """Seconds per training step and peak memory of one method in each precision (rows of
    ``steps``: timing records), one group of bars per batch size."""
    steps = steps.assign(batch=steps["batch_size"].astype(int).astype(str) + " x " +
                         steps["clip_seconds"].map("{:g} s".format))
    memory = memory_column(steps)
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, column, title in ((axes[0], "seconds_per_step", "seconds per training step"),
                              (axes[1], memory, label(memory))):
        table = steps.pivot_table(index="batch", columns="method", values=column)
        table.plot.bar(ax=ax, rot=0, width=0.8)
        ax.set(xlabel="batch", ylabel=title, title=title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure
