"""One comparable training run: config -> prepared model + loaders (+ cache) -> fit -> Result.

``run(config)`` trains the method a ``RunConfig`` names and returns a ``Result``;
``run_or_load(config)`` returns the saved result of exactly that run when there is one.
"""

from __future__ import annotations

import json
import platform
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from . import distributed
from .backbone import attention_kernel, count_parameters
from .cache import collate_cached, get_cache
from .config import RunConfig
from .constants import FRAME_RATE, SAMPLE_RATE, SPLITS
from .corpora import load_data
from .dataset import SpeechDataset, collate_for, waveform_store
from .device import device_name, resolve_device, resolve_precision
from .files import check_writable, saved_or_computed
from .fingerprints import backbone_fingerprint, code_version, digest, run_fingerprint
from .loaders import DurationBatchSampler, make_loader
from .manifests import check_splits, data_fingerprint
from .methods import Method, Prepared, parse_method, prepare
from .results import Result
from .speedups import compile_trainable, pad_multiple, set_tf32, tf32_in_effect
from .store import Store
from .timing import median, peak_memory, reset_peak_memory
from .train import TrainingFailed, evaluate, fit


def store_root(config: RunConfig) -> Path:
    """Where decoded waveforms and layer caches live: under the results root."""
    return Path(config.results_root) / "cache"


def decoded_store(manifest: pd.DataFrame, config: RunConfig,
                  ctx: distributed.Context = distributed.Context()) -> Store:
    """The manifest's waveform store, built by the first process of each machine."""
    with distributed.main_first():
        return waveform_store(manifest, store_root(config), verify=config.verify_audio,
                              progress=config.progress and ctx.is_main)


def audio_loaders(manifest: pd.DataFrame, backbone_config, config: RunConfig, method: Method,
                  ctx: distributed.Context = distributed.Context()) -> dict[str, DataLoader]:
    """Loaders over the decoded waveform store, batched by duration (random crops and a new
    batch plan every epoch when training; centre crops, sorted by length, otherwise); under a
    launcher, each rank's share of the batches."""
    store = decoded_store(manifest, config, ctx)
    collate = collate_for(backbone_config, pad_multiple(method, SAMPLE_RATE))
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
                   method: Method, ctx: distributed.Context = distributed.Context()
                   ) -> tuple[dict[str, DataLoader], dict]:
    """Loaders over cached prefix states (built once, reused across runs) and what the cache
    cost: the seconds its build took (when it was built, this run or an earlier one) and its
    size. On a GPU, a cache that fits in a quarter of the free memory moves there whole."""
    progress = config.progress and ctx.is_main
    store = decoded_store(manifest, config, ctx)
    collate = partial(collate_cached, pad_multiple=pad_multiple(method, FRAME_RATE))
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
    config = config.with_(device=resolve_device(config.device))
    check_writable(config.results_root)
    manifest = load_data(config.data) if manifest is None else manifest
    check_splits(manifest, config.data)
    check_batch_budget(manifest, config)
    method = parse_method(config.method)
    ctx, device = distributed.setup(config.device)
    data = data_fingerprint(manifest, config.verify_audio)
    fingerprint = fingerprint or run_fingerprint(config, data, world_size=ctx.world_size)
    inputs = digest(json.dumps([data, backbone_fingerprint(config.backbone)]))
    config = config.with_(device=device)  # this rank's GPU under a launcher
    if not config.progress:  # nor transformers' bar while loading the backbone
        hf_logging.disable_progress_bar()
    prepared = prepare(method, config.backbone, config.seed, config.attention, config.pooling)
    set_tf32(tf32_in_effect(method, config.device))
    reset_peak_memory(config.device)
    if method.spec.trains_on_cache:
        loaders, cost = cached_loaders(prepared, manifest, config, method, ctx)
    else:
        loaders = audio_loaders(manifest, prepared.regressor.backbone.config, config, method,
                                ctx)
        cost = {}
    model = distributed.wrap(compile_trainable(prepared.model.to(device), method), device)
    fitted = fit(model, loaders["train"], loaders["dev"], config, method.precision,
                 inputs=inputs)
    history = fitted.history[config.timing_skip_epochs:] or fitted.history
    seconds = median([r["seconds"] for r in history])
    test = evaluate(model, loaders["test"], config.device, method.precision)
    check_predictions(test["predictions"], "test", config.lr)
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


def check_batch_budget(manifest: pd.DataFrame, config: RunConfig) -> None:
    """Refuse a batch budget that holds only one training clip: the CCC of one clip is
    undefined, so such a batch has no gradient and the model would never train."""
    durations = manifest.loc[manifest["split"] == "train", "duration"]
    longest = min(config.max_clip_seconds, float(durations.max()))
    if config.max_batch_seconds < 2 * longest:
        raise ValueError(f"max_batch_seconds={config.max_batch_seconds:g} holds only one "
                         f"training clip of up to {longest:.2f} s, and a batch of one clip has "
                         f"no CCC gradient; set --max-batch-seconds to at least {2 * longest:g}"
                         " (or shorten --max-clip-seconds)")


def check_predictions(predictions: torch.Tensor, split: str, lr: float) -> None:
    """Stop a run whose predictions are not finite or far off the labels' 0-1 scale: training
    diverged, and its scores would mean nothing."""
    largest = predictions.abs().max().item() if len(predictions) else 0.0
    if not np.isfinite(largest) or largest > DIVERGED:
        raise TrainingFailed(f"{split} predictions reach {largest:.3g} on labels scaled to "
                             f"0-1: training diverged at lr {lr:g}; lower the learning rate "
                             "(--lr)")


DIVERGED = 10.0  # predictions this far outside the 0-1 label scale mean training diverged


def run_or_load(config: RunConfig, manifest: pd.DataFrame | None = None) -> Result:
    """The saved result of exactly this run (same settings, data, backbone files, code and
    hardware) if there is one, else ``run``'s, saved for next time. Delete the file to measure
    again."""
    config = config.with_(device=resolve_device(config.device))
    manifest = load_data(config.data) if manifest is None else manifest
    fingerprint = run_fingerprint(config, data_fingerprint(manifest, config.verify_audio),
                                  world_size=distributed.context().world_size)
    name = parse_method(config.method).name.replace("(", "").replace(")", "").replace("+", "-")
    return saved_or_computed(Path(config.results_root) / "runs", name,
                             lambda: run(config, manifest, fingerprint),
                             encode=Result.to_dict, decode=Result.from_dict, key=fingerprint,
                             method=config.method)


def describe(method: Method, prepared: Prepared, config: RunConfig | object,
             fingerprint: str) -> dict:
    """The fields every record shares: what ran, where, how big it is, what produced it."""
    device = config.device
    return {"method": method.name, "kind": method.kind, "layers_or_rank": method.number,
            "backbone": config.backbone, "device": device_name(device),
            "precision": resolve_precision(method.precision, device),
            "tf32": tf32_in_effect(method, device),
            "family": prepared.regressor.backbone.config.model_type,
            "attention": attention_kernel(prepared.regressor.backbone.config.model_type,
                                          config.attention),
            "pooling": config.pooling,
            "seed": config.seed,
            "trainable_params": count_parameters(prepared.model, trainable_only=True),
            "total_params": count_parameters(prepared.regressor),
            "fingerprint": fingerprint, "code_version": code_version(),
            "torch": torch.__version__, "python": platform.python_version()}
