"""Planning a scale-out on paper: epoch time on N GPUs from a measured time per step, and what
a layer cache costs on disk, in host memory and on the device.

The plan assumes ideal data parallelism (N GPUs take N times the batches per second). Real
jobs lose some of that to gradient all-reduce and stragglers; the table says so in its name.
"""

from __future__ import annotations

import pandas as pd

from .constants import FRAME_RATE

CACHE_BYTES_PER_VALUE = 2  # fp16


def epoch_hours(step_seconds: float, batch_audio_seconds: float, corpus_hours: float,
                gpus: int) -> float:
    """Hours per epoch over ``corpus_hours`` of audio when each of ``gpus`` GPUs takes a step
    of ``batch_audio_seconds`` of audio in ``step_seconds`` (ideal scaling)."""
    steps = corpus_hours * 3600 / batch_audio_seconds
    return steps * step_seconds / gpus / 3600


def epoch_plan(step_seconds: dict[str, float], batch_audio_seconds: float, corpus_hours: float,
               gpus: tuple[int, ...] = (1, 4, 8, 16)) -> pd.DataFrame:
    """Minutes per epoch for each method (rows) on each number of GPUs (columns)."""
    return pd.DataFrame({f"{n} GPU{'s' if n > 1 else ''}": {
        method: round(60 * epoch_hours(seconds, batch_audio_seconds, corpus_hours, n), 1)
        for method, seconds in step_seconds.items()} for n in gpus})


def cache_gib(corpus_hours: float, width: int) -> float:
    """GiB of fp16 hidden states for ``corpus_hours`` of audio at a layer of ``width``."""
    return corpus_hours * 3600 * FRAME_RATE * width * CACHE_BYTES_PER_VALUE / 2**30


def cache_plan(corpus_hours: float, widths: dict[str, int], host_gib: float,
               device_gib: float) -> pd.DataFrame:
    """The cache at one layer for each backbone: its size, and whether it fits in the host's
    memory (page cache) and in a quarter of one GPU's (the share ``cached_loaders`` allows)."""
    rows = {}
    for name, width in widths.items():
        size = cache_gib(corpus_hours, width)
        rows[name] = {"cache (GiB)": round(size, 1), f"fits in {host_gib:g} GiB of RAM": size <
                      host_gib, f"fits in a quarter of {device_gib:g} GiB of GPU": size <
                      device_gib / 4}
    return pd.DataFrame(rows).T
