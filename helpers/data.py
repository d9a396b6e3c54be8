"""Manifests, corpus adapters, audio I/O and batching.

Every corpus becomes the same *manifest*: a pandas table with one row per clip and the columns
in ``MANIFEST_COLUMNS``. Labels stay in the corpus's native units (1-7 for MSP-Podcast, 1-5 for
IEMOCAP) next to the range they live in (``label_min``, ``label_max``); the dataset maps them to
the common range [0, 1] for training and ``from_common`` maps predictions back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset, Sampler

SAMPLE_RATE = 16_000
DIMENSIONS = ("arousal", "valence", "dominance")
SPLITS = ("train", "dev", "test")
MANIFEST_COLUMNS = ("path", *DIMENSIONS, "split", "speaker", "duration", "label_min", "label_max")
MIN_SECONDS = 0.1
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_ROOT / "data_sample"


class AudioError(ValueError):
    """An audio file that cannot be used as it is; the message names the file and the fix."""


class ManifestError(ValueError):
    """A manifest with problems; the message lists every problem found, one per line."""


# --------------------------------------------------------------------------- labels


def to_common(values: np.ndarray | torch.Tensor, low: float, high: float):
    """Map labels from a corpus's native range [low, high] to the common range [0, 1]."""
    return (values - low) / (high - low)


def from_common(values: np.ndarray | torch.Tensor, low: float, high: float):
    """Map predictions in the common range [0, 1] back to the corpus's native range."""
    return values * (high - low) + low


# --------------------------------------------------------------------------- audio


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read any soundfile-readable file as a mono float32 waveform at ``sample_rate``.

    Stereo is averaged to mono and other rates are resampled; missing, unreadable, empty and
    sub-100 ms files raise an error that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found; check the manifest's path "
                                "column and the corpus root, or drop the row.")
    try:
        samples, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: unreadable or corrupt audio ({error}); re-export it as "
                         "WAV/FLAC or remove the row from the manifest.") from error
    if samples.shape[0] < MIN_SECONDS * file_rate:
        raise AudioError(f"{path}: {samples.shape[0] / file_rate:.3f} s of audio, shorter than "
                         f"the {MIN_SECONDS} s minimum; remove the row or replace the file.")
    waveform = torch.from_numpy(samples.mean(axis=1))
    if file_rate != sample_rate:
        waveform = AF.resample(waveform, file_rate, sample_rate)
    return waveform


