"""The caching trick: run the frozen prefix once, store its outputs, train the suffix on them.

A layer cache is a store (see ``store.py``) of fp16 hidden states: every clip's frames one
after another in one memory-mapped array. Its key covers everything that would change the
stored states (the prefix's weights and config, the split layer k, the manifest's rows and
audio files, the crop policy and the dtype), so a stale cache is never served, and it is built
atomically: an interrupted build leaves nothing that looks like a cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from .constants import FRAME_RATE
from .dataset import SpeechDataset, round_up
from .fingerprints import digest, file_stamp
from .store import Store, StaleStoreError, build_store, keyed_store, open_store
from .surgery import FrozenPrefix

DTYPE = "float16"


def cache_key(prefix: FrozenPrefix, dataset: SpeechDataset, dtype: str = DTYPE) -> str:
    """A fingerprint of everything that determines the cached states."""
    items = prefix.state_items()
    weights = [digest(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
               for _, tensor in items]
    return digest(json.dumps({
        "weights": [name for name, _ in items], "digests": weights,
        "config": prefix.backbone.config.to_json_string(), "k": prefix.k, "dtype": dtype,
        "files": (dataset.store.key if dataset.store is not None  # decoded audio's key
                  else [file_stamp(p) for p in dataset.rows["path"]]),
        "labels": dataset.labels.tolist(), "max_samples": dataset.max_samples}))


def frame_counts(prefix: FrozenPrefix, dataset: SpeechDataset) -> list[int]:
    lengths = torch.tensor(dataset.num_samples())
    return prefix.backbone._get_feat_extract_output_lengths(lengths).tolist()


def cache_size_bytes(prefix: FrozenPrefix, dataset: SpeechDataset, dtype=np.float16) -> int:
    """What the cache will take on disk, known before anything is computed."""
    width = prefix.backbone.config.hidden_size
    return sum(frame_counts(prefix, dataset)) * width * np.dtype(dtype).itemsize


@torch.no_grad()
def build_cache(prefix: FrozenPrefix, dataset: SpeechDataset, path: str | Path,
                device: str, progress: bool = True, key: str | None = None) -> Store:
    """Run ``prefix`` once over ``dataset`` (one clip at a time, so no padding enters the
    states) and write the cache ``path`` atomically. ``key``: ``cache_key``'s, when the
    caller has it already (hashing a large prefix's weights takes a while)."""
    if dataset.train:
        raise ValueError("cache a dataset built with train=False: random crops change every "
                         "epoch, so they cannot be computed once")
    estimate, width = frame_counts(prefix, dataset), prefix.backbone.config.hidden_size
    print(f"caching {len(dataset)} clips from layer {prefix.k}: "
          f"{cache_size_bytes(prefix, dataset) / 2**20:.1f} MiB on disk")
    prefix.to(device).eval()

    def states():
        for index in range(len(dataset)):
            hidden = prefix(dataset[index]["input_values"][None].to(device))[0]
            if abs(hidden.shape[0] - estimate[index]) > 1:
                raise RuntimeError(f"{dataset.rows.at[index, 'path']}: {hidden.shape[0]} "
                                   f"frames, expected {estimate[index]}; fix the manifest's "
                                   "duration")
            yield hidden.to(torch.float16).cpu().numpy()

    # manifest durations are rounded: room for one spare frame per clip
    return build_store(path, key or cache_key(prefix, dataset), states(),
                       sum(estimate) + len(estimate), width, DTYPE,
                       {"k": prefix.k, "labels": dataset.labels.tolist(),
                        "paths": dataset.rows["path"].tolist()},
                       desc="caching", total=len(dataset), progress=progress)


class CachedDataset(Dataset):
    """Cached hidden states served like audio items: (frames, width) fp16 states + labels.

    ``to(device)`` moves the whole cache into device memory (when it fits), so batches are
    gathered there without a host copy.
    """

    def __init__(self, store: Store | str | Path, expected_key: str | None = None):
        self.store = store if isinstance(store, Store) else open_store(store, expected_key)
        if expected_key is not None and self.store.key != expected_key:
            raise StaleStoreError(f"{self.store.path} was built for other inputs (backbone "
                                  "weights, layer, manifest, audio or crop policy changed)")
        self.states = torch.from_numpy(np.asarray(self.store.data))
        self.labels = torch.tensor(self.store.meta["labels"])

    def __len__(self) -> int:
        return len(self.store)

    @property
    def nbytes(self) -> int:
        return self.store.nbytes

    def durations(self) -> list[float]:
        """Seconds each clip lasts (from its frames): the length batches are budgeted by."""
        return [frames / FRAME_RATE for frames in self.store.lengths]

    def num_samples(self) -> list[int]:
        return self.store.lengths

    def to(self, device: str | torch.device) -> "CachedDataset":
        self.states = self.states.to(device)
        return self

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = key[0] if isinstance(key, tuple) else key
        start, count = self.store.offsets[index], self.store.lengths[index]
        return {"hidden": self.states[start:start + count], "labels": self.labels[index]}


def collate_cached(batch: list[dict], pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad cached states (kept in fp16: ``to_device`` casts them where they are used) to the
    longest, rounded up to a multiple of ``pad_multiple`` frames, and pass the true frame
    counts along."""
    hidden = pad_sequence([item["hidden"] for item in batch], True)
    extra = round_up(hidden.shape[1], pad_multiple) - hidden.shape[1]
    return {"hidden": torch.nn.functional.pad(hidden, (0, 0, 0, extra)) if extra else hidden,
            "frame_lengths": torch.tensor([len(item["hidden"]) for item in batch]),
            "labels": torch.stack([item["labels"] for item in batch])}


def get_cache(prefix: FrozenPrefix, dataset: SpeechDataset, root: str | Path,
              device: str, progress: bool = True) -> CachedDataset:
    """The cache for these inputs, built if missing or stale (load if present, else compute)."""
    key = cache_key(prefix, dataset)
    store = keyed_store(root, f"layer{prefix.k}", key,
                        lambda path: build_cache(prefix, dataset, path, device, progress, key))
    return CachedDataset(store, expected_key=key)
