"""Checkpoints of a fit: the trainable weights, optimizer, scheduler, scaler and every random
generator, saved atomically after each epoch so that an interrupted run resumes exactly."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .config import NOT_IN_FINGERPRINT, RunConfig
from .files import atomic_write


@dataclass
class FitResult:
    """What ``fit`` learned: one record per epoch, and the epoch whose weights were kept."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_dev_ccc: float = -math.inf
    skipped_steps: int = 0


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



def resumable(checkpoint: Path) -> bool:
    """Whether to resume from ``checkpoint``: decided by every rank together, since ranks that
    disagreed would run different numbers of collective steps and hang."""
    seen = distributed.gather(checkpoint.is_file())
    if len(set(seen)) > 1:
        raise CheckpointError(f"{checkpoint}: seen by some processes and not by others; put "
                              "checkpoint_dir on storage that every machine shares")
    return seen[0]


INPUTS = "data and backbone (content fingerprint)"


def checkpoint_settings(config: RunConfig, precision: str, world_size: int = 1,
                        inputs: str = "") -> dict:
    """What a checkpoint must share with the run that resumes it: every setting that changes
    the weights (learning rate, epochs, batches, seed, ...), the precision, the number of
    processes (a checkpoint saved under N processes resumes under N), and ``inputs``, a
    fingerprint of what the data and the backbone *contain* (the same data path with edited
    labels, or a backbone folder with other weights, is other inputs)."""
    settings = {k: v for k, v in config.to_dict().items()
                if k not in NOT_IN_FINGERPRINT and k != "device"}
    return {**settings, "precision": precision, "world_size": world_size, INPUTS: inputs}



def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, result: FitResult,
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
    """``torch.save`` through the atomic writer: a crash never leaves half a file."""
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def restore_checkpoint(path: Path, model, optimizer, scheduler, scaler, result: FitResult,
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
