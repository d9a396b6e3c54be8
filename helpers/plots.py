"""Seeing trade-offs: static figures (for reading) and ipywidgets explorers (for playing)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def tradeoff_figure(summary: pd.DataFrame, time_column: str = "seconds_per_epoch",
                    path: str | Path | None = None, title: str | None = None):
    """Time per epoch (x) against mean test CCC (y); marker area = peak memory."""
    memory = next(c for c in ("peak_allocated_mib", "peak_rss_mib") if c in summary)
    data = summary.reset_index()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x=time_column, y="ccc_mean", size=memory, sizes=(40, 400),
                    hue="method", legend=False, ax=axes)
    if "ccc_sd" in data:
        axes.errorbar(data[time_column], data["ccc_mean"], yerr=data["ccc_sd"].fillna(0),
                      fmt="none", ecolor="grey", alpha=0.6)
    for _, row in data.iterrows():
        axes.annotate(row["method"], (row[time_column], row["ccc_mean"]),
                      textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set_xlabel(time_column.replace("_", " "))
    axes.set_ylabel("mean test CCC (A, V, D)")
    axes.set_title(title or f"speed vs accuracy (marker size: {memory.replace('_', ' ')})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
