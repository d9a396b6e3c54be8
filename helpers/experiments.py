"""One comparable run per method: build the model, train or time it, return a typed record.

``run(config)`` trains the method a ``RunConfig`` names and returns a ``Result``;
``run_or_load(config)`` returns the saved result of exactly that run when there is one;
``time_method`` times one training step and returns a ``TimingResult``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from .backbone import count_parameters, load_backbone
from .cache import collate_cached, get_cache
from .config import RunConfig, code_version, resolve_device, timing_fingerprint
from .data import (SAMPLE_RATE, SpeechDataset, collate_for, data_fingerprint, load_data,
                   waveform_store)
from .loaders import DurationBatchSampler, make_loader
from .methods import Method, check_fits, parse_method
from .model import EmotionRegressor, WeightedSumRegressor
from .results import Result, TimingResult
from .surgery import apply_lora, freeze_feature_encoder, split_at_layer
from .speedups import compile_trainable, pad_multiple, set_tf32, tf32_in_effect
from .store import Store
from .timing import (attainable_flops, count_flops, device_name, median, peak_memory,
                     peak_share, reset_peak_memory, synchronize, time_steps)
from .train import evaluate, fit, make_optimizer, make_scaler, resolve_precision, train_step

SPLITS = ("train", "dev", "test")
FRAME_RATE = 50  # Wav2Vec2's CNN emits one frame per 20 ms


@dataclass
class Prepared:
    """A model ready for ``fit``; for cached methods, the suffix that trains on the cache."""

    model: nn.Module
    regressor: EmotionRegressor
    split: nn.Module | None = None  # SplitRegressor for partial and cached methods


def prepare(method: Method | str, backbone: str = "tiny", seed: int = 0,
            attention: str = "sdpa") -> Prepared:
    """Build the regressor and leave exactly the parameters ``method`` trains trainable."""
    method = parse_method(method) if isinstance(method, str) else method
    torch.manual_seed(seed)
    regressor = EmotionRegressor(load_backbone(backbone, seed=seed, attention=attention))
    num_layers = regressor.backbone.config.num_hidden_layers
    check_fits(method, num_layers)
    if method.kind in ("partial", "cached"):
        split = split_at_layer(regressor, num_layers - method.number)
        return Prepared(split.suffix if method.kind == "cached" else split, regressor, split)
    if method.kind == "lora":
        return Prepared(apply_lora(regressor, r=method.number), regressor)
    if method.kind == "weighted-sum":
        return Prepared(WeightedSumRegressor(regressor), regressor)
    return Prepared(regressor if method.train_cnn else freeze_feature_encoder(regressor),
                    regressor)


def store_root(config: RunConfig) -> Path:
    """Where decoded waveforms and layer caches live: under the results root."""
    return Path(config.results_root) / "cache"


def decoded_store(manifest: pd.DataFrame, config: RunConfig,
                  ctx: distributed.Context = distributed.Context()) -> Store:
    """The manifest's waveform store, built by the first process of each machine."""
    with distributed.main_first():
        return waveform_store(manifest, store_root(config), verify=config.verify_audio,
                              progress=config.progress and ctx.is_main)


def audio_loaders(manifest: pd.DataFrame, backbone_config, config: RunConfig,
                  ctx: distributed.Context = distributed.Context()) -> dict[str, DataLoader]:
    """Loaders over the decoded waveform store, batched by duration (random crops and a new
    batch plan every epoch when training; centre crops, sorted by length, otherwise); under a
    launcher, each rank's share of the batches."""
    store = decoded_store(manifest, config, ctx)
    collate = collate_for(backbone_config, pad_multiple(parse_method(config.method),
                                                        SAMPLE_RATE))
    loaders = {}
    for split in SPLITS:
        train = split == "train"
        dataset = SpeechDataset(manifest, split, config.max_clip_seconds, train, config.seed,
                                store=store)
        sampler = DurationBatchSampler(dataset.durations(), config.max_batch_seconds, train,
                                       config.seed, ctx.world_size, ctx.rank)
        loaders[split] = make_loader(dataset, sampler, collate, config.device,
                                     config.num_workers)
    return loaders


