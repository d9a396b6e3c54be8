"""Scale-out on PyTorch's own engine: DistributedDataParallel under ``torchrun``.

The same code runs in one process and under ``torchrun --nproc_per_node N -m helpers train``:
``context()`` reads the launcher's environment (world size 1 without it), each rank trains on
a disjoint share of every epoch's batches (``DurationBatchSampler``), DDP averages the
gradients, evaluation gathers every rank's predictions and scores them once, stores and caches
are built by rank 0 while the others wait, and only rank 0 writes files or draws progress bars.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank ``rank`` of ``world_size``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """The launcher's view of this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return Context(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: str) -> tuple[Context, str]:
    """Join the process group when launched with several processes (NCCL on CUDA, gloo on the
    CPU); returns the context and this rank's device (``cuda:<local rank>`` on GPUs)."""
    ctx = context()
    if ctx.world_size == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return ctx, device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(ctx.local_rank)
        device = f"cuda:{ctx.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return ctx, device


# what gloo and NCCL say when another process of the group went away
PEER_GONE = ("Connection closed by peer", "Connection reset by peer",
             "NCCL communicator was aborted", "Broken pipe")


class PeerLost(RuntimeError):
    """Another process of a distributed run stopped; the message says what to do."""


@contextmanager
def peers_watched() -> Iterator[None]:
    """Turn the process group's raw error for a vanished peer (a rank killed or crashed) into
    one message that says what happened and how to go on."""
    try:
        yield
    except RuntimeError as error:
        if not (context().distributed and any(text in str(error) for text in PEER_GONE)):
            raise
        raise PeerLost(f"rank {context().rank}: another process of this run stopped (killed, "
                       "or crashed: its own output says why), so this one cannot go on; start "
                       "every process again, with --resume if the run had --checkpoint-dir "
                       "(it goes on from the last finished epoch)") from error


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """The first process of each machine runs the block first (building a store, say) while
    the others wait; then they run it and find the work done. On storage shared between
    machines, the stores' atomic publication keeps one of two finished copies and never
    serves a half-built one."""
    first = context().local_rank == 0
    if dist.is_initialized() and not first:
        dist.barrier()
    yield
    if dist.is_initialized() and first:
        dist.barrier()


def wrap(model: nn.Module, device: str) -> nn.Module:
    """``model`` in DistributedDataParallel when the job has several processes.

    LayerDrop skips whole layers at random and SpecAugment's mask embedding is used only when a
    mask is drawn, so a step may leave trainable parameters without gradients; DDP then needs
    ``find_unused_parameters=True``, which costs one extra pass over the autograd graph per
    step. It is switched on only for models where that can happen (frozen layers are not
    trainable and never count).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    device_ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=may_skip_parameters(model))


def may_skip_parameters(model: nn.Module) -> bool:
    """Whether a step can leave a trainable parameter unused (LayerDrop, SpecAugment)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "layerdrop"):
            continue
        masked = getattr(module, "masked_spec_embed", None)
        if config.layerdrop > 0 or (masked is not None and masked.requires_grad):
            return True
    return False


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather(values: object) -> list:
    """Every rank's ``values``, in rank order (just ``[values]`` in one process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [values]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return gathered


def sum_over_ranks(value: float) -> float:
    return sum(gather(value))
