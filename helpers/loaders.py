"""Feeding the device: batches formed under a budget of audio seconds, loader processes, pinned
memory and copies that do not make the host wait.

A batch's cost is its padded size (clips x the longest clip), so batches are formed by total
duration rather than by a clip count, and formed anew every epoch from a fresh random order:
their composition changes between epochs, and each batch carries about as much label spread
as a random one, which a batch-level CCC loss needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .device import cpu_count


@dataclass
class DurationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches whose padded duration (clips x longest clip) stays within ``max_batch_seconds``.

    Training (``shuffle=True``) packs a new random order every epoch; evaluation packs clips
    sorted by length (little padding, the same every time). Under a distributed launcher each
    of ``num_replicas`` ranks takes every ``num_replicas``-th batch of the same epoch plan, so
    the ranks' shares are disjoint and together serve every clip once. Items are yielded as
    ``(index, epoch)``.
    """

    durations: Sequence[float]
    max_batch_seconds: float
    shuffle: bool = True
    seed: int = 0
    num_replicas: int = 1
    rank: int = 0
    epoch: int = 0

    def __post_init__(self) -> None:
        longest = max(self.durations, default=0.0)
        if longest > self.max_batch_seconds:
            raise ValueError(f"max_batch_seconds={self.max_batch_seconds:g} is shorter than the "
                             f"longest clip ({longest:.2f} s after cropping); raise it, or crop "
                             "clips shorter (max_clip_seconds)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[list[int]]:
        """Every rank's batches of this epoch, in the order they are served."""
        durations = np.asarray(self.durations, dtype=float)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(len(durations), generator=generator).tolist()
        else:
            order = np.argsort(durations, kind="stable").tolist()
        batches, batch, longest = [], [], 0.0
        for index in order:
            longer = max(longest, durations[index])
            if batch and (len(batch) + 1) * longer > self.max_batch_seconds:
                batches.append(batch)
                batch, longer = [], durations[index]
            batch.append(index)
            longest = longer
        if batch:
            batches.append(batch)
        return batches

    def shares(self) -> list[list[int]]:
        """This rank's batches. Training splits the largest batches in two until every rank
        has as many (DDP steps in lockstep), so each clip is still served exactly once."""
        batches = self.plan()
        if self.shuffle and self.num_replicas > 1:
            while len(batches) % self.num_replicas:
                largest = max(range(len(batches)), key=lambda i: len(batches[i]))
                batch = batches.pop(largest)
                if len(batch) < 2:
                    raise ValueError(f"{len(batches) + 1} batches cannot be shared evenly by "
                                     f"{self.num_replicas} processes; use fewer processes")
                batches[largest:largest] = [batch[: len(batch) // 2], batch[len(batch) // 2:]]
        return batches[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter([[(index, self.epoch) for index in batch] for batch in self.shares()])

    def __len__(self) -> int:
        return len(self.shares())


def label_spread(batches: Sequence[Sequence[int]], labels: np.ndarray) -> float:
    """Mean over batches (of 2 or more clips) of the within-batch standard deviation of the
    labels, averaged over the label dimensions."""
    spreads = [labels[list(batch)].std(axis=0).mean() for batch in batches if len(batch) > 1]
    return float(np.mean(spreads))


def random_batches(num_items: int, batch_sizes: Sequence[int], seed: int) -> list[list[int]]:
    """Batches of the given sizes drawn from a random order: the reference for label spread."""
    order = np.random.default_rng(seed).permutation(num_items)
    ends = np.cumsum(batch_sizes)
    return [order[end - size:end].tolist() for size, end in zip(batch_sizes, ends)]


def padding_share(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """The share of the padded batches' seconds that is padding (compute spent on zeros)."""
    durations = np.asarray(durations, dtype=float)
    padded = sum(len(b) * durations[list(b)].max() for b in batches)
    return float(1 - sum(durations[list(b)].sum() for b in batches) / padded)


def default_workers(device: str) -> int:
    """Loader processes for ``device``. On the CPU none: the model's threads need every core,
    and slicing a memory-mapped store is cheap (``bench --loader-only`` measures both). On a GPU
    the host's cores are free to prepare batches: up to 4, leaving one core to the loop."""
    if torch.device(device).type != "cuda":
        return 0
    return max(1, min(4, cpu_count() - 1))


def make_loader(dataset: Dataset, sampler: Sampler, collate_fn: Callable, device: str,
                num_workers: int | None = None, pin_memory: bool = True) -> DataLoader:
    """A DataLoader that keeps ``device`` fed: worker processes that stay alive between epochs
    and prefetch, and pinned memory on CUDA (so copies can overlap compute)."""
    workers = default_workers(device) if num_workers is None else num_workers
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                      num_workers=workers, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None,
                      pin_memory=pin_memory and torch.device(device).type == "cuda")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Everything in the batch but the labels, on ``device`` without a host wait; stored fp16
    states travel as fp16 (half the bytes) and become fp32 there."""
    moved = {}
    for key, value in batch.items():
        if key == "labels":
            continue
        value = value.to(device, non_blocking=True)
        moved[key] = value.float() if value.dtype == torch.float16 else value
    return moved
