"""The hardware a run uses: choosing the device, naming it in every record, and what it can do
(native bf16, cores)."""

from __future__ import annotations

import os
import platform

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a CUDA device that is not
    there is refused with what to do."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no usable CUDA GPU (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         "visible GPU(s), numbered from 0")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
    return device


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 runs natively: on GPUs that support it, on CPUs with AVX-512 bf16 or AMX.
    Elsewhere it is emulated and slower than fp32 (measured ~10x on a CPU without either).
    ``auto`` is asked about the device it resolves to."""
    device = torch.device(resolve_device(str(device)))
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 where the GPU supports it, else fp16 on CUDA, and fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device, recorded with every measurement: the GPU's model,
    or the CPU's with its threads and whether it runs bf16 natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    native = bf16_is_fast(device)
    return (f"{cpu_name()} ({torch.get_num_threads()} threads, "
            f"{'native' if native else 'emulated'} bf16)")


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """Cores this process may use (its affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
