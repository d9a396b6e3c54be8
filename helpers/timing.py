"""Honest measurement: synchronised timers with warm-up, peak memory, throughput and FLOPs.

On a GPU, kernels run asynchronously, so a timer must ``synchronize`` before reading the clock,
and the first steps (allocator growth, kernel selection) must be discarded as warm-up.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so the clock measures work done rather than work queued."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], num_steps: int, warmup: int,
               device: torch.device | str) -> list[float]:
    """Seconds taken by each of ``num_steps`` calls of ``step``, after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(num_steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak on CUDA (the CPU peak is per process and cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> dict[str, float]:
    """Peak memory in MiB: CUDA allocator statistics, or this process's peak resident size.

    The CPU figure covers the whole process so far, which is why benchmarks run each method in
    a process of its own.
    """
    if torch.device(device).type == "cuda":
        return {"peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20}
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_mib": max_rss / (2**20 if sys.platform == "darwin" else 2**10)}


def operator_seconds(step: Callable[[], object], device: torch.device | str,
                     calls: int = 2, top: int = 15) -> dict[str, float]:
    """Where a step's time goes: the ``top`` costliest operators' own time (torch.profiler's
    self time, on the GPU where there is one) in seconds per step, over ``calls`` steps."""
    on_gpu = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, acc_events=True) as profiler:
        for _ in range(calls):
            step()
        synchronize(device)

    def own_time(event) -> float:  # microseconds over all calls
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total
    events = sorted(profiler.key_averages(), key=own_time, reverse=True)[:top]
    return {event.key: round(own_time(event) / 1e6 / calls, 4) for event in events}


def count_flops(step: Callable[[], object]) -> int:
    """Floating-point operations of one call (e.g. a forward + backward training step)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_flops(n: int) -> int:
    """Floating-point operations of one n x n by n x n matrix product (a multiply and an add
    per term): 2 n^3."""
    return 2 * n ** 3


MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
                 "fp16": torch.float16}


def attainable_flops(device: torch.device | str, precision: str = "fp32",
                     n: int | None = None, num_steps: int = 5) -> float:
    """FLOP/s of square matrix products in ``precision`` on ``device``, measured in this
    process: the ceiling a training step in the same precision could reach on this machine (no
    vendor table needed). ``tf32`` is fp32 with TF32 allowed (the caller sets the policy).

    The product's side is ``n``, or by default 8192 on a GPU; on a CPU the best of 128, 256,
    512 and 1024, stopping after the first side whose product takes over
    ``SLOW_PRODUCT_SECONDS``. A CPU that emulates bf16 runs it about a hundred times slower
    than fp32, and fastest on small products (there, seven 1024-sided products took 35 s at a
    quarter of the FLOP/s of 256-sided ones). Measured once per process for each device,
    precision and side: a notebook that times several methods pays for it once."""
    return _attainable_flops(str(torch.device(device)), precision, n, num_steps)


SLOW_PRODUCT_SECONDS = 0.1


@lru_cache(maxsize=None)
def _attainable_flops(device: str, precision: str, n: int | None, num_steps: int) -> float:
    device, dtype = torch.device(device), MATMUL_DTYPES[precision]
    sides = [n] if n else [8192] if device.type == "cuda" else [128, 256, 512, 1024]
    best = 0.0
    for side in sides:
        a, b = (torch.randn(side, side, device=device, dtype=dtype) for _ in "ab")
        seconds = median(time_steps(lambda: a @ b, num_steps, warmup=2, device=device))
        best = max(best, matmul_flops(side) / seconds)
        if seconds > SLOW_PRODUCT_SECONDS:
            break
    return best


def peak_share(flops_per_step: float, seconds_per_step: float, attainable: float) -> float:
    """Achieved FLOP/s of a step as a share of the attainable FLOP/s (model FLOPs
    utilisation)."""
    return flops_per_step / seconds_per_step / attainable


@contextmanager
def stopwatch(label: str = "elapsed") -> Iterator[dict]:
    """Print the wall time of a block (for notebooks): ``with stopwatch("training"): ...``."""
    record = {"seconds": float("nan")}
    start = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = time.perf_counter() - start
        print(f"{label}: {record['seconds']:.1f} s")
