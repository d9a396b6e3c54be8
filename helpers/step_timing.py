"""Timing one training step: speed, memory and FLOPs per step on a batch of random audio.

``time_method`` takes a ``TimingConfig`` (or a method name and settings as keywords) and
returns a ``TimingResult``; no convergence, just what a step costs and the share of this
device's attainable FLOP/s it reaches.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import RunConfig, TimingConfig
from .constants import SAMPLE_RATE
from .device import resolve_device, resolve_precision
from .fingerprints import timing_fingerprint
from .methods import Prepared, parse_method, prepare
from .results import TimingResult
from .run import describe
from .speedups import compile_trainable, set_tf32, tf32_in_effect
from .timing import (attainable_flops, count_flops, median, peak_memory, peak_share,
                     reset_peak_memory, synchronize, time_steps)
from .train import make_optimizer, make_scaler, train_step


def time_method(config: TimingConfig | str, backbone: str | None = None,
                device: str | None = None, **settings) -> TimingResult:
    """Time one training step (median of ``num_steps`` after ``warmup``) of the method a
    ``TimingConfig`` names. ``time_method("full", "random:wav2vec2-base", "cpu",
    num_steps=3)`` is shorthand for the same with a ``TimingConfig`` built from them.

    For cached methods the step starts from stored states, and the prefix pass is timed on
    its own. The share of peak compares the step's FLOP/s with a large matrix product timed in
    the same process and precision.
    """
    if isinstance(config, str):
        given = {"backbone": backbone, "device": device}
        config = TimingConfig(method=config, **{k: v for k, v in given.items() if v},
                              **settings)
    method = parse_method(config.method)
    config = config.with_(method=method.name, device=resolve_device(config.device))
    device = config.device
    prepared = prepare(method, config.backbone, config.seed, config.attention)
    set_tf32(tf32_in_effect(method, device))
    precision = resolve_precision(method.precision, device)
    torch.manual_seed(config.seed)
    batch, extra = random_batch(config.batch_size, config.clip_seconds), {}
    if method.spec.trains_on_cache:
        batch, extra["cache_seconds_per_batch"] = cached_batch(prepared, batch, device,
                                                               config.num_steps)
    eager = prepared.model.to(device).train()
    flops = count_flops(training_step(eager, batch, precision, device, lr=0.0))  # unchanged
    model = compile_trainable(eager, method)  # (the counter cannot see into compiled graphs)
    losses = []  # every step's loss, from the first: precision variants are compared on them
    step = training_step(model, batch, precision, device, lr=1e-5, losses=losses)
    reset_peak_memory(device)
    times = time_steps(step, config.num_steps, config.warmup, device)
    synchronize(device)
    seconds = median(times)
    memory = peak_memory(device)
    matmul_precision = "tf32" if tf32_in_effect(method, device) else precision
    attainable = attainable_flops(device, matmul_precision)
    return TimingResult(
        **describe(method, prepared, config, timing_fingerprint(config)),
        batch_size=config.batch_size, clip_seconds=config.clip_seconds,
        seconds_per_step=seconds, step_times=[round(t, 4) for t in times],
        audio_seconds_per_second=config.batch_size * config.clip_seconds / seconds,
        flops_per_step=flops, achieved_flops_per_second=flops / seconds,
        attainable_flops_per_second=attainable, peak_share=peak_share(flops, seconds, attainable),
        first_losses=[float(loss) for loss in losses[: config.warmup + config.num_steps]],
        **extra, **memory)


def training_step(model: nn.Module, batch: dict, precision: str, device: str, lr: float,
                  losses: list | None = None) -> Callable[[], None]:
    """A function that takes one training step of ``model`` on ``batch`` (with an optimizer
    of its own), appending each step's loss to ``losses``."""
    optimizer = make_optimizer(model, lr, RunConfig.weight_decay)
    scaler = make_scaler(precision, torch.device(device))

    def step() -> None:
        loss, _ = train_step(model, batch, optimizer, scaler, precision, torch.device(device))
        if losses is not None:
            losses.append(loss)
    return step


def random_batch(batch_size: int, clip_seconds: float) -> dict[str, torch.Tensor]:
    """A batch of random audio of equal lengths, with random labels."""
    samples = int(clip_seconds * SAMPLE_RATE)
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
