"""One comparable run per method: build the model, train or time it, return a flat record.

Methods are written as short strings so a results table, a command line and a notebook
parameter all speak the same language:

``full``, ``full+cnn``, ``partial(3)``, ``lora(16)``, ``cached(3)``, ``weighted-sum``,
and any of them with ``+bf16``, ``+fp16`` or ``+auto`` for mixed precision.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .backbone import count_parameters, load_backbone
from .cache import collate_cached, get_cache
from .data import LengthBucketSampler, SpeechDataset, collate_for
from .model import EmotionRegressor, WeightedSumRegressor
from .surgery import apply_lora, freeze_feature_encoder, split_at_layer
from .timing import (count_flops, device_name, median, peak_memory, reset_peak_memory,
                     synchronize, time_steps)
from .train import (TrainConfig, evaluate, fit, make_optimizer, resolve_precision,
                    train_step)

METHOD_PATTERN = re.compile(r"^(?P<kind>full|partial|lora|cached|weighted-sum)"
                            r"(?:\((?P<number>\d+)\))?(?P<options>(?:\+(?:cnn|bf16|fp16|auto))*)$")


@dataclass(frozen=True)
class Method:
    """A finetuning method: what trains, how, and in which precision."""

    kind: str = "full"           # full | partial | lora | cached | weighted-sum
    number: int | None = None    # layers trained (partial, cached) or LoRA rank
    train_cnn: bool = False
    precision: str = "fp32"

    @property
    def name(self) -> str:
        text = self.kind + (f"({self.number})" if self.number is not None else "")
        return text + ("+cnn" if self.train_cnn else "") + \
            (f"+{self.precision}" if self.precision != "fp32" else "")


def parse_method(text: str) -> Method:
    """``"partial(3)+bf16"`` -> Method("partial", 3, precision="bf16")."""
    match = METHOD_PATTERN.match(text.strip())
    needs_number = match and match["kind"] in ("partial", "lora", "cached")
    if not match or bool(match["number"]) != bool(needs_number):
        raise ValueError(f"unknown method {text!r}; examples: full, full+cnn, partial(3), "
                         "lora(16), cached(3), weighted-sum, partial(3)+bf16")
    options = match["options"].split("+")[1:]
    precision = next((o for o in options if o != "cnn"), "fp32")
    return Method(match["kind"], int(match["number"]) if match["number"] else None,
                  "cnn" in options, precision)


@dataclass
class Prepared:
    """A model ready for ``fit``; for cached methods, the suffix that trains on the cache."""

    model: nn.Module
    regressor: EmotionRegressor
    split: nn.Module | None = None  # SplitRegressor for partial and cached methods


def prepare(method: Method, backbone: str = "tiny", seed: int = 0) -> Prepared:
    """Build the regressor and leave exactly the parameters ``method`` trains trainable."""
    torch.manual_seed(seed)
    regressor = EmotionRegressor(load_backbone(backbone, seed=seed))
    num_layers = regressor.backbone.config.num_hidden_layers
    if method.kind in ("partial", "cached"):
        split = split_at_layer(regressor, num_layers - method.number)
        return Prepared(split.suffix if method.kind == "cached" else split, regressor, split)
    if method.kind == "lora":
        return Prepared(apply_lora(regressor, r=method.number), regressor)
    if method.kind == "weighted-sum":
        return Prepared(WeightedSumRegressor(regressor), regressor)
    return Prepared(regressor if method.train_cnn else freeze_feature_encoder(regressor),
                    regressor)


def make_loader(manifest: pd.DataFrame, split: str, backbone_config, batch_size: int,
                train: bool, seed: int = 0, max_seconds: float | None = 4.0) -> DataLoader:
    """A loader over one split: length-bucketed batches, shuffled per epoch when training."""
    dataset = SpeechDataset(manifest, split, max_seconds=max_seconds, train=train, seed=seed)
    sampler = LengthBucketSampler(dataset.num_samples(), batch_size, shuffle=train, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_for(backbone_config))


def cached_loaders(prepared: Prepared, manifest: pd.DataFrame, batch_size: int, seed: int,
                   cache_dir: str | Path, device: str) -> tuple[dict, dict]:
    """Loaders over cached prefix states (built once, reused across runs) and the build cost."""
    loaders, cost = {}, {"cache_build_seconds": 0.0, "cache_bytes": 0}
    for split in ("train", "dev", "test"):
        dataset = SpeechDataset(manifest, split)  # fixed crops: caching gives up augmentation
        start = time.perf_counter()
        cached = get_cache(prepared.split.prefix, dataset, cache_dir, device)
        cost["cache_build_seconds"] += time.perf_counter() - start
        cost["cache_bytes"] += cached.states.nbytes
        sampler = LengthBucketSampler(cached.num_samples(), batch_size, shuffle=split == "train",
                                      seed=seed)
        loaders[split] = DataLoader(cached, batch_sampler=sampler, collate_fn=collate_cached)
    return loaders, cost


def run(method: Method | str, manifest: pd.DataFrame, backbone: str = "tiny", seed: int = 0,
        num_epochs: int = 6, batch_size: int = 8, lr: float = 5e-4, device: str = "cpu",
        warmup_epochs: int = 1, cache_dir: str | Path = "cache", patience: int | None = None,
        progress: bool = True) -> dict:
    """Train ``method`` on ``manifest`` and return one flat, JSON-ready result record.

    Seconds per epoch is the median over the epochs after the first ``warmup_epochs``; test
    CCC is that of the best dev epoch. For cached methods the one-off cache build is timed
    separately (a cache already on disk costs nothing and is reported as 0).
    """
    method = parse_method(method) if isinstance(method, str) else method
    prepared = prepare(method, backbone, seed)
    config = prepared.regressor.backbone.config
    reset_peak_memory(device)
    if method.kind == "cached":
        loaders, cost = cached_loaders(prepared, manifest, batch_size, seed, cache_dir, device)
    else:
        loaders = {split: make_loader(manifest, split, config, batch_size, split == "train", seed)
                   for split in ("train", "dev", "test")}
        cost = {}
    fitted = fit(prepared.model, loaders["train"], loaders["dev"],
                 TrainConfig(num_epochs=num_epochs, lr=lr, precision=method.precision,
                             device=device, seed=seed, patience=patience, progress=progress))
    epoch_seconds = [record["seconds"] for record in fitted.history]
    seconds = median(epoch_seconds[warmup_epochs:] or epoch_seconds)
    test = evaluate(prepared.model, loaders["test"], device, method.precision)["ccc"]
    return {**describe(method, prepared, backbone, device, seed), "mode": "train",
            "num_epochs": num_epochs, "lr": lr, "batch_size": batch_size,
            "seconds_per_epoch": seconds,
            "samples_per_second": len(loaders["train"].dataset) / seconds, **cost,
            **peak_memory(device), "best_epoch": fitted.best_epoch,
            "skipped_steps": fitted.skipped_steps,
            "train_loss": [round(r["train_loss"], 4) for r in fitted.history],
            "dev_ccc": [round(r["dev_mean"], 4) for r in fitted.history],
            **{f"test_ccc_{k}": v for k, v in test.items()}}


def describe(method: Method, prepared: Prepared, backbone: str, device: str, seed: int) -> dict:
    """The columns every record shares: what ran, where, and how big it is."""
    return {"method": method.name, "kind": method.kind, "layers_or_rank": method.number,
            "backbone": backbone, "device": device_name(device),
            "precision": resolve_precision(method.precision, device), "seed": seed,
            "trainable_params": count_parameters(prepared.model, trainable_only=True),
            "total_params": count_parameters(prepared.regressor),
            "torch": torch.__version__, "python": platform.python_version()}


def time_method(method: Method | str, backbone: str = "random:wav2vec2-base",
                device: str = "cpu", batch_size: int = 2, seconds: float = 3.0,
                num_steps: int = 5, warmup: int = 2, seed: int = 0) -> dict:
    """Time one training step of ``method`` (median of ``num_steps`` after ``warmup``) on a
    batch of random audio; no convergence, just speed, memory and FLOPs per step. For cached
    methods the step starts from stored states, and the prefix pass is timed on its own.
    """
    method = parse_method(method) if isinstance(method, str) else method
    prepared = prepare(method, backbone, seed)
    model = prepared.model.to(device)
    precision = resolve_precision(method.precision, device)
    torch.manual_seed(seed)
    samples = int(seconds * 16_000)
    batch = {"input_values": torch.randn(batch_size, samples),
             "lengths": torch.full((batch_size,), samples), "labels": torch.rand(batch_size, 3)}
    extra = {}
    if method.kind == "cached":
        prefix = prepared.split.prefix.to(device)
        audio = batch["input_values"].to(device)
        prefix_times = time_steps(lambda: prefix(audio), max(2, num_steps // 2), 1, device)
        with torch.no_grad():
            hidden = prefix(audio).cpu()
        batch = {"hidden": hidden, "frame_lengths": torch.full((batch_size,), hidden.shape[1]),
                 "labels": batch["labels"]}
        extra["cache_seconds_per_batch"] = median(prefix_times)
    optimizer = make_optimizer(model, lr=1e-5)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
    model.train()
    losses = []  # every step's loss, from the first: precision variants are compared on them
    step = lambda: losses.append(train_step(model, batch, optimizer, scaler, precision,
                                            torch.device(device)))
    reset_peak_memory(device)
    times = time_steps(step, num_steps, warmup, device)
    flops = count_flops(step)
    synchronize(device)
    return {**describe(method, prepared, backbone, device, seed), "mode": "timing",
            "batch_size": batch_size, "clip_seconds": seconds, "seconds_per_step": median(times),
            "step_times": [round(t, 4) for t in times], "flops_per_step": flops,
            "first_losses": losses[: warmup + num_steps], **extra, **peak_memory(device)}


def run_in_subprocess(task: str, threads: int | None = None, **kwargs) -> dict:
    """Run ``run`` or ``time_method`` in a fresh Python process, so that each method's peak
    memory is its own (a CPU process's peak resident size can only grow). ``threads`` caps
    the process's CPU threads (for running several at once)."""
    command = [sys.executable, "-m", "helpers", "one", task, json.dumps(kwargs)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if finished.returncode != 0:
        raise RuntimeError(f"{task} {kwargs} failed (exit {finished.returncode}); see above")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def append_result(record: dict, path: str | Path) -> None:
    """Append one record to a JSON-lines results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------- choosing learning rates
LEARNING_RATES = (1e-4, 2e-4, 5e-4, 1e-3)


def base_method(name: str) -> str:
    """The fp32 method a mixed-precision variant belongs to: ``partial(3)+bf16`` ->
    ``partial(3)``. Mixed precision is meant as a drop-in change to the same recipe, so a
    variant trains at the learning rate chosen for its base method."""
    method = parse_method(name)
    return Method(method.kind, method.number, method.train_cnn).name


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
    memory = [c for c in ("peak_allocated_mib", "peak_rss_mib") if c in results][:1]
    table = (results.groupby("method")[[time_column, *memory, "trainable_params"]].median()
             .reindex(results["method"].unique()))
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
