"""The paired bootstrap and its verdicts, on cases whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from helpers.stats import paired_bootstrap, verdict, verdict_table


def runs(method: str, noise: float, seeds=(0, 1, 2), size: int = 200) -> list[dict]:
    rng = np.random.default_rng(42)
    targets = rng.uniform(0, 1, (size, 3))
    records = []
    for seed in seeds:
        error = np.random.default_rng(seed + int(noise * 1000)).normal(0, noise, (size, 3))
        records.append({"method": method, "seed": seed, "test_targets": targets.tolist(),
                        "test_predictions": (targets + error).tolist()})
    return records


def test_a_method_against_itself_matches_and_a_worse_one_is_worse():
    same = paired_bootstrap(runs("a", 0.1), runs("b", 0.1), num_samples=200)
    assert same["difference"] == pytest.approx(0, abs=1e-9) and same["low"] == same["high"]
    assert verdict(same["low"], same["high"]) == "matches"
    worse = paired_bootstrap(runs("a", 0.4), runs("b", 0.1), num_samples=200)
    assert worse["high"] < -0.02 and verdict(worse["low"], worse["high"]) == "worse"


def test_verdicts_follow_the_margin():
    assert verdict(-0.01, 0.015) == "matches"
    assert verdict(-0.05, -0.001) == "worse" and verdict(0.001, 0.05) == "better"
    assert verdict(-0.04, 0.03) == "undecided at this sample size"


def test_runs_on_different_clips_cannot_be_paired():
    other = runs("b", 0.1)
    other[0]["test_targets"] = (np.asarray(other[0]["test_targets"]) + 1).tolist()
    with pytest.raises(ValueError, match="different clips"):
        paired_bootstrap(runs("a", 0.1), other, num_samples=10)


def test_the_table_compares_every_method_with_full():
    table = verdict_table(pd.DataFrame(runs("full", 0.1) + runs("cached(3)", 0.1) +
                                       runs("bad", 0.5)))
    assert list(table.index) == ["cached(3)", "bad"]
    assert table.at["bad", "verdict"] == "worse"


def test_a_filtered_tradeoff_view_keeps_each_methods_marker_size():
    """07's filters redraw the figure for the methods kept: a method's marker must keep its
    size (memory) whatever else is shown, or filtered views cannot be compared."""
    import matplotlib
    matplotlib.use("Agg")
    from helpers.plots import tradeoff_figure

    summary = pd.DataFrame({"seconds_per_epoch": [10.0, 5.0], "ccc_mean": [0.7, 0.6],
                            "peak_rss_mib": [3000.0, 1000.0]},
                           index=pd.Index(["full", "cached(3)"], name="method"))
    def marker_area(figure, index: int) -> float:
        return float(figure.axes[0].collections[index].get_sizes()[0])
    beside = marker_area(tradeoff_figure(summary), 1)  # cached(3) next to full
    alone = marker_area(tradeoff_figure(summary.loc[["cached(3)"]], largest_memory=3000.0), 0)
    assert alone == pytest.approx(beside)
