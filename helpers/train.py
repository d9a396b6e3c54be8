"""Training and evaluation loops: AdamW, warm-up + linear decay, mixed precision, early stopping
on dev CCC, and per-epoch checkpoints that let an interrupted run resume exactly.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import distributed
from .config import NOT_IN_FINGERPRINT, RunConfig
from .loaders import to_device
from .methods import parse_method
from .metrics import ccc_loss, ccc_report
from .timing import synchronize

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FitResult:
    """What ``fit`` learned: one record per epoch, and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_dev_ccc: float = -math.inf
    skipped_steps: int = 0


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 where the GPU supports it, else fp16 on CUDA, and fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 runs natively: on GPUs that support it, on CPUs with AVX-512 bf16 or AMX.
    Elsewhere it is emulated and slower than fp32 (measured ~10x on a CPU without either)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
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


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train: all a checkpoint needs besides the frozen model
    (named as in the unwrapped model, so one process can load what several saved)."""
    model = distributed.unwrap(model)
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model = distributed.unwrap(model)
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if expected != set(state):
        raise RuntimeError("checkpoint does not match the model's trainable parameters "
                           f"({len(set(state) ^ expected)} differ); it was written for another "
                           "method or model: delete it or use another checkpoint_dir.")
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str = "cpu",
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
               device: torch.device, max_grad_norm: float = 1.0) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """One optimisation step, without waiting for the device: returns the loss and whether
    the step was skipped (a non-finite loss or gradient: an fp16 overflow, or divergence), both
    as tensors on the device, to be read back every few steps rather than every step.

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
    return loss.detach(), skipped


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
        loss, step_skipped = train_step(model, batch, optimizer, scaler, precision, device,
                                         config.max_grad_norm)
        loss_sum += torch.where(step_skipped, 0.0, loss)
        skipped += step_skipped
        scheduler.step()
        steps += 1
        clips += len(batch["labels"])
        if progress is not None:
            progress.update(1)
            if steps % config.log_every == 0:  # the only read-back: every log_every steps
                progress.set_postfix(loss=f"{(loss_sum / max(steps - int(skipped), 1)).item():.3f}")
    synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, skipped, steps, clips = (distributed.sum_over_ranks(x) for x in
                                         (float(loss_sum), int(skipped), steps, clips))
    return {"train_loss": loss_total / max(steps - skipped, 1), "skipped_steps": skipped,
            "steps": steps, "clips": clips, "seconds": seconds, "data_wait_seconds": waited,
            "compute_seconds": seconds - waited}


def fit(model: nn.Module, train_loader: DataLoader, dev_loader: DataLoader,
        config: RunConfig, precision: str | None = None,
        on_epoch_end: Callable[[dict], None] | None = None) -> FitResult:
    """Train the parameters that require grad; keep the weights of the best dev-CCC epoch.

    ``precision`` defaults to the one ``config.method`` names. With ``checkpoint_dir`` set,
    every epoch ends with an atomic checkpoint of the trainable weights, optimizer, scheduler,
    scaler and RNG state; ``resume=True`` picks it up (only if it was written by a run with the
    same settings) and the run continues exactly as if it had never stopped.
    """
    config = config.resolved()
    ctx = distributed.context()
    device = torch.device(config.device)
    precision = resolve_precision(precision or parse_method(config.method).precision, device)
    model.to(device)
    seed_everything(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    total_steps = planned_steps(train_loader, config.num_epochs)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = make_scaler(precision, device)
    result, best_state = FitResult(), trainable_state(model)
    checkpoint = Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
    settings = checkpoint_settings(config, precision, ctx.world_size)
    if config.resume and checkpoint is not None and resumable(checkpoint):
        best_state = _restore(checkpoint, model, optimizer, scheduler, scaler, result, settings)
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
        if record["dev_mean"] > result.best_dev_ccc:
            result.best_epoch, result.best_dev_ccc = epoch, record["dev_mean"]
            best_state = trainable_state(model)
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, scheduler, scaler, result, best_state, settings,
                  ctx)
        if on_epoch_end is not None:
            on_epoch_end(record)
    progress.close()
    steps = sum(record["steps"] for record in result.history)
    if steps and result.skipped_steps == steps:
        raise TrainingFailed(f"every one of the {steps} training steps had a non-finite loss "
                             "or gradient, so the model never trained; lower the learning "
                             "rate, or use bf16 rather than fp16")
    load_trainable_state(model, best_state)
    return result


def resumable(checkpoint: Path) -> bool:
    """Whether to resume from ``checkpoint``: decided by every rank together, since ranks that
    disagreed would run different numbers of collective steps and hang."""
    seen = distributed.gather(checkpoint.is_file())
    if len(set(seen)) > 1:
        raise CheckpointError(f"{checkpoint}: seen by some processes and not by others; put "
                              "checkpoint_dir on storage that every machine shares")
    return seen[0]


def checkpoint_settings(config: RunConfig, precision: str, world_size: int = 1) -> dict:
    """What a checkpoint must share with the run that resumes it: every setting that changes
    the weights (learning rate, epochs, batches, seed, ...), the precision and the number of
    processes (a checkpoint saved under N processes resumes under N)."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in NOT_IN_FINGERPRINT and k != "device"}
    return {**settings, "precision": precision, "world_size": world_size}


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


def _save(path: Path, model, optimizer, scheduler, scaler, result: FitResult,
          best_state: dict, settings: dict, ctx: distributed.Context) -> None:
    """The checkpoint of a fit: trainable weights, optimizer, scheduler, scaler, and every
    rank's RNG state; written by rank 0 alone."""
    generators = distributed.gather(rng_state())  # a collective: every rank takes part
    if ctx.is_main:
        state = {"trainable": trainable_state(model), "best_trainable": best_state,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "result": asdict(result),
                 "settings": json.dumps(settings), "rank_rng": generators}
        atomic_save(state, path)
    distributed.barrier()


def atomic_save(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _restore(path: Path, model, optimizer, scheduler, scaler, result: FitResult,
             settings: dict) -> dict:
    """Load a checkpoint in place (tensors and plain containers only: ``weights_only=True``),
    refusing one written by a run with other settings."""
    state = load_checkpoint(path)
    saved = json.loads(state.get("settings", "{}"))
    changed = sorted(k for k in settings if saved.get(k) != settings[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} then, {settings[k]!r} now" for k in changed)
        raise CheckpointError(f"{path} was written by a run with other settings ({details}); "
                              "resume with the same settings, or delete it to start afresh")
    rank = distributed.context().rank
    load_trainable_state(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    set_rng_state(state["rank_rng"][rank])
    return state["best_trainable"]


class TrainingFailed(RuntimeError):
    """Training produced no usable model (every step skipped); the message says what to try."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed; the message names the file and what to do."""


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` with tensors and plain containers only, and a clear error for a file
    that is empty, truncated or not a checkpoint."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's zip reader and unpickler raise many kinds
        reason = (str(error).splitlines() or [""])[0].split(". ")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}"
                              f"{': ' + reason if reason else ''}); it may be truncated by a "
                              "crash or a full disk: delete it to start afresh") from error


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's generators (all three are used during training)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """Every random generator a training step draws from, as tensors and plain numbers.

    NumPy's matters too: transformers draws Wav2Vec2's SpecAugment masks from it.
    """
    _, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],
            "numpy_rng": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "python_rng": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"][0])  # this process's device
    keys, position, has_gauss, cached = state["numpy_rng"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python_rng"])
