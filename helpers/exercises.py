"""Exercises an instructor can grade: ``check("03.1", n_accuracy=1, n_time=2)`` tells a student
whether an answer is right, with a hint when it is not, and never prints the expected value.

Each exercise is a function that computes its right answer, as a dict of named fields, from the
records the series ships (the bench, the timing grids, the bundled backbone) or from what the
student measured (passed as ``data``: a timing of one's own machine has no answer in advance,
but reading it right does). ``check`` compares field by field: names and kinds exactly, numbers
within the exercise's tolerance. The worked solutions call ``check`` on their own answers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from .backbone import anatomy, backbone_config, load_backbone, random_twin
from .constants import DIMENSIONS
from .layer_choice import stage_flops
from .methods import Method, parse_method, prepare
from .metrics import ccc
from .model import EmotionRegressor
from .notebook import gpu_timings, reference_results, saved_layer_probe, saved_prosodic_features
from .files import read_records
from .paths import BUNDLED_BACKBONE, REFERENCE_DIR
from .probes import common_labels, ridge_predictions, ridge_probe
from .stats import verdict_table
from .surgery import apply_lora
from .tables import summary_table


@dataclass(frozen=True)
class Exercise:
    """How one exercise is graded: the fields an answer names, its right answer
    (``answer(**data)``), the relative tolerance of its numbers, and the hint shown with a
    wrong answer."""

    fields: tuple[str, ...]
    answer: Callable[..., dict]
    hint: str
    tolerance: float = 0.02


EXERCISES: dict[str, Exercise] = {}
STUDY_METHODS = ("full", "partial(3)", "lora(16)", "cached(3)", "weighted-sum")  # the study's
LARGE_TIMING = REFERENCE_DIR / "cpu-epyc-2026-12-04" / "timing-random-wav2vec2-large.jsonl"


def exercise(name: str, fields: tuple[str, ...], hint: str, tolerance: float = 0.02):
    """Register the function below as the grader of exercise ``name`` (notebook.number)."""
    def register(answer: Callable[..., dict]) -> Callable[..., dict]:
        EXERCISES[name] = Exercise(fields, answer, hint, tolerance)
        return answer
    return register


def agrees(given: object, right: object, tolerance: float) -> bool:
    """Dicts field by field; numbers (also written as text, "1e-3") within ``tolerance``
    (relative, or 0.005 absolute: a share given to two digits); anything else as text."""
    if isinstance(right, dict):
        return isinstance(given, dict) and set(given) == set(right) and all(
            agrees(given[key], value, tolerance) for key, value in right.items())
    if isinstance(right, bool) or isinstance(given, (bool, np.bool_)):
        return isinstance(given, (bool, np.bool_)) and bool(given) == right
    try:
        return math.isclose(float(given), float(right), rel_tol=tolerance, abs_tol=0.005)
    except (TypeError, ValueError):
        return str(given).strip().lower() == str(right).lower()


def check(name: str, data: dict | None = None, **answer) -> bool:
    """Print whether ``answer`` (keyword fields) is right for exercise ``name``, and a hint
    naming the fields that are not; ``data`` is what the exercise asks you to measure first.
    The expected values are never printed."""
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; the exercises are {sorted(EXERCISES)}")
    grader = EXERCISES[name]
    if set(answer) != set(grader.fields):
        print(f"{name}: answer with the fields {list(grader.fields)} (given: {sorted(answer)})")
        return False
    missing = [field for field in grader.fields if answer[field] is None]
    if missing:
        print(f"{name}: no answer yet for {', '.join(missing)}")
        return False
    right = grader.answer(**(data or {}))
    wrong = [field for field in grader.fields
             if not agrees(answer[field], right[field], grader.tolerance)]
    print(f"{name}: right" if not wrong else f"{name}: not yet ({', '.join(wrong)}). Hint: "
          f"{grader.hint}")
    return not wrong


# ------------------------------------------------------------------------------- helpers
def bench_summary() -> pd.DataFrame:
    return summary_table(reference_results("bench", quiet=True))


def largest(series: pd.Series) -> str:
    return str(series.idxmax())


# ------------------------------------------------------------------------------ 00 · data
@exercise("00.1", ('largest_gap', 'cause'),
          "compare each dimension's prediction sd with its label sd, and its mean "
          "offset: which is further from agreement?")
def _prosody_gap(manifest: pd.DataFrame) -> dict:
    features = saved_prosodic_features(manifest).to_numpy()
    predictions = ridge_predictions(features, manifest)
    truth = common_labels(manifest.loc[predictions.index])
    gaps, causes = {}, {}
    for i, dimension in enumerate(DIMENSIONS):
        x, y = predictions[dimension].to_numpy(), truth[:, i]
        gaps[dimension] = np.corrcoef(x, y)[0, 1] - ccc(x, y)
        spread = abs(x.std() / y.std() - 1)
        causes[dimension] = "spread" if spread > abs(x.mean() - y.mean()) / y.std() else "offset"
    widest = max(gaps, key=gaps.get)
    return {"largest_gap": widest, "cause": causes[widest]}


@exercise("00.2", ('changed_most',),
          "score both feature sets with ridge_probe and take the dimension whose CCC "
          "moves most, either way")
def _without_pitch(manifest: pd.DataFrame) -> dict:
    features = saved_prosodic_features(manifest)
    pitch = [column for column in features.columns if column.startswith("pitch")]
    before = pd.Series(ridge_probe(features.to_numpy(), manifest))[list(DIMENSIONS)]
    after = pd.Series(ridge_probe(features.drop(columns=pitch).to_numpy(),
                                  manifest))[list(DIMENSIONS)]
    return {"changed_most": largest((after - before).abs())}


@exercise("00.3", ('loaded',),
          "load_manifest fills label_min/label_max from label_range and reads each "
          "duration from the file's header")
def _own_manifest(loaded: pd.DataFrame) -> dict:
    ok = (loaded["label_min"].eq(1).all() and loaded["label_max"].eq(5).all()
          and loaded["duration"].gt(0).all())
    return {"loaded": bool(ok)}


# -------------------------------------------------------------------------- 01 · backbone
@exercise("01.1", ('best_layer', 'gained_most'),
          "idxmax of each dimension's column in the pretrained probe; then pretrained "
          "minus random weights at that layer")
def _best_layers(manifest: pd.DataFrame, backbone: str) -> dict:
    pretrained = saved_layer_probe(backbone, manifest)
    random_weights = saved_layer_probe(random_twin(backbone), manifest)
    best = {d: int(pretrained[d].idxmax()) for d in DIMENSIONS}
    added = pd.Series({d: pretrained.at[best[d], d] - random_weights.at[best[d], d]
                       for d in DIMENSIONS})
    return {"best_layer": best, "gained_most": largest(added)}


@exercise("01.2", ('changed_most',),
          "average each dimension's change over the layers (max minus mean pooling)")
def _max_pooling(manifest: pd.DataFrame, backbone: str) -> dict:
    change = (saved_layer_probe(backbone, manifest, pooling="max") -
              saved_layer_probe(backbone, manifest))[list(DIMENSIONS)]
    return {"changed_most": largest(change.mean().abs())}


@exercise("01.3", ('share',),
          "the stages before the last three layers, over all stages (gflops column)")
def _below_top_three(backbone: str) -> dict:
    blocks = anatomy(load_backbone(backbone), seconds=3.0)
    return {"share": blocks.gflops.iloc[: len(blocks) - 3].sum() / blocks.gflops.sum()}


# ----------------------------------------------------------------------- 02 · full finetuning
@exercise("02.1", ('extra_params', 'extra_flops'),
          "(full+cnn's value / full's) - 1, for trainable_params and flops_per_step",
          tolerance=0.05)
def _cnn_cost(full, full_cnn) -> dict:
    more = lambda field: getattr(full_cnn, field) / getattr(full, field) - 1
    return {"extra_params": more("trainable_params"), "extra_flops": more("flops_per_step")}


@exercise("02.2", ('epochs_at_5e4', 'epochs_at_1e3'),
          "count, in seed 0's train_loss list at each rate, the epochs above 0.9")
def _stuck_epochs() -> dict:
    bench = reference_results("bench", quiet=True)
    runs = bench[bench.method.map(parse_method).eq(Method()) & (bench.seed == 0)].set_index("lr")
    return {name: sum(loss > 0.9 for loss in runs.at[lr, "train_loss"])
            for name, lr in (("epochs_at_5e4", 5e-4), ("epochs_at_1e3", 1e-3))}


@exercise("02.3", ('identical',),
          "compare train_loss and dev_ccc of the two Results, epoch by epoch")
def _resumed(resumed, uninterrupted) -> dict:
    return {"identical": all(getattr(resumed, k) == getattr(uninterrupted, k)
                             for k in ("train_loss", "dev_ccc"))}


# ----------------------------------------------------------------------- 03 · partial
def partial_sweep() -> tuple[pd.DataFrame, pd.Series]:
    summary = bench_summary()
    partial = summary[[bool(re.fullmatch(r"partial\(\d+\)", m)) for m in summary.index]]
    return partial, summary.loc["full"]


@exercise("03.1", ('n_accuracy', 'n_time'),
          "the smallest n with CCC >= 0.9 x full's; the largest n with seconds per "
          "epoch <= 0.5 x full's")
def _budget() -> dict:
    partial, full = partial_sweep()
    n_of = {m: parse_method(m).number for m in partial.index}
    accurate = [n_of[m] for m in partial.index if partial.at[m, "ccc_mean"] >= 0.9 * full.ccc_mean]
    fast = [n_of[m] for m in partial.index
            if partial.at[m, "seconds_per_epoch"] <= 0.5 * full.seconds_per_epoch]
    return {"n_accuracy": min(accurate), "n_time": max(fast) if fast else None}


@exercise("03.2", ('difference', 'fails'),
          "best dev CCC (max of dev_ccc) of partial(3), seed 0, at 5e-4 minus at "
          "2e-4; and the rate whose best dev CCC collapses", tolerance=0.1)
def _suffix_rate() -> dict:
    bench = reference_results("bench", quiet=True)
    runs = bench[(bench.method == "partial(3)") & (bench.seed == 0)].set_index("lr")
    best = runs["dev_ccc"].map(max)
    return {"difference": best[5e-4] - best[2e-4], "fails": f"{best.idxmin():g}"}


@exercise("03.3", ('gains_most',),
          "partial(1)'s test CCC per dimension (mean of its seeds at its chosen rate) "
          "minus the probe's last row")
def _one_layer(manifest: pd.DataFrame, backbone: str) -> dict:
    bench = reference_results("bench", quiet=True)
    runs = bench[bench.method == "partial(1)"]
    runs = runs[runs.lr == runs.lr.mode()[0]]
    top = saved_layer_probe(backbone, manifest).iloc[-1]
    gains = pd.Series({d: runs[f"test_ccc_{d}"].mean() - top[d] for d in DIMENSIONS})
    return {"gains_most": largest(gains)}


# ----------------------------------------------------------------------- 04 · precision
@exercise("04.1", ('least_changed',),
          "the method whose bf16 speed-up is closest to 1 (no change, either way)")
def _least_changed(speedups: dict) -> dict:
    return {"least_changed": min(speedups, key=lambda m: abs(speedups[m] - 1))}


@exercise("04.2", ('slowest',), "the precision with the most seconds per step in your own timing")
def _slowest(seconds: dict) -> dict:
    return {"slowest": max(seconds, key=seconds.get)}


@exercise("04.3", ('largest_gap',),
          "the largest absolute difference between the two loss curves, step by step",
          tolerance=0.05)
def _loss_gap(losses: dict) -> dict:
    first, second = losses.values()
    return {"largest_gap": max(abs(a - b) for a, b in zip(first, second))}


# ----------------------------------------------------------------------- 05 · LoRA
def lora_parameters(backbone: str, **options) -> int:
    model = apply_lora(EmotionRegressor(load_backbone(backbone)), **options)
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@exercise("05.1", ('growth',),
          "adapter parameters with feed_forward=True over those without (the head "
          "left out of both)")
def _feed_forward_growth(backbone: str) -> dict:
    return {"growth": lora_parameters(backbone, r=16, feed_forward=True) /
            lora_parameters(backbone, r=16)}


@exercise("05.2", ('faster_than_partial', 'faster_than_lora_everywhere'),
          "compare your three times per step")
def _top_three_adapters(seconds: dict) -> dict:
    top = seconds["lora(16), top 3 layers"]
    return {"faster_than_partial": top < seconds["partial(3)"],
            "faster_than_lora_everywhere": top < seconds["lora(16), every layer"]}


@exercise("05.3", ('per_rank', 'rank_matching_partial3'),
          "adapter parameters per unit of rank; then partial(3)'s trainable "
          "parameters (less the head) over that", tolerance=0.05)
def _rank_growth(backbone: str) -> dict:
    per_rank = lora_parameters(backbone, r=4) / 4
    partial = prepare("partial(3)", backbone).model
    trained = sum(p.numel() for n, p in partial.named_parameters()
                  if p.requires_grad and ".layers." in f".{n}")
    return {"per_rank": per_rank, "rank_matching_partial3": trained / per_rank}


# ----------------------------------------------------------------------- 06 · caching
@exercise("06.1", ('same_size',), "compare the cache sizes at the three layers")
def _cache_sizes(disk_bytes: dict) -> dict:
    return {"same_size": len(set(disk_bytes.values())) == 1}


@exercise("06.2", ('relative_error',), "the median over all values of |states.half().float() "
          "- states| / |states| (clamp tiny states at 1e-6)", tolerance=0.5)
def _fp16_rounding(states) -> dict:
    relative = (states.half().float() - states).abs() / states.abs().clamp(min=1e-6)
    return {"relative_error": float(relative.median())}


@exercise("06.3", ('epochs',),
          "build seconds over (partial(3) - cached(3)) seconds per epoch, rounded up, "
          "from the bench-batching runs")
def _breakeven() -> dict:
    runs = reference_results("bench-batching", quiet=True)
    epoch = summary_table(runs)["seconds_per_epoch"]
    build = runs[runs.method == "cached(3)"].cache_build_seconds.median()
    return {"epochs": math.ceil(build / (epoch["partial(3)"] - epoch["cached(3)"]))}


# ----------------------------------------------------------------------- 07 · trade-offs
@exercise("07.1", ('method',),
          "the largest time / FLOP-predicted time in section 2's table (full aside)")
def _furthest_from_flops() -> dict:
    timing = summary_table(reference_results("timing-random-wav2vec2-base", quiet=True))
    return {"method": largest(timing.time_over_flop_ratio.drop("full").dropna())}


@exercise("07.2", ('width_ratio',),
          "mean interval width (high - low) with 2 seeds over that with 3",
          tolerance=0.05)
def _two_seeds(paired: pd.DataFrame) -> dict:
    widths = [(table.high - table.low).mean() for table in
              (verdict_table(paired[paired.seed < 2]), verdict_table(paired))]
    return {"width_ratio": widths[0] / widths[1]}


@exercise("07.3", ('method',),
          "3600 / seconds per epoch gives the epochs an hour buys; among the methods "
          "that fit 6, the highest CCC")
def _one_hour() -> dict:
    summary = bench_summary()
    fits = summary[3600 / summary.seconds_per_epoch >= 6]
    return {"method": largest(fits.ccc_mean)}


# ----------------------------------------------------------------------- 08 · beyond
@exercise("08.1", ('ratio',),
          "adapter parameters of lora-ffn(32) over lora-ffn(8) (the head left out)")
def _ffn_rank(backbone: str) -> dict:
    def adapters(name: str) -> int:
        model = prepare(name, backbone).model
        return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return {"ratio": adapters("lora-ffn(32)") / adapters("lora-ffn(8)")}


@exercise("08.2", ('share',), "the forward FLOPs of layers 9-11 over all stages' forward FLOPs")
def _prune_share() -> dict:
    forward = stage_flops(backbone_config("random:wav2vec2-base"), 1, 4.0)["forward"]
    layers = [stage for stage in forward.index if stage.startswith("layer")]
    return {"share": forward[layers[9:]].sum() / forward.sum()}


@exercise("08.3", ('method',),
          "1 - its seconds per step / full's, in the wav2vec2-large timing; the smallest saving "
          "among the methods past the study")
def _least_saving() -> dict:
    steps = pd.DataFrame(read_records(LARGE_TIMING))
    seconds = steps.groupby("method")["seconds_per_step"].median()
    study = {parse_method(m).kind for m in STUDY_METHODS}
    new = [m for m in seconds.index if parse_method(m).kind not in study]
    return {"method": str((seconds[new] / seconds["full"]).idxmax())}


# ----------------------------------------------------------------------- appendices
@exercise("A1.1", ('lost_most',),
          "the dimension whose top-layer probe CCC fell most from the shipped "
          "backbone to your rerun")
def _pure_ctc(shipped: pd.DataFrame, rerun: pd.DataFrame) -> dict:
    return {"lost_most": largest((shipped.iloc[-1] - rerun.iloc[-1])[list(DIMENSIONS)])}


@exercise("A1.2", ('correlation',), "Pearson r between the two columns of your table")
def _phoneme_rate(rates: pd.DataFrame) -> dict:
    return {"correlation": float(rates.corr().iloc[0, 1])}


@exercise("A1.3", ('ctc_falling', 'prosody_falling'),
          "the sign of each fitted slope over the last 200 steps")
def _still_falling() -> dict:
    curve = np.array(json.loads((BUNDLED_BACKBONE / "pretraining.json").read_text())["curve"])
    tail = curve[curve[:, 0] > curve[-1, 0] - 200]
    return {name: bool(np.polyfit(tail[:, 0], tail[:, column], 1)[0] < 0)
            for column, name in ((1, "ctc_falling"), (2, "prosody_falling"))}


@exercise("A2.1", ('ratio',), "two processes' training seconds over one process's", tolerance=0.05)
def _two_processes(seconds: dict) -> dict:
    return {"ratio": seconds[2] / seconds[1]}


@exercise("A2.2", ('processes',),
          "full's step time over cached(3)+bf16's at 32 clips on wav2vec2-base, "
          "rounded up")
def _processes_to_match() -> dict:
    gpu = gpu_timings()
    step = gpu[(gpu.backbone == "random:wav2vec2-base") & (gpu.batch_size == 32)
               & (gpu.phase == "train")].groupby("method").seconds_per_step.median()
    return {"processes": math.ceil(step["full"] / step["cached(3)+bf16"])}
