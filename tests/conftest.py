"""Shared fixtures, and a guard that refuses every non-loopback connection during the tests.

The guard (``netguard/sitecustomize.py``, also loaded by every notebook kernel the tests
start) is what proves that nothing in the suite reaches a model hub: any attempt fails loudly
instead of silently downloading.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from threadpoolctl import threadpool_limits
from transformers import PretrainedConfig, Wav2Vec2Model

from helpers.backbone import FAMILIES
from helpers.constants import DIMENSIONS
from helpers.tools.run_notebooks import SharedKernel

_guard = importlib.util.spec_from_file_location(
    "netguard", Path(__file__).parent / "netguard" / "sitecustomize.py")
_guard.loader.exec_module(importlib.util.module_from_spec(_guard))  # installs it, for good


def small_config(variant: str = "base", layers: int = 2,
                 family: str = "wav2vec2") -> PretrainedConfig:
    """A random backbone config of either encoder variant (base: post-LN, group-norm CNN, no
    mask; large: pre-LN, layer-norm CNN, masks) and any family, small enough for unit tests."""
    large = variant == "large"
    return FAMILIES[family].config_class(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if large else "group", do_stable_layer_norm=large,
        conv_bias=large)


def assert_gradients_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                           relative: float) -> None:
    """The same parameters got the same gradients, within ``relative`` of each gradient's
    largest entry (a cache's fp16 storage error). A gradient that is zero in exact arithmetic
    (a key projection's bias: softmax ignores a shift shared by all keys) is rounding noise on
    both sides, so the tolerance never falls below a millionth of the largest gradient."""
    assert set(actual) == set(expected) and expected
    floor = 1e-6 * max(g.abs().max().item() for g in expected.values())
    for name, gradient in expected.items():
        scale = gradient.abs().max().item()
        torch.testing.assert_close(actual[name], gradient, rtol=1e-2,
                                   atol=relative * scale + floor, msg=name)


def write_tone(path: Path, seconds: float = 0.5, rate: int = 16_000, channels: int = 1,
               frequency: float = 220.0) -> Path:
    """A short sine tone as an audio file (format from the suffix)."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * frequency * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.repeat(tone[:, None], channels, axis=1), rate)
    return path


class ToneDataset(torch.utils.data.Dataset):
    """A learnable toy problem: each label is a smooth function of a tone's pitch."""

    def __init__(self, size: int = 32, seconds: float = 0.4, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.frequencies = 100 + 700 * torch.rand(size, generator=generator)
        self.t = torch.arange(int(seconds * 16_000)) / 16_000
        position = (self.frequencies - 100) / 700
        self.labels = torch.stack([position, 1 - position, position ** 2], dim=1)

    def __len__(self) -> int:
        return len(self.frequencies)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = key[0] if isinstance(key, tuple) else key  # samplers yield (index, epoch)
        wave = torch.sin(2 * torch.pi * self.frequencies[index] * self.t)
        return {"input_values": wave, "labels": self.labels[index]}


@pytest.fixture
def manifest_rows(tmp_path) -> list[dict]:
    """Six valid rows (two per split) with real files, for manifest and dataset tests."""
    rows = []
    for i, split in enumerate(["train", "train", "dev", "dev", "test", "test"]):
        path = write_tone(tmp_path / "audio" / f"clip{i}.wav", seconds=0.5 + 0.1 * i)
        rows.append({"path": str(path), **{d: 1.0 + i for d in DIMENSIONS}, "split": split,
                     "speaker": f"spk{i // 2}", "duration": 0.5 + 0.1 * i,
                     "label_min": 1.0, "label_max": 7.0})
    return rows


GUARD = Path(__file__).parent / "netguard"  # sitecustomize that refuses network connections


@pytest.fixture(scope="session")
def kernel_env(tmp_path_factory) -> dict[str, str]:
    """Notebook kernels' environment: SMOKE mode, one results folder for this worker's
    notebooks, the network guard, and one thread per kernel: the notebooks share the 2 cores
    with the unit tests, and two threads fighting other processes slow small operations
    several-fold."""
    return {"SMOKE": "1", "RESULTS_DIR": str(tmp_path_factory.mktemp("series-results")),
            "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")])}


# a SMOKE cell takes seconds (15 s at most here): one without a reply in 60 s met the rare
# unanswered request (see ``run_notebooks.execute``), and the notebook runs once more in a
# fresh kernel
SMOKE_CELL_TIMEOUT = 60


@pytest.fixture(scope="session")
def smoke_kernel(kernel_env) -> SharedKernel:
    """The kernel that runs this worker's notebooks one after another (``SharedKernel``), in
    the order of their test files."""
    with SharedKernel(kernel_env, timeout=SMOKE_CELL_TIMEOUT) as kernel:
        yield kernel


def assert_every_code_cell_ran(executed) -> None:
    assert all(cell.get("execution_count") for cell in executed.cells
               if cell.cell_type == "code")


@pytest.fixture(scope="session")
def small_backbone_dir(tmp_path_factory) -> str:
    """A folder holding a random 2-layer base-style ``small_config`` backbone (seed 0), saved
    once for the session; read it, do not write to it."""
    folder = tmp_path_factory.mktemp("small-backbone")
    torch.manual_seed(0)
    Wav2Vec2Model(small_config("base", layers=2)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory, small_backbone_dir) -> dict[str, str]:
    """A 12-clip tone corpus (6 train, 3 dev, 3 test; a manifest CSV with paths relative to
    it) and the small backbone: a bench in seconds. Built once for the session; read only."""
    root = tmp_path_factory.mktemp("tone-corpus")
    splits = ["train"] * 6 + ["dev"] * 3 + ["test"] * 3
    rows = []
    for i, split in enumerate(splits):
        path = write_tone(root / f"clip{i}.wav", seconds=0.4 + 0.05 * i, frequency=150 + 40 * i)
        rows.append({"path": path.name, **{d: 1 + (i * 7 % 6) for d in DIMENSIONS},
                     "split": split, "speaker": f"s{i % 3}", "label_min": 1, "label_max": 7})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return {"csv": str(root / "labels.csv"), "backbone": small_backbone_dir}


@pytest.fixture
def one_thread():
    """Run the test's torch, BLAS and OpenMP work on one thread (restored afterwards).

    For tests of many small operations (a pitch tracker's per-lag products, ridge fits on a
    few hundred rows, a small model's forward passes): splitting each across threads gains
    nothing, and when other processes share the cores each split operation waits for its
    slowest thread; on a loaded 2-core machine that made them ten times slower or worse.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)