def normalize(waveform: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance, as Wav2Vec2's feature extractor does."""
    return (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)


# --------------------------------------------------------------------------- manifests


def load_manifest(csv_path: str | Path, label_range: tuple[float, float] | None = None,
                  root: str | Path | None = None) -> pd.DataFrame:
    """Read a manifest CSV; relative paths are resolved against ``root`` (default: its folder).

    A CSV without ``label_min``/``label_max`` columns must declare its range in ``label_range``.
    A CSV without ``duration`` gets it from the audio headers.
    """
    csv_path = Path(csv_path)
    manifest = pd.read_csv(csv_path)
    if "label_min" not in manifest or "label_max" not in manifest:
        if label_range is None:
            raise ManifestError(f"{csv_path}: no label_min/label_max columns; pass "
                                "label_range=(low, high) to say which scale the labels use.")
        manifest["label_min"], manifest["label_max"] = label_range
    base = Path(root) if root is not None else csv_path.parent
    manifest["path"] = [str(p if Path(p).is_absolute() else base / p) for p in manifest["path"]]
    if "duration" not in manifest:
        manifest["duration"] = [_duration_or_nan(p) for p in manifest["path"]]
    validate_manifest(manifest, source=str(csv_path))
    return manifest


def _duration_or_nan(path: str) -> float:
    try:
        return sf.info(path).duration
    except Exception:  # reported, with the reason, by validate_manifest
        return math.nan


def manifest_problems(manifest: pd.DataFrame, check_audio: bool = True) -> list[str]:
    """Every problem in a manifest, one readable line each (row numbers count from 0)."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        return [f"missing columns {missing}; a manifest needs {list(MANIFEST_COLUMNS)}"]
    problems = []
    for row, item in manifest.iterrows():
        where = f"row {row} ({item['path']})"
        for dim in DIMENSIONS:
            value = item[dim]
            if pd.isna(value):
                problems.append(f"{where}: {dim} is missing (NaN); fill it in or drop the row")
            elif not item["label_min"] <= value <= item["label_max"]:
                problems.append(f"{where}: {dim}={value} is outside the declared range "
                                f"[{item['label_min']}, {item['label_max']}]")
        if item["split"] not in SPLITS:
            problems.append(f"{where}: split {item['split']!r} is not one of {list(SPLITS)}")
        if check_audio:
            problems += _audio_problems(where, item["path"])
    for path in manifest.loc[manifest["path"].duplicated(), "path"].unique():
        rows = manifest.index[manifest["path"] == path].tolist()
        problems.append(f"rows {rows}: the file {path} is listed more than once; keep one row")
    return problems


def _audio_problems(where: str, path: str) -> list[str]:
    """Problems visible from the file header alone (cheap enough for every row)."""
    if not Path(path).is_file():
        return [f"{where}: audio file not found"]
    try:
        info = sf.info(path)
    except Exception as error:
        return [f"{where}: unreadable or corrupt audio ({error})"]
    if info.duration < MIN_SECONDS:
        return [f"{where}: {info.duration:.3f} s long, below the {MIN_SECONDS} s minimum"]
    return []


def validate_manifest(manifest: pd.DataFrame, check_audio: bool = True,
                      source: str = "manifest") -> pd.DataFrame:
    """Raise one ``ManifestError`` listing *all* problems, or return the manifest unchanged."""
    problems = manifest_problems(manifest, check_audio)
    if problems:
        listing = "\n  ".join(problems)
        raise ManifestError(f"{source}: {len(problems)} problem(s):\n  {listing}")
    return manifest


def sample_manifest() -> pd.DataFrame:
    """The bundled synthetic corpus in ``data_sample/`` (see its DATASHEET.md)."""
    csv_path = SAMPLE_DIR / "labels.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; generate the bundled corpus with "
                                "`python -m helpers make-sample`.")
    return load_manifest(csv_path)


# --------------------------------------------------------------------------- real corpora

MSP_SPLIT_SETS = ("Train", "Development", "Test1", "Test2", "Test3")


def msp_podcast(root: str | Path, test_set: str = "Test1") -> pd.DataFrame:
    """MSP-Podcast from its official consensus labels (attributes on a 1-7 scale).

    Reads ``Labels/labels_consensus.csv`` and ``Audios/``. ``test_set`` picks which official test
    partition becomes ``split == "test"``; the other test partitions are left out.
    Rows with an unknown speaker get a per-file speaker id so speaker counts stay honest.
    """
    root = Path(root)
    labels = pd.read_csv(root / "Labels" / "labels_consensus.csv")
    unknown = set(labels["Split_Set"]) - set(MSP_SPLIT_SETS)
    if unknown:
        raise ManifestError(f"{root / 'Labels/labels_consensus.csv'}: unknown Split_Set values "
                            f"{sorted(unknown)}; expected some of {list(MSP_SPLIT_SETS)}")
    split = labels["Split_Set"].map({"Train": "train", "Development": "dev", test_set: "test"})
    speaker = labels["SpkrID"].astype("string")
    anonymous = speaker.isna() | speaker.str.strip().str.lower().isin(["unknown", ""])
    speaker = speaker.mask(anonymous, "unknown-" + labels["FileName"].astype(str))
    manifest = pd.DataFrame({
        "path": [str(root / "Audios" / name) for name in labels["FileName"]],
        "arousal": labels["EmoAct"], "valence": labels["EmoVal"], "dominance": labels["EmoDom"],
        "split": split, "speaker": speaker.astype(str), "label_min": 1.0, "label_max": 7.0,
    })
    manifest = manifest[manifest["split"].isin(SPLITS)].reset_index(drop=True)
    manifest.insert(6, "duration", [_duration_or_nan(p) for p in manifest["path"]])
    return validate_manifest(manifest, source=str(root))


IEMOCAP_LINE = re.compile(
    r"^\[(?P<start>[\d.]+) - (?P<end>[\d.]+)\]\t(?P<turn>\S+)\t(?P<emotion>\S+)\t"
    r"\[(?P<v>[\d.]+), (?P<a>[\d.]+), (?P<d>[\d.]+)\]")


def iemocap(root: str | Path, test_session: int = 5, dev_session: int | None = 4) -> pd.DataFrame:
    """IEMOCAP's dimensional labels (1-5 scale), split by session.

    ``test_session`` is held out for test (leave-one-session-out: loop it over 1-5 for the
    five folds) and ``dev_session`` for early stopping; the rest train.
    """
    root = Path(root)
    rows = []
    for eval_file in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        session = int(eval_file.parts[-4].removeprefix("Session"))
        for line in eval_file.read_text().splitlines():
            match = IEMOCAP_LINE.match(line)
            if not match:  # headers, comments and per-annotator lines
                continue
            turn = match["turn"]
            dialog = turn.rsplit("_", 1)[0]
            split = ("test" if session == test_session else
                     "dev" if session == dev_session else "train")
            rows.append({
                "path": str(eval_file.parents[2] / "sentences" / "wav" / dialog / f"{turn}.wav"),
                "arousal": float(match["a"]), "valence": float(match["v"]),
                "dominance": float(match["d"]), "split": split,
                "speaker": f"Ses{session:02d}{turn.split('_')[-1][0]}",  # F or M of the turn
                "duration": float(match["end"]) - float(match["start"]),
                "label_min": 1.0, "label_max": 5.0,
            })
    if not rows:
        raise ManifestError(f"{root}: no Session*/dialog/EmoEvaluation/*.txt label lines found; "
                            "point iemocap() at the folder that holds Session1 … Session5.")
    return validate_manifest(pd.DataFrame(rows), source=str(root))


# --------------------------------------------------------------------------- dataset


class SpeechDataset(Dataset):
    """Clips of one split as normalised 16 kHz waveforms with labels in [0, 1].

    Training crops a random window of at most ``max_seconds`` (a fresh one every epoch, the
    same for a given seed and epoch); evaluation takes the centre window, so it is repeatable.
    """

    def __init__(self, manifest: pd.DataFrame, split: str | None = None,
                 max_seconds: float | None = 4.0, train: bool = False, seed: int = 0):
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

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Choose which random crops this epoch uses (training only)."""
        self.epoch = epoch

    def num_samples(self) -> list[int]:
        """Length of every item after cropping, from the manifest (no audio is read)."""
        lengths = (self.rows["duration"].to_numpy(float) * SAMPLE_RATE).round().astype(int)
        return [min(n, self.max_samples) if self.max_samples else n for n in lengths]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        waveform = self.crop(read_audio(self.rows.at[index, "path"]), index)
        return {"input_values": normalize(waveform), "labels": self.labels[index]}

    def crop(self, waveform: torch.Tensor, index: int) -> torch.Tensor:
        if self.max_samples is None or len(waveform) <= self.max_samples:
            return waveform
        spare = len(waveform) - self.max_samples
        if self.train:
            seed = (self.seed * 7919 + self.epoch) * 1_000_003 + index
            generator = torch.Generator().manual_seed(seed)
            start = int(torch.randint(spare + 1, (1,), generator=generator))
        else:
            start = spare // 2
        return waveform[start:start + self.max_samples]


def wants_attention_mask(config) -> bool:
    """Layer-norm ("large"-style) Wav2Vec2s take a mask; group-norm ("base"-style) ones must not.

    Group norm in the first CNN layer normalises over the whole padded sequence, so base-style
    models were trained on zero-padded batches without a mask and are fed the same way.
    """
    return config.feat_extract_norm == "layer"


def collate(batch: Sequence[dict[str, torch.Tensor]], attention_mask: bool) -> dict:
    """Zero-pad waveforms to the longest in the batch; always return the true lengths."""
    lengths = torch.tensor([len(item["input_values"]) for item in batch])
    padded = torch.zeros(len(batch), int(lengths.max()))
    for row, item in enumerate(batch):
        padded[row, : lengths[row]] = item["input_values"]
    out = {"input_values": padded, "lengths": lengths,
           "labels": torch.stack([item["labels"] for item in batch])}
    if attention_mask:
        out["attention_mask"] = (torch.arange(padded.shape[1]) < lengths[:, None]).long()
    return out


def collate_for(config) -> partial:
    """The collate function a backbone with this config expects."""
    return partial(collate, attention_mask=wants_attention_mask(config))


@dataclass
class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length (little padding), in a new shuffled order every epoch."""

    lengths: Sequence[int]
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.argsort(np.asarray(self.lengths), kind="stable").tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)
