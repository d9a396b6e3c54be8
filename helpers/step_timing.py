"""Timing one training step, or the finetuned model's inference: speed, memory and FLOPs per
step on a batch of random audio.

``time_method`` takes a ``TimingConfig`` (or a method name and settings as keywords) and
returns a ``TimingResult``; no convergence, just what a step costs and the share of this
device's attainable FLOP/s it reaches. With ``phase="inference"`` (or ``"merged"``) it times
what deployment pays instead: the forward pass of the finetuned model, and the size of what
must be shipped.
"""

from __future__ import annotations

from typing import Callable

import torch
from peft import PeftModel
from torch import nn

from .config import RunConfig, TimingConfig
from .constants import SAMPLE_RATE
from .device import resolve_device, resolve_precision
from .fingerprints import timing_fingerprint
from .methods import Method, Prepared, parse_method, prepare
from .results import TimingResult
from .run import describe
from .speedups import compile_trainable, set_tf32, tf32_in_effect
from .timing import (attainable_flops, count_flops, median, operator_seconds, peak_memory,
                     peak_share, reset_peak_memory, synchronize, time_steps)
from .train import autocast, make_optimizer, make_scaler, train_step


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
    prepared = prepare(method, config.backbone, config.seed, config.attention, config.pooling)
    set_tf32(tf32_in_effect(method, device))
    precision = resolve_precision(method.precision, device)
    torch.manual_seed(config.seed)
    batch, extra = random_batch(config.batch_size, config.clip_seconds), shipped(prepared)
    if config.phase != "train":
        return time_inference(method, prepared, config, batch, precision, extra)
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
    return timing_record(method, prepared, config, times, flops, precision,
                         first_losses=[float(loss) for loss in
                                       losses[: config.warmup + config.num_steps]],
                         **measured_after(step, config, extra))


def time_inference(method: Method, prepared: Prepared, config: TimingConfig, batch: dict,
                   precision: str, extra: dict) -> TimingResult:
    """The finetuned model's forward pass on ``batch``, as deployed: eval mode, no gradients,
    the whole model on audio (a cached method's prefix runs live: there is no cache of new
    audio), adapters merged into the weights first with ``phase="merged"``."""
    device = torch.device(config.device)
    model = prepared.split or prepared.model
    if config.phase == "merged" and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model = model.to(device).eval()
    extra["weights_mib"] = state_mib(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}

    def forward() -> None:
        with torch.no_grad(), autocast(device, precision):  # (inference_mode breaks weight norm)
            model(**inputs)
    flops = count_flops(forward)
    reset_peak_memory(device)
    times = time_steps(forward, config.num_steps, config.warmup, device)
    return timing_record(method, prepared, config, times, flops, precision,
                         **measured_after(forward, config, extra))


def measured_after(step: Callable[[], None], config: TimingConfig, extra: dict) -> dict:
    """The timed steps' peak memory, then, with ``config.profile``, where a step's time goes
    (profiled after the peak is read, so the profiler's own memory is not in it)."""
    measured = {**extra, **peak_memory(config.device)}
    if config.profile:
        measured["operator_seconds"] = operator_seconds(step, config.device)
    return measured


def timing_record(method: Method, prepared: Prepared, config: TimingConfig, times: list[float],
                  flops: int, precision: str, **measured) -> TimingResult:
    """The record of a timing: the median of ``times`` and its FLOP rate against what a large
    matrix product reaches here in the same precision (measured after the timed steps, so its
    memory is not in their peak)."""
    seconds = median(times)
    tf32 = tf32_in_effect(method, config.device)
    attainable = attainable_flops(config.device, "tf32" if tf32 else precision)
    return TimingResult(
        **describe(method, prepared, config, timing_fingerprint(config)), phase=config.phase,
        batch_size=config.batch_size, clip_seconds=config.clip_seconds,
        seconds_per_step=seconds, step_times=[round(t, 4) for t in times],
        audio_seconds_per_second=config.batch_size * config.clip_seconds / seconds,
        flops_per_step=flops, achieved_flops_per_second=flops / seconds,
        attainable_flops_per_second=attainable, peak_share=peak_share(flops, seconds, attainable),
        **measured)


def state_mib(model: nn.Module) -> float:
    """Size of a model's weights and buffers (what its safetensors file holds, less a header);
    a tensor reached by two names (a split model's prefix and suffix share one) counts once."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def shipped(prepared: Prepared) -> dict[str, float]:
    """What a finetuned model weighs: as it runs (``weights_mib``), and the part the method
    trained (``trained_mib``), all that must be shipped beside the public backbone."""
    trained = sum(p.numel() * p.element_size() for p in prepared.model.parameters()
                  if p.requires_grad)
    return {"weights_mib": state_mib(prepared.split or prepared.model),
            "trained_mib": trained / 2**20}


def training_step(model: nn.Module, batch: dict, precision: str, device: str, lr: float,
                  losses: list | None = None) -> Callable[[], None]:
    """A function that takes one training step of ``model`` on ``batch`` (with an optimizer
    of its own), appending each step's loss to ``losses``."""
    optimizer = make_optimizer(model, lr, RunConfig.weight_decay)
    scaler = make_scaler(precision, torch.device(device))

    def step() -> None:
        loss, *_ = train_step(model, batch, optimizer, scaler, precision,
                              torch.device(device))
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
