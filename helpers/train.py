"""Training and evaluation loops: AdamW, warm-up + linear decay, mixed precision, and early
stopping on dev CCC (checkpoints of a fit live in ``checkpoints.py``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import distributed
from .checkpoints import (FitResult, checkpoint_settings, load_trainable_state, restore_checkpoint,
                          resumable, save_checkpoint, seed_everything, trainable_state)
from .config import RunConfig
from .device import resolve_device, resolve_precision
from .loaders import to_device
from .metrics import ccc_loss, ccc_report
from .timing import synchronize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters that train, with its fused kernel: one pass over all of them
    instead of a dozen tensor operations each, which matters most where the rest of the step
    is small (caching)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze something first")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass; a no-op in fp32."""
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str,
             precision: str = "fp32") -> dict:
    """Predictions and targets of ``model`` over ``loader`` (in the dataset's item order), and
    their CCC report.

    Under a distributed launcher each rank predicts its share of the batches; the predictions
    are gathered, put back in item order and scored once (a CCC is not an average of the
    shards' CCCs).
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model = distributed.unwrap(model).eval()
    predictions, targets = [], []
    for batch in loader:
        with autocast(device, precision):
            predictions.append(model(**to_device(batch, device)).float())
        targets.append(batch["labels"])
    predictions = torch.cat(predictions).cpu() if predictions else torch.empty(0, 3)
    targets = torch.cat(targets) if targets else torch.empty(0, 3)  # a rank may get no batch
    shares = distributed.gather((item_order(loader), predictions, targets))
    if shares[0][0] is not None:  # back in the dataset's order, whichever batches ran where
        predictions, targets = reassemble(shares)
    return {"predictions": predictions, "targets": targets,
            "ccc": ccc_report(predictions, targets)}


def item_order(loader: DataLoader) -> list[int] | None:
    """The dataset indices ``loader`` serves, in order (from its batch sampler's plan)."""
    sampler = loader.batch_sampler
    return [key[0] for batch in sampler for key in batch] if hasattr(sampler, "plan") else None


def reassemble(shares: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (indices, predictions, targets) as two tensors in item order."""
    indices = torch.tensor([i for order, _, _ in shares for i in order])
    predictions = torch.cat([p for _, p, _ in shares])
    targets = torch.cat([t for _, _, t in shares])
    if len(set(indices.tolist())) != len(indices):
        raise RuntimeError("ranks evaluated overlapping items; their shares must be disjoint")
    order = torch.argsort(indices)
    return predictions[order], targets[order]


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler for fp16 (whose small gradients underflow without one); disabled
    otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def train_step(model: nn.Module, batch: dict, optimizer, scaler, precision: str,
               device: torch.device, max_grad_norm: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step, without waiting for the device: returns the loss, whether the
    step was skipped (a non-finite loss or gradient: an fp16 overflow, or divergence) and the
    gradient's norm before clipping, all as tensors on the device, to be read back every few
    steps rather than every step.

    A skipped step leaves the weights and the optimizer's state untouched: the fused AdamW
    kernel reads the ``found_inf`` flag on the device, as it does under a GradScaler.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with autocast(device, precision):
        predictions = model(**to_device(batch, device))
    loss = ccc_loss(predictions.float(), batch["labels"].to(device, non_blocking=True))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    skipped = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
    if scaler.is_enabled():
        scaler.step(optimizer)  # skips on the device when the scaler found inf/NaN
    else:
        optimizer.found_inf = skipped.float()
        optimizer.step()
        del optimizer.found_inf
    scaler.update()
    return loss.detach(), skipped, grad_norm.detach()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, scaler,
                    config: RunConfig, precision: str, progress: tqdm | None) -> dict:
    """One pass over ``loader``: the mean loss, the steps skipped, and where the time went
    (seconds waiting for the loader, and the rest: compute, synchronised at the end).

    The wait is measured on the host without synchronising each step (that would stall the
    GPU): on a GPU, kernels queued before a wait may still run during it, so the data-wait
    share is an upper bound of the time the GPU sat idle for data.
    """
    device = torch.device(config.device)
    model.train()
    loss_sum = torch.zeros((), device=device)
    skipped = torch.zeros((), device=device, dtype=torch.long)
    without_gradient = torch.zeros((), device=device, dtype=torch.long)
    steps, clips, waited = 0, 0, 0.0
    synchronize(device)
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        fetch = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - fetch
        if batch is None:
            break
        loss, step_skipped, grad_norm = train_step(model, batch, optimizer, scaler,
                                                   precision, device, config.max_grad_norm)
        loss_sum += torch.where(step_skipped, 0.0, loss)
        skipped += step_skipped
        without_gradient += grad_norm == 0
        scheduler.step()
        steps += 1
        clips += len(batch["labels"])
        if progress is not None:
            progress.update(1)
            if steps % config.log_every == 0:  # the only read-back: every log_every steps
                progress.set_postfix(loss=f"{(loss_sum / max(steps - int(skipped), 1)).item():.3f}")
    synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, skipped, zero, steps, clips = (
        distributed.sum_over_ranks(x) for x in
        (float(loss_sum), int(skipped), int(without_gradient), steps, clips))
    return {"train_loss": loss_total / max(steps - skipped, 1), "skipped_steps": skipped,
            "steps_without_gradient": zero,
            "steps": steps, "clips": clips, "seconds": seconds, "data_wait_seconds": waited,
            "compute_seconds": seconds - waited}


def fit(model: nn.Module, train_loader: DataLoader, dev_loader: DataLoader,
        config: RunConfig, precision: str = "fp32",
        on_epoch_end: Callable[[dict], None] | None = None, inputs: str = "") -> FitResult:
    """Train the parameters that require grad; keep the weights of the best dev-CCC epoch.

    ``precision``: the method's (``run`` passes it from the parsed method). With
    ``checkpoint_dir`` set,
    every epoch ends with an atomic checkpoint of the trainable weights, optimizer, scheduler,
    scaler and RNG state; ``resume=True`` picks it up (only if it was written by a run with the
    same settings and ``inputs``: the content fingerprint of the data and backbone) and the
    run continues exactly as if it had never stopped.
    """
    config = config.with_(device=resolve_device(config.device))
    ctx = distributed.context()
    device = torch.device(config.device)
    precision = resolve_precision(precision, device)
    model.to(device)
    seed_everything(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    total_steps = planned_steps(train_loader, config.num_epochs)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = make_scaler(precision, device)
    result, best_state = FitResult(), trainable_state(model)
    checkpoint = Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
    settings = checkpoint_settings(config, precision, ctx.world_size, inputs)
    if config.resume and checkpoint is None:
        raise ValueError("resume=True (--resume) needs checkpoint_dir (--checkpoint-dir): the "
                         "folder the interrupted run wrote its checkpoint to")
    if config.resume and resumable(checkpoint):
        best_state = restore_checkpoint(checkpoint, model, optimizer, scheduler, scaler, result,
                                        settings)
    progress = tqdm(total=total_steps,
                    initial=sum(r["steps"] for r in result.history) // ctx.world_size,
                    desc="training", disable=not (config.progress and ctx.is_main),
                    mininterval=5)
    for epoch in range(len(result.history), config.num_epochs):
        if _patience_exhausted(result, config.patience):
            break
        for part in (train_loader.batch_sampler, train_loader.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        record = {"epoch": epoch, **train_one_epoch(model, train_loader, optimizer, scheduler,
                                                    scaler, config, precision, progress)}
        record.update({f"dev_{k}": v for k, v in
                       evaluate(model, dev_loader, config.device, precision)["ccc"].items()})
        result.history.append(record)
        result.skipped_steps += record["skipped_steps"]
        if not math.isfinite(record["dev_mean"]):
            raise TrainingFailed(f"dev CCC is {record['dev_mean']} after epoch {epoch}: the "
                                 "model's predictions are no longer finite, so training "
                                 f"diverged at lr {config.lr:g}; lower the learning rate")
        if record["dev_mean"] > result.best_dev_ccc:
            result.best_epoch, result.best_dev_ccc = epoch, record["dev_mean"]
            best_state = trainable_state(model)
        if ctx.is_main and not config.progress:  # no bar (a notebook): a line per epoch
            print(f"epoch {epoch + 1}/{config.num_epochs}: train loss "
                  f"{record['train_loss']:.3f}, dev CCC {record['dev_mean']:.3f} "
                  f"({record['seconds']:.0f} s)", flush=True)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, result, best_state,
                            settings, ctx)
        if on_epoch_end is not None:
            on_epoch_end(record)
    progress.close()
    check_trained(result.history)
    load_trainable_state(model, best_state)
    return result


def check_trained(history: list[dict]) -> None:
    """Raise ``TrainingFailed`` for a run that never learned: every step skipped (non-finite),
    or every step without a gradient (the loss stuck at its starting value: a CCC over one
    clip, or over clips with equal predictions, has no gradient)."""
    steps = sum(record["steps"] for record in history)
    if not steps:
        return
    if sum(record["skipped_steps"] for record in history) == steps:
        raise TrainingFailed(f"every one of the {steps} training steps had a non-finite loss "
                             "or gradient, so the model never trained; lower the learning "
                             "rate, or use bf16 rather than fp16")
    if sum(record.get("steps_without_gradient", 0) for record in history) == steps:
        losses = ", ".join(f"{record['train_loss']:.3f}" for record in history)
        raise TrainingFailed(f"all {steps} training steps had a zero gradient "
                             f"(train loss per epoch: {losses}), so the model never learned; a "
                             "batch of one clip has no CCC gradient: raise max_batch_seconds "
                             "(--max-batch-seconds) or add training clips")


def planned_steps(loader: DataLoader, num_epochs: int) -> int:
    """Training steps over ``num_epochs`` (duration-budgeted batches are re-formed every
    epoch, so their number varies a little: the schedule counts each epoch's own)."""
    sampler = loader.batch_sampler
    if not hasattr(sampler, "set_epoch"):
        return num_epochs * len(loader)
    counts = []
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        counts.append(len(sampler))
    sampler.set_epoch(0)
    return sum(counts)


def _patience_exhausted(result: FitResult, patience: int | None) -> bool:
    return patience is not None and len(result.history) - 1 - result.best_epoch >= patience


class TrainingFailed(RuntimeError):
    """Training produced no usable model (every step skipped); the message says what to try."""


