"""Is a method as good as full finetuning? A paired bootstrap of the CCC difference and an
equivalence verdict against a stated margin.

Two methods scored on the same test clips with the same seed are paired. Each bootstrap
resample draws the seeds (training runs) with replacement, then the test clips with
replacement, and recomputes both methods' CCCs on them: the spread of the resampled
differences covers both sources of luck, the training run and which clips happened to be in
the test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .metrics import ccc_per_dimension
from .tables import final_runs

MARGIN = 0.02  # differences of mean CCC smaller than this count as "the same"


def resampled_mean_ccc(predictions: np.ndarray, targets: np.ndarray,
                       clips: np.ndarray, chunk: int = 100) -> np.ndarray:
    """Mean CCC over the dimensions on each resample of the test clips: ``clips`` holds K rows
    of clip indices, the result K scores. Computed ``chunk`` resamples at a time, so a test set
    of tens of thousands of clips stays small in memory."""
    scores = []
    for start in range(0, len(clips), chunk):
        rows = clips[start:start + chunk]
        scores.append(ccc_per_dimension(torch.from_numpy(predictions[rows]),
                                        torch.from_numpy(targets[rows])).double().mean(-1))
    return torch.cat(scores).numpy()


def paired_bootstrap(method: list[dict], reference: list[dict], num_samples: int = 1000,
                     seed: int = 0) -> dict:
    """Mean CCC difference (method - reference) and its 95% interval. ``method`` and
    ``reference`` are records with ``seed``, ``test_predictions`` and ``test_targets``; runs
    are paired by seed, and clips by position (the targets must agree)."""
    pairs = pair_by_seed(method, reference)
    generator = np.random.default_rng(seed)
    size = len(pairs[0][2])

    def differences(clips: np.ndarray) -> np.ndarray:
        """Every pair's CCC difference on each resample of the clips: (resamples, pairs)."""
        return np.stack([resampled_mean_ccc(a, t, clips) - resampled_mean_ccc(b, t, clips)
                         for a, b, t in pairs], axis=1)
    observed = differences(np.arange(size)[None]).mean()
    draws = [(generator.integers(0, len(pairs), len(pairs)),  # which training runs
              generator.integers(0, size, size))              # which test clips
             for _ in range(num_samples)]
    runs, clips = (np.stack(column) for column in zip(*draws))
    samples = np.take_along_axis(differences(clips), runs, axis=1).mean(1)  # each resample's runs
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"difference": float(observed), "low": float(low), "high": float(high),
            "seeds": len(pairs)}


def pair_by_seed(method: list[dict], reference: list[dict]) -> list[tuple]:
    by_seed = {r["seed"]: r for r in reference}
    pairs = []
    for record in method:
        other = by_seed.get(record["seed"])
        if other is None:
            continue
        targets = np.asarray(record["test_targets"])
        if not np.allclose(targets, np.asarray(other["test_targets"]), atol=1e-4):
            raise ValueError(f"{record['method']} and {other['method']} (seed "
                             f"{record['seed']}) were tested on different clips or orders")
        pairs.append((np.asarray(record["test_predictions"]),
                      np.asarray(other["test_predictions"]), targets))
    if not pairs:
        raise ValueError("no seed in common: nothing to pair")
    return pairs


def verdict(low: float, high: float, margin: float = MARGIN) -> str:
    """``matches`` when the whole interval lies within ±margin; ``worse``/``better`` when it
    lies beyond zero and reaches past the margin; otherwise undecided at this sample size."""
    if -margin < low and high < margin:
        return "matches"
    if high < 0:
        return "worse"
    if low > 0:
        return "better"
    return "undecided at this sample size"


def verdict_table(results: pd.DataFrame, reference: str = "full",
                  margin: float = MARGIN) -> pd.DataFrame:
    """Each method against ``reference``: the bootstrap interval and the verdict. Runs without
    stored test predictions are left out."""

    results = final_runs(results)  # each method at its chosen learning rate
    results = results[results["test_predictions"].map(lambda p: isinstance(p, list) and
                                                      len(p) > 0)]
    records = {m: group.to_dict("records") for m, group in results.groupby("method", sort=False)}
    if reference not in records:
        raise ValueError(f"no {reference} runs with test predictions to compare against")
    rows = {}
    for method, runs in records.items():
        if method == reference:
            continue
        interval = paired_bootstrap(runs, records[reference])
        rows[method] = {**{k: round(v, 3) for k, v in interval.items() if k != "seeds"},
                        "seeds": interval["seeds"],
                        "verdict": verdict(interval["low"], interval["high"], margin)}
    table = pd.DataFrame(rows).T
    table.index.name = f"vs {reference} (margin ±{margin})"
    return table