def cached_loaders(prepared: Prepared, manifest: pd.DataFrame, config: RunConfig,
                   ctx: distributed.Context = distributed.Context()
                   ) -> tuple[dict[str, DataLoader], dict]:
    """Loaders over cached prefix states (built once, reused across runs) and what the cache
    cost: the seconds its build took (when it was built, this run or an earlier one) and its
    size. On a GPU, a cache that fits in a quarter of the free memory moves there whole."""
    progress = config.progress and ctx.is_main
    store = decoded_store(manifest, config, ctx)
    collate = partial(collate_cached,
                      pad_multiple=pad_multiple(parse_method(config.method), FRAME_RATE))
    loaders, cost = {}, {"cache_build_seconds": 0.0, "cache_bytes": 0}
    for split in SPLITS:  # fixed crops: caching gives up crop augmentation
        dataset = SpeechDataset(manifest, split, config.max_clip_seconds, store=store)
        with distributed.main_first():
            cached = get_cache(prepared.split.prefix, dataset, store_root(config),
                               config.device, progress)
        cost["cache_build_seconds"] += cached.store.meta["build_seconds"]
        cost["cache_bytes"] += cached.nbytes
        resident = fits_on_device(cached.nbytes, config.device)
        if resident:
            cached.to(config.device)
        sampler = DurationBatchSampler(cached.durations(), config.max_batch_seconds,
                                       split == "train", config.seed, ctx.world_size, ctx.rank)
        loaders[split] = make_loader(cached, sampler, collate, config.device,
                                     0 if resident else config.num_workers,
                                     pin_memory=not resident)
    return loaders, cost


def fits_on_device(nbytes: int, device: str) -> bool:
    """Whether ``nbytes`` fit in a quarter of a CUDA device's free memory."""
    if torch.device(device).type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return nbytes < free / 4


def run(config: RunConfig, manifest: pd.DataFrame | None = None,
        fingerprint: str | None = None) -> Result:
    """Train ``config.method`` on ``manifest`` (default: ``config.data``) and return its
    ``Result``.

    Seconds per epoch is the median over the epochs after the first ``timing_skip_epochs``;
    test CCC is that of the best dev epoch. For cached methods the one-off cache build is
    reported apart (``cache_build_seconds``, as long as the build took, also when this run
    found the cache already built). ``fingerprint``: the run's, when the caller computed it
    already (``run_or_load``).
    """
    config = config.resolved()
    manifest = load_data(config.data) if manifest is None else manifest
    method = parse_method(config.method)
    ctx, device = distributed.setup(config.device)
    fingerprint = fingerprint or config.fingerprint(
        data_fingerprint(manifest, config.verify_audio), world_size=ctx.world_size)
    config = config.with_(device=device)  # this rank's GPU under a launcher
    prepared = prepare(method, config.backbone, config.seed, config.attention)
    set_tf32(tf32_in_effect(method, config.device))
    reset_peak_memory(config.device)
    if method.kind == "cached":
        loaders, cost = cached_loaders(prepared, manifest, config, ctx)
    else:
        loaders = audio_loaders(manifest, prepared.regressor.backbone.config, config, ctx)
        cost = {}
    model = distributed.wrap(compile_trainable(prepared.model.to(device), method), device)
    fitted = fit(model, loaders["train"], loaders["dev"], config, method.precision)
    history = fitted.history[config.timing_skip_epochs:] or fitted.history
    seconds = median([r["seconds"] for r in history])
    test = evaluate(model, loaders["test"], config.device, method.precision)
    audio_seconds = float(np.sum(loaders["train"].dataset.durations()))
    return Result(
        **describe(method, prepared, config, fingerprint), world_size=ctx.world_size,
        data=config.data, config=config.to_dict(), lr=config.lr, num_epochs=config.num_epochs,
        max_batch_seconds=config.max_batch_seconds, seconds_per_epoch=seconds,
        samples_per_second=len(loaders["train"].dataset) / seconds,
        audio_seconds_per_second=audio_seconds / seconds,
        data_wait_seconds=[round(r["data_wait_seconds"], 3) for r in fitted.history],
        compute_seconds=[round(r["compute_seconds"], 3) for r in fitted.history],
        data_wait_share=sum(r["data_wait_seconds"] for r in history) /
        sum(r["seconds"] for r in history),
        train_clips_per_epoch=[r["clips"] for r in fitted.history],
        best_epoch=fitted.best_epoch, skipped_steps=fitted.skipped_steps,
        train_loss=[round(r["train_loss"], 4) for r in fitted.history],
        dev_ccc=[round(r["dev_mean"], 4) for r in fitted.history],
        **{f"test_ccc_{k}": v for k, v in test["ccc"].items()},
        test_predictions=test["predictions"].numpy().round(5).tolist(),
        test_targets=test["targets"].numpy().round(5).tolist(),
        **cost, **peak_memory(config.device))


