"""Training and evaluation loops: AdamW, warm-up + linear decay, mixed precision, early stopping
on dev CCC, and per-epoch checkpoints that let an interrupted run resume exactly.
"""

from __future__ import annotations

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

from .metrics import ccc_loss, ccc_report
from .timing import synchronize

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Everything that decides how a model trains (sizes and names are the series' own)."""

    num_epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    patience: int | None = 3
    device: str = "cpu"
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = True


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


def model_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Everything in the batch but the labels (audio and lengths, or cached states and frame
    counts), moved to ``device``."""
    return {key: value.to(device) for key, value in batch.items() if key != "labels"}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train: all a checkpoint needs besides the frozen model."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if expected != set(state):
        raise RuntimeError("checkpoint does not match the model's trainable parameters "
                           f"({len(set(state) ^ expected)} differ); it was written for another "
                           "method or model: delete it or use another checkpoint_dir.")
    model.load_state_dict(state, strict=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str = "cpu",
             precision: str = "fp32") -> dict:
    """Predictions, targets and the CCC report of ``model`` over ``loader``."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model.eval()
    predictions, targets = [], []
    for batch in loader:
        with autocast(device, precision):
            predictions.append(model(**model_inputs(batch, device)).float().cpu())
        targets.append(batch["labels"])
    predictions, targets = torch.cat(predictions), torch.cat(targets)
    return {"predictions": predictions, "targets": targets,
            "ccc": ccc_report(predictions, targets)}


def train_step(model: nn.Module, batch: dict, optimizer, scaler, precision: str,
               device: torch.device, max_grad_norm: float = 1.0) -> float | None:
    """One optimisation step; returns the loss, or None if the step was skipped because the
    loss or gradients were not finite (an fp16 overflow, or divergence)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with autocast(device, precision):
        predictions = model(**model_inputs(batch, device))
    loss = ccc_loss(predictions.float(), batch["labels"].to(device))  # the loss in fp32
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
    if finite:
        scaler.step(optimizer)
    scaler.update()
    return loss.item() if finite else None


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, scheduler, scaler,
                    config: TrainConfig, precision: str, progress: tqdm | None) -> dict:
    """One pass over ``loader``; returns the mean loss and how many steps were skipped."""
    device = torch.device(config.device)
    model.train()
    losses, skipped = [], 0
    for batch in loader:
        loss = train_step(model, batch, optimizer, scaler, precision, device,
                          config.max_grad_norm)
        if loss is None:
            skipped += 1
        else:
            losses.append(loss)
        scheduler.step()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "nan")
    return {"train_loss": sum(losses) / max(len(losses), 1), "skipped_steps": skipped}


def fit(model: nn.Module, train_loader: DataLoader, dev_loader: DataLoader,
        config: TrainConfig, on_epoch_end: Callable[[dict], None] | None = None) -> FitResult:
    """Train the parameters that require grad; keep the weights of the best dev-CCC epoch.

    With ``checkpoint_dir`` set, every epoch ends with an atomic checkpoint of the trainable
    weights, optimizer, scheduler, scaler and RNG state; ``resume=True`` picks it up and the
    run continues exactly as if it had never stopped.
    """
    device = torch.device(config.device)
    precision = resolve_precision(config.precision, device)
    model.to(device)
    seed_everything(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    total_steps = config.num_epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    result, best_state = FitResult(), trainable_state(model)
    checkpoint = Path(config.checkpoint_dir) / "last.pt" if config.checkpoint_dir else None
    if config.resume and checkpoint is not None and checkpoint.is_file():
        best_state = _restore(checkpoint, model, optimizer, scheduler, scaler, result)
    progress = tqdm(total=total_steps, initial=len(result.history) * len(train_loader),
                    desc="training", disable=not config.progress)
    for epoch in range(len(result.history), config.num_epochs):
        if _patience_exhausted(result, config.patience):
            break
        for part in (train_loader.batch_sampler, train_loader.dataset):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        synchronize(device)
        start = time.perf_counter()
        record = {"epoch": epoch, **train_one_epoch(model, train_loader, optimizer, scheduler,
                                                    scaler, config, precision, progress)}
        synchronize(device)
        record["seconds"] = time.perf_counter() - start
        record.update({f"dev_{k}": v for k, v in
                       evaluate(model, dev_loader, config.device, precision)["ccc"].items()})
        result.history.append(record)
        result.skipped_steps += record["skipped_steps"]
        if record["dev_mean"] > result.best_dev_ccc:
            result.best_epoch, result.best_dev_ccc = epoch, record["dev_mean"]
            best_state = trainable_state(model)
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, scheduler, scaler, result, best_state)
        if on_epoch_end is not None:
            on_epoch_end(record)
    progress.close()
    load_trainable_state(model, best_state)
    return result


def _patience_exhausted(result: FitResult, patience: int | None) -> bool:
    return patience is not None and len(result.history) - 1 - result.best_epoch >= patience


def _save(path: Path, model, optimizer, scheduler, scaler, result: FitResult,
          best_state: dict) -> None:
    """The checkpoint of a fit: trainable weights, optimizer, scheduler, scaler, RNG state."""
    state = {"trainable": trainable_state(model), "best_trainable": best_state,
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "result": asdict(result),
             **rng_state()}
    atomic_save(state, path)


def atomic_save(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _restore(path: Path, model, optimizer, scheduler, scaler, result: FitResult) -> dict:
    """Load a checkpoint in place (tensors and plain containers only: ``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_trainable_state(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    set_rng_state(state)
    return state["best_trainable"]


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
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "python_rng": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    keys, position, has_gauss, cached = state["numpy_rng"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python_rng"])
