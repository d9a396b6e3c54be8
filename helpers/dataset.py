"""The dataset the model reads: clips of one split as normalised waveforms with labels in
[0, 1], decoded once into a memory-mapped waveform store, and collated into padded batches.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .audio import normalize, read_audio
from .config import RunConfig
from .constants import DIMENSIONS, SAMPLE_RATE
from .device import cpu_count
from .fingerprints import digest, file_stamp
from .manifests import ManifestError, to_common
from .store import Store, build_store, keyed_store


class SpeechDataset(Dataset):
    """Clips of one split as normalised 16 kHz waveforms with labels in [0, 1].

    Waveforms come from a decoded ``store`` (see ``waveform_store``) when one is given, else
    from the audio files. Training crops a random window of at most ``max_seconds``, a fresh
    one every epoch; evaluation takes the centre window, so it is repeatable. An item is asked
    for by its index, or by ``(index, epoch)`` as the batch sampler does: the crop then depends
    on nothing a worker process could hold stale, so persistent workers crop correctly.
    """

    def __init__(self, manifest: pd.DataFrame, split: str | None = None,
                 max_seconds: float | None = RunConfig.max_clip_seconds, train: bool = False,
                 seed: int = 0,
                 store: Store | None = None):
        rows = manifest if split is None else manifest[manifest["split"] == split]
        if rows.empty:
            raise ManifestError(f"no rows for split {split!r}; the manifest has splits "
                                f"{sorted(manifest['split'].unique())}")
        self.rows = rows.reset_index(drop=True)
        self.max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        self.train, self.seed, self.epoch = train, seed, 0
        scaled = [to_common(self.rows[d].to_numpy(float), self.rows["label_min"].to_numpy(float),
                            self.rows["label_max"].to_numpy(float)) for d in DIMENSIONS]
        self.labels = torch.tensor(np.stack(scaled, axis=1), dtype=torch.float32)
        self.store, self.store_items = store, None
        if store is not None:
            position = {path: i for i, path in enumerate(store.meta["paths"])}
            missing = [p for p in self.rows["path"] if p not in position]
            if missing:
                raise ValueError(f"the waveform store {store.path} lacks {len(missing)} clips "
                                 f"of this split (first: {missing[0]}); build it from the "
                                 "same manifest")
            self.store_items = [position[p] for p in self.rows["path"]]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose which random crops plain integer indexing uses (training only)."""
        self.epoch = epoch

    def durations(self) -> np.ndarray:
        """Seconds of every item after cropping, from the manifest (no audio is read)."""
        seconds = self.rows["duration"].to_numpy(float)
        return seconds if self.max_samples is None else np.minimum(
            seconds, self.max_samples / SAMPLE_RATE)

    def num_samples(self) -> list[int]:
        """Length of every item after cropping, from the manifest (no audio is read)."""
        lengths = (self.rows["duration"].to_numpy(float) * SAMPLE_RATE).round().astype(int)
        return [min(n, self.max_samples) if self.max_samples else n for n in lengths]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        waveform = self.crop(self.waveform(index), index, epoch)
        return {"input_values": normalize(torch.from_numpy(np.array(waveform, np.float32))),
                "labels": self.labels[index]}

    def waveform(self, index: int) -> np.ndarray:
        """The whole clip, from the store (a memory-mapped view) or decoded from its file."""
        if self.store is not None:
            return self.store.item(self.store_items[index])
        return read_audio(self.rows.at[index, "path"]).numpy()

    def crop(self, waveform, index: int, epoch: int | None = None):
        if self.max_samples is None or len(waveform) <= self.max_samples:
            return waveform
        spare = len(waveform) - self.max_samples
        if self.train:
            epoch = self.epoch if epoch is None else epoch
            seed = (self.seed * 7919 + epoch) * 1_000_003 + index
            generator = torch.Generator().manual_seed(seed)
            start = int(torch.randint(spare + 1, (1,), generator=generator))
        else:
            start = spare // 2
        return waveform[start:start + self.max_samples]


RESAMPLING = "torchaudio.functional.resample, sinc_interp_hann, lowpass_filter_width=6"


def waveform_store(manifest: pd.DataFrame, root: str | Path, dtype: str = "float32",
                   verify: bool = False, workers: int | None = None,
                   progress: bool = True) -> Store:
    """Every clip of ``manifest`` decoded, downmixed and resampled to 16 kHz once, in one
    memory-mapped array; built in parallel on first use, then reused while its key holds.

    The key covers each audio file's identity (size and modification time, or with
    ``verify=True`` a hash of its bytes), the sample rate, the resampling policy and the dtype.
    """
    paths = list(dict.fromkeys(manifest["path"]))  # unique, in manifest order
    key = digest(json.dumps({"files": [file_stamp(p, content=verify) for p in paths],
                             "rate": SAMPLE_RATE, "resampling": RESAMPLING, "dtype": dtype}))
    durations = manifest.drop_duplicates("path")["duration"].to_numpy(float)

    def build(path: Path) -> Store:
        # durations are rounded in manifests: room for a few spare samples per clip
        max_rows = int(np.ceil(durations * SAMPLE_RATE).sum()) + 64 * len(paths)
        threads = workers or max(1, cpu_count())
        decode = lambda p: read_audio(p).numpy().astype(dtype, copy=False)
        with ThreadPoolExecutor(threads) as pool:  # decoding and resampling release the GIL
            return build_store(path, key, decoded(pool, decode, paths, 8 * threads), max_rows,
                               None, dtype, {"paths": paths}, desc="decoding audio",
                               total=len(paths), progress=progress)

    return keyed_store(root, "waveforms", key, build)


def decoded(pool: ThreadPoolExecutor, decode, paths: list[str], window: int):
    """``decode(path)`` for every path, in order, with at most ``window`` clips in flight (so a
    long corpus never piles up in memory, and an error stops the build at once)."""
    for start in range(0, len(paths), window):
        yield from pool.map(decode, paths[start:start + window])


def wants_attention_mask(config) -> bool:
    """Layer-norm ("large"-style) Wav2Vec2s take a mask; group-norm ("base"-style) ones must not.

    Group norm in the first CNN layer normalises over the whole padded sequence, so base-style
    models were trained on zero-padded batches without a mask and are fed the same way.
    """
    return config.feat_extract_norm == "layer"


def collate(batch: Sequence[dict[str, torch.Tensor]], attention_mask: bool,
            pad_multiple: int = 1) -> dict:
    """Zero-pad waveforms to the longest in the batch (rounded up to a multiple of
    ``pad_multiple`` samples, so a compiled model meets few shapes); always return the true
    lengths."""
    lengths = torch.tensor([len(item["input_values"]) for item in batch])
    padded = torch.zeros(len(batch), round_up(int(lengths.max()), pad_multiple))
    for row, item in enumerate(batch):
        padded[row, : lengths[row]] = item["input_values"]
    out = {"input_values": padded, "lengths": lengths,
           "labels": torch.stack([item["labels"] for item in batch])}
    if attention_mask:
        out["attention_mask"] = (torch.arange(padded.shape[1]) < lengths[:, None]).long()
    return out


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def collate_for(config, pad_multiple: int = 1) -> partial:
    """The collate function a backbone with this config expects."""
    return partial(collate, attention_mask=wants_attention_mask(config),
                   pad_multiple=pad_multiple)
