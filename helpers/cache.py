"""The caching trick: run the frozen prefix once, store its outputs, train the suffix on them.

A cache is a folder holding one memory-mapped array of fp16 hidden states (every clip's frames
one after another), and ``index.json`` with each clip's offset, frame count and label, plus the
*key* it was built for. The key covers everything that would change the stored states (the
prefix's weights and config, the split layer k, the manifest's rows and audio files, the crop
policy and the dtype), so a stale cache is never served. Builds write to a temporary folder and
rename it when complete: an interrupted build leaves nothing that looks like a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import SpeechDataset
from .surgery import FrozenPrefix

INDEX = "index.json"
STATES = "states.npy"


class StaleCacheError(RuntimeError):
    """A cache built for other inputs than the ones asked for."""


def cache_key(prefix: FrozenPrefix, dataset: SpeechDataset, dtype: str = "float16") -> str:
    """A fingerprint of everything that determines the cached states."""
    digest = hashlib.sha256()
    for name, tensor in prefix.state_items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(prefix.backbone.config.to_json_string().encode())
    files = [(p, *_file_stamp(p)) for p in dataset.rows["path"]]
    digest.update(json.dumps({"k": prefix.k, "dtype": dtype, "files": files,
                              "labels": dataset.labels.tolist(),
                              "max_samples": dataset.max_samples}).encode())
    return digest.hexdigest()


def _file_stamp(path: str) -> tuple[int, int]:
    """Size and modification time: a changed audio file changes the key without re-reading it."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def frame_counts(prefix: FrozenPrefix, dataset: SpeechDataset) -> list[int]:
    lengths = torch.tensor(dataset.num_samples())
    return prefix.backbone._get_feat_extract_output_lengths(lengths).tolist()


def cache_size_bytes(prefix: FrozenPrefix, dataset: SpeechDataset, dtype=np.float16) -> int:
    """What the cache will take on disk, known before anything is computed."""
    width = prefix.backbone.config.hidden_size
    return sum(frame_counts(prefix, dataset)) * width * np.dtype(dtype).itemsize


@torch.no_grad()
def build_cache(prefix: FrozenPrefix, dataset: SpeechDataset, path: str | Path,
                device: str = "cpu", progress: bool = True) -> Path:
    """Run ``prefix`` once over ``dataset`` (one clip at a time, so no padding enters the
    states) and write the cache folder ``path`` atomically. Returns ``path``.
    """
    if dataset.train:
        raise ValueError("cache a dataset built with train=False: random crops change every "
                         "epoch, so they cannot be computed once")
    path, key = Path(path), cache_key(prefix, dataset)
    # Manifest durations are rounded, so a clip may come out a frame longer than estimated:
    # room for one spare frame per clip; offsets and frame counts come from what is written.
    estimate, width = frame_counts(prefix, dataset), prefix.backbone.config.hidden_size
    print(f"caching {len(dataset)} clips from layer {prefix.k}: "
          f"{cache_size_bytes(prefix, dataset) / 2**20:.1f} MiB on disk")
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")  # one per builder
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    states = np.lib.format.open_memmap(partial / STATES, mode="w+", dtype=np.float16,
                                       shape=(sum(estimate) + len(estimate), width))
    prefix.to(device).eval()
    offsets, counts, end = [], [], 0
    for index in tqdm(range(len(dataset)), desc="caching", disable=not progress):
        hidden = prefix(dataset[index]["input_values"][None].to(device))[0]
        if abs(hidden.shape[0] - estimate[index]) > 1:
            raise RuntimeError(f"{dataset.rows.at[index, 'path']}: {hidden.shape[0]} frames, "
                               f"expected {estimate[index]}; fix the manifest's duration")
        states[end: end + hidden.shape[0]] = hidden.cpu().numpy()
        offsets.append(end)
        counts.append(hidden.shape[0])
        end += hidden.shape[0]
    states.flush()
    del states
    index_data = {"key": key, "k": prefix.k, "width": width, "offsets": offsets,
                  "frames": counts, "labels": dataset.labels.tolist(),
                  "paths": dataset.rows["path"].tolist()}
    (partial / INDEX).write_text(json.dumps(index_data))
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(partial, path)  # the cache appears complete, or not at all
    except OSError:  # another process finished the same cache first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    return path


class CachedDataset(Dataset):
    """Cached hidden states served like audio items: (frames, width) fp16 states + labels."""

    def __init__(self, path: str | Path, expected_key: str | None = None):
        path = Path(path)
        if not (path / INDEX).is_file():
            raise FileNotFoundError(f"{path} is not a complete cache (no {INDEX}); build it "
                                    "with build_cache (an interrupted build leaves none)")
        self.index = json.loads((path / INDEX).read_text())
        if expected_key is not None and self.index["key"] != expected_key:
            raise StaleCacheError(f"{path} was built for other inputs (backbone weights, layer, "
                                  "manifest, audio or crop policy changed): delete it or "
                                  "use get_cache, which rebuilds")
        self.states = np.load(path / STATES, mmap_mode="r")
        self.labels = torch.tensor(self.index["labels"])

    def __len__(self) -> int:
        return len(self.index["frames"])

    def num_samples(self) -> list[int]:
        return self.index["frames"]  # the length that buckets batches

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, count = self.index["offsets"][index], self.index["frames"][index]
        return {"hidden": torch.from_numpy(np.array(self.states[start:start + count])),
                "labels": self.labels[index]}


def collate_cached(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Pad cached states (as fp32) and pass the true frame counts along."""
    return {"hidden": pad_sequence([item["hidden"].float() for item in batch], True),
            "frame_lengths": torch.tensor([len(item["hidden"]) for item in batch]),
            "labels": torch.stack([item["labels"] for item in batch])}


def get_cache(prefix: FrozenPrefix, dataset: SpeechDataset, root: str | Path,
              device: str = "cpu") -> CachedDataset:
    """The cache for these inputs, built if missing or stale (load if present, else compute)."""
    key = cache_key(prefix, dataset)
    path = Path(root) / f"layer{prefix.k}-{key[:16]}"
    if not (path / INDEX).is_file():
        build_cache(prefix, dataset, path, device)
    return CachedDataset(path, expected_key=key)