def run_or_load(config: RunConfig, manifest: pd.DataFrame | None = None) -> Result:
    """The saved result of exactly this run (same settings, data, backbone files and code) if
    there is one, else ``run``'s, saved for next time. Delete the file to measure again."""
    config = config.resolved()
    manifest = load_data(config.data) if manifest is None else manifest
    fingerprint = config.fingerprint(data_fingerprint(manifest, config.verify_audio),
                                     world_size=distributed.context().world_size)
    name = config.method.replace("(", "").replace(")", "").replace("+", "-")
    path = Path(config.results_root) / "runs" / f"{name}-{fingerprint[:16]}.json"
    if path.is_file():
        values = json.loads(path.read_text())
        if values.get("fingerprint") == fingerprint:
            print(f"loaded the saved result of this run: {shown(path)} (delete it to rerun)")
            return Result.from_dict(values)
    result = run(config, manifest, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    temporary.write_text(json.dumps(result.to_dict()))
    os.replace(temporary, path)
    return result


def shown(path: Path) -> str:
    """A path as a reader should see it: relative to the working folder's project, if inside."""
    from .data import PROJECT_ROOT

    path = path.resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def describe(method: Method, prepared: Prepared, config: RunConfig, fingerprint: str) -> dict:
    """The fields every record shares: what ran, where, how big it is, what produced it."""
    device = config.device
    return {"method": method.name, "kind": method.kind, "layers_or_rank": method.number,
            "backbone": config.backbone, "device": device_name(device),
            "precision": resolve_precision(method.precision, device),
            "tf32": tf32_in_effect(method, device), "attention": config.attention,
            "seed": config.seed,
            "trainable_params": count_parameters(prepared.model, trainable_only=True),
            "total_params": count_parameters(prepared.regressor),
            "fingerprint": fingerprint, "code_version": code_version(),
            "torch": torch.__version__, "python": platform.python_version()}


def time_method(method: Method | str, backbone: str = "random:wav2vec2-base",
                device: str = "cpu", batch_size: int = 2, clip_seconds: float = 3.0,
                num_steps: int = 5, warmup: int = 2, seed: int = 0,
                attention: str = "sdpa") -> TimingResult:
    """Time one training step of ``method`` (median of ``num_steps`` after ``warmup``) on a
    batch of random audio; no convergence, just speed, memory and FLOPs per step, and the
    share of this device's attainable FLOP/s in the same precision (a large matrix product
    timed in the same process). For cached methods the step starts from stored states, and the
    prefix pass is timed on its own.
    """
    method = parse_method(method) if isinstance(method, str) else method
    device = resolve_device(device)
    settings = dict(method=method.name, backbone=backbone, device=device, seed=seed,
                    batch_size=batch_size, clip_seconds=clip_seconds, num_steps=num_steps,
                    warmup=warmup, attention=attention)
    fingerprint = timing_fingerprint(**settings)
    config = RunConfig(method=method.name, backbone=backbone, device=device, seed=seed,
                       attention=attention)
    prepared = prepare(method, backbone, seed, attention)
    set_tf32(tf32_in_effect(method, device))
    precision = resolve_precision(method.precision, device)
    torch.manual_seed(seed)
    batch, extra = random_batch(batch_size, clip_seconds), {}
    if method.kind == "cached":
        batch, extra["cache_seconds_per_batch"] = cached_batch(prepared, batch, device,
                                                               num_steps)
    eager = prepared.model.to(device).train()
    flops = count_flops(training_step(eager, batch, precision, device, lr=0.0))  # unchanged
    model = compile_trainable(eager, method)  # (the counter cannot see into compiled graphs)
    losses = []  # every step's loss, from the first: precision variants are compared on them
    step = training_step(model, batch, precision, device, lr=1e-5, losses=losses)
    reset_peak_memory(device)
    times = time_steps(step, num_steps, warmup, device)
    synchronize(device)
    seconds = median(times)
    memory = peak_memory(device)
    matmul_precision = "tf32" if tf32_in_effect(method, device) else precision
    attainable = attainable_flops(device, matmul_precision)
    return TimingResult(
        **describe(method, prepared, config, fingerprint),
        batch_size=batch_size, clip_seconds=clip_seconds, seconds_per_step=seconds,
        step_times=[round(t, 4) for t in times],
        audio_seconds_per_second=batch_size * clip_seconds / seconds, flops_per_step=flops,
        achieved_flops_per_second=flops / seconds, attainable_flops_per_second=attainable,
        peak_share=peak_share(flops, seconds, attainable),
        first_losses=[float(loss) for loss in losses[: warmup + num_steps]], **extra, **memory)
def training_step(model: nn.Module, batch: dict, precision: str, device: str, lr: float,
                  losses: list | None = None) -> Callable[[], None]:
    """A function that takes one training step of ``model`` on ``batch`` (with an optimizer
    of its own), appending each step's loss to ``losses``."""
    optimizer = make_optimizer(model, lr=lr)
    scaler = make_scaler(precision, torch.device(device))

    def step() -> None:
        loss, _ = train_step(model, batch, optimizer, scaler, precision, torch.device(device))
        if losses is not None:
            losses.append(loss)
    return step


def random_batch(batch_size: int, clip_seconds: float) -> dict[str, torch.Tensor]:
    """A batch of random audio of equal lengths, with random labels."""
    samples = int(clip_seconds * 16_000)
    return {"input_values": torch.randn(batch_size, samples),
            "lengths": torch.full((batch_size,), samples), "labels": torch.rand(batch_size, 3)}


def cached_batch(prepared: Prepared, batch: dict, device: str,
                 num_steps: int) -> tuple[dict[str, torch.Tensor], float]:
    """The stored-state batch a cached step trains on (fp16, as a cache holds it), and the
    seconds the prefix takes to compute it (what the cache saves each epoch)."""
    prefix = prepared.split.prefix.to(device)
    audio = batch["input_values"].to(device)
    prefix_times = time_steps(lambda: prefix(audio), max(2, num_steps // 2), 1, device)
    with torch.no_grad():
        hidden = prefix(audio).to(torch.float16).cpu()
    return ({"hidden": hidden, "frame_lengths": torch.full((len(hidden),), hidden.shape[1]),
             "labels": batch["labels"]}, median(prefix_times))


def run_in_subprocess(task: str, threads: int | None = None, **kwargs) -> dict:
    """Run ``run`` or ``time_method`` in a fresh Python process, so that each method's peak
    memory is its own (a CPU process's peak resident size can only grow); returns its record
    as a dict. ``threads`` caps the process's CPU threads (for running several at once)."""
    command = [sys.executable, "-m", "helpers", "one", task, json.dumps(kwargs)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if finished.returncode != 0:
        raise RunFailed(f"{task} of {kwargs.get('config', kwargs).get('method')} failed "
                        f"(exit {finished.returncode}); its error is printed above")
    return json.loads(finished.stdout.strip().splitlines()[-1])


class RunFailed(RuntimeError):
    """A run in its own process failed; that process has already printed why."""
