"""Result tables: choosing each method's learning rate on dev, and one summary row per method.
"""

from __future__ import annotations

import pandas as pd

from .methods import base_method
from .results import memory_column

# ----------------------------------------------------------------- choosing learning rates


def methods_to_search(methods: list[str]) -> list[str]:
    """The methods whose learning rate is searched: each fp32 method, and a mixed-precision
    one only when its base method is not in the grid."""
    return [m for m in methods if base_method(m) == m or base_method(m) not in methods]


def best_dev_ccc(results: pd.DataFrame) -> pd.Series:
    """Each run's dev CCC at its best epoch (the epoch whose test score it reports)."""
    return results["dev_ccc"].map(lambda scores: max(scores, default=float("nan")))


def chosen_learning_rates(results: pd.DataFrame,
                          methods: list[str] | None = None) -> dict[str, float]:
    """For each method (default: those in ``results``): the learning rate whose seed-0 run
    reached the best dev CCC, searched on its base method if that ran, else on the method
    itself (a method with neither is left out). The test speakers play no part in the
    choice."""
    seed0 = results[results["seed"] == 0].assign(best_dev=best_dev_ccc)
    best = (seed0.sort_values("best_dev", ascending=False, kind="stable")
            .drop_duplicates("method").set_index("method")["lr"])
    methods = results["method"].unique() if methods is None else methods
    searched_on = {m: base_method(m) if base_method(m) in best else m for m in methods}
    return {m: float(best[on]) for m, on in searched_on.items() if on in best}


def final_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The runs a summary reports: each method's runs at its chosen learning rate (all runs
    when only one learning rate was tried)."""
    if "lr" not in results or results["lr"].nunique() < 2:
        return results
    chosen = chosen_learning_rates(results)
    return results[results["lr"] == results["method"].map(chosen)]


def lr_search_table(results: pd.DataFrame) -> pd.DataFrame:
    """Best dev CCC of each searched method (rows) at each learning rate (columns), seed 0,
    with the chosen rate; the test score is left out on purpose: it did not choose."""
    seed0 = results[results["seed"] == 0].assign(best_dev=best_dev_ccc)
    searched = seed0.groupby("method")["lr"].transform("nunique") > 1
    table = seed0[searched].pivot_table(index="method", columns="lr", values="best_dev",
                                        sort=False).round(3)
    table.columns = [f"lr {rate:g}" for rate in table.columns]
    chosen = chosen_learning_rates(seed0)
    table["chosen lr"] = [chosen[m] for m in table.index]
    return table


# ------------------------------------------------------------------------------ summaries
def summary_table(results: pd.DataFrame, reference: str = "full") -> pd.DataFrame:
    """One row per method: CCC mean ± sd over seeds, time, memory, parameters, and the time
    reduction against ``reference`` (fp32) measured and predicted from FLOPs. Where several
    learning rates were tried, each method's accuracy is that of its runs at its chosen rate
    (``final_runs``); time and memory are medians over all its runs, since the rate changes
    what a step computes, not how long it takes.
    """
    time_column = "seconds_per_step" if "seconds_per_step" in results else "seconds_per_epoch"
    memory = [c for c in [memory_column(results)] if c]
    speed = [c for c in ("audio_seconds_per_second", "data_wait_share", "peak_share")
             if c in results and results[c].notna().any()]
    table = (results.groupby("method")[[time_column, *speed, *memory, "trainable_params"]]
             .median().reindex(results["method"].unique()))
    if "achieved_flops_per_second" in results:
        table.insert(1, "achieved_tflops",
                     results.groupby("method")["achieved_flops_per_second"].median() / 1e12)
    results = final_runs(results)
    grouped = results.groupby("method", sort=False)
    if "lr" in results:
        table["lr"] = grouped["lr"].first()
    if "test_ccc_mean" in results:
        table["ccc_mean"] = grouped["test_ccc_mean"].mean()
        table["ccc_sd"] = grouped["test_ccc_mean"].std()
        table["seeds"] = grouped.size()
        for dim in ("arousal", "valence", "dominance"):
            table[f"ccc_{dim}"] = grouped[f"test_ccc_{dim}"].mean()
    if reference in table.index:
        table["time_reduction"] = 1 - table[time_column] / table.at[reference, time_column]
    if "flops_per_step" in results and reference in table.index:
        flops = grouped["flops_per_step"].median()
        table["gflops_per_step"] = flops / 1e9
        table["flop_predicted_reduction"] = 1 - flops / flops[reference]
        table["measured_vs_predicted"] = table["time_reduction"] / table["flop_predicted_reduction"]
        # time as a fraction of the reference's, over the fraction FLOPs predict (1 = as fast
        # as FLOPs say; 1.3 = 30% slower than predicted: fixed costs that FLOPs do not see)
        table["time_over_flop_ratio"] = (1 - table["time_reduction"]) / (flops / flops[reference])
    return table.round({column: 3 for column in table.columns if column != "lr"})


def operator_table(records: pd.DataFrame) -> pd.DataFrame:
    """Where each method's step time goes: seconds per step of each profiled operator (rows,
    costliest first) for each method (columns), from timings run with ``--profile``; the
    last row is the measured step, profiled or not."""
    profiled = records.dropna(subset=["operator_seconds"]).drop_duplicates("method", keep="last")
    table = pd.DataFrame({row.method: row.operator_seconds for row in profiled.itertuples()})
    table = table.loc[table.max(axis=1).sort_values(ascending=False).index]
    table.loc["measured step"] = profiled.set_index("method")["seconds_per_step"]
    table.index.name = "seconds per step"
    return table
