"""Steps that use the chip: an explicit TF32 policy and ``torch.compile`` of the part that trains.

TF32 keeps fp32's range with a 10-bit mantissa and runs fp32 matrix products on tensor cores
(Ampere and later). PyTorch's defaults differ for matrix products and convolutions, so the
series sets both explicitly for every run and records the choice: ``fp32`` means true fp32,
``+tf32`` allows TF32. ``+compile`` compiles the trainable part (the frozen prefix of a partial
method runs once per batch without gradients and gains little); batches are padded to a
multiple of ``COMPILE_PAD_SECONDS`` so the compiled graphs meet few distinct shapes.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Method(Protocol):
    """What these functions read of a parsed method (``methods.Method`` has it)."""

    tf32: bool
    compile: bool

COMPILE_PAD_SECONDS = 0.5


def set_tf32(allowed: bool) -> None:
    """Allow (or forbid) TF32 in CUDA matrix products and cuDNN convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def tf32_in_effect(method: Method, device: str) -> bool:
    """Whether fp32 matrix products of this run may use TF32: only on CUDA, with ``+tf32``."""
    return method.tf32 and torch.device(device).type == "cuda"


def compile_trainable(model: nn.Module, method: Method) -> nn.Module:
    """``model`` with its trainable part compiled when ``method`` asks for it (the same
    parameters, so the optimizer and checkpoints see no difference in what trains)."""
    if not method.compile:
        return model
    if hasattr(model, "prefix"):  # a split model: its frozen prefix runs once, uncompiled
        model.suffix = torch.compile(model.suffix)
        return model
    return torch.compile(model)


def pad_multiple(method: Method, unit_per_second: int) -> int:
    """The length (in samples or frames) batches are padded up to a multiple of: 1 (no extra
    padding) unless the method is compiled."""
    return int(COMPILE_PAD_SECONDS * unit_per_second) if method.compile else 1
