"""Manifests, corpus adapters, audio I/O and batching.

Every corpus becomes the same *manifest*: a pandas table with one row per clip and the columns
in ``MANIFEST_COLUMNS``. Labels stay in the corpus's native units (1-7 for MSP-Podcast, 1-5 for
IEMOCAP) next to the range they live in (``label_min``, ``label_max``); the dataset maps them to
the common range [0, 1] for training and ``from_common`` maps predictions back.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF

try:
    import soundfile as sf
except ImportError:  # gpu-check times steps without it; reading audio names what is missing
    sf = None
from torch.utils.data import Dataset

from .config import PROJECT_ROOT, SAMPLE_DIR, cpu_count, digest, file_stamp  # noqa: F401
from .store import Store, build_store, keyed_store

SAMPLE_RATE = 16_000
DIMENSIONS = ("arousal", "valence", "dominance")
SPLITS = ("train", "dev", "test")
MANIFEST_COLUMNS = ("path", *DIMENSIONS, "split", "speaker", "duration", "label_min", "label_max")
MIN_SECONDS = 0.1
MAX_PROBLEMS_SHOWN = 30


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
    if sf is None:
        raise ImportError("reading audio needs soundfile: pip install -r requirements.txt")
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
    manifest = read_table(csv_path)
    if "label_min" not in manifest or "label_max" not in manifest:
        if label_range is None:
            raise ManifestError(f"{csv_path}: no label_min/label_max columns; pass "
                                "label_range=(low, high) to say which scale the labels use.")
        manifest["label_min"], manifest["label_max"] = label_range
    base = Path(root) if root is not None else csv_path.parent
    if "path" in manifest:
        manifest["path"] = [p if _blank(p) or Path(p).is_absolute() else str(base / p)
                            for p in manifest["path"]]
    if "duration" not in manifest and "path" in manifest:
        manifest["duration"] = [math.nan if _blank(p) else _duration_or_nan(p)
                                for p in manifest["path"]]
    validate_manifest(manifest, source=str(csv_path))
    return manifest


def read_table(csv_path: Path) -> pd.DataFrame:
    """``pd.read_csv`` with an error that names the file for a missing, empty or broken one."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: manifest not found; check the path (DATA, "
                                "--data)")
    try:
        return pd.read_csv(csv_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{csv_path}: not a readable CSV table "
                            f"({str(error).splitlines()[0]}); a manifest has a header row and "
                            f"the columns {list(MANIFEST_COLUMNS)}") from error


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


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
        if _blank(item["path"]):
            problems.append(f"row {row}: the path is empty; fill it in or drop the row")
            continue
        where = f"row {row} ({item['path']})"
        problems += _number_problems(where, item)
        if item["split"] not in SPLITS:
            problems.append(f"{where}: split {item['split']!r} is not one of {list(SPLITS)}")
        if check_audio:
            problems += _audio_problems(where, item["path"])
    for path in manifest.loc[manifest["path"].duplicated(), "path"].unique():
        rows = manifest.index[manifest["path"] == path].tolist()
        problems.append(f"rows {rows}: the file {path} is listed more than once; keep one row")
    return problems


def _number_problems(where: str, item: pd.Series) -> list[str]:
    """Labels, their declared range and the duration: present, numeric and in range."""
    problems, numbers = [], {}
    for column in (*DIMENSIONS, "label_min", "label_max", "duration"):
        value = item[column]
        if _blank(value):
            hint = ("drop the column to read durations from the audio headers"
                    if column == "duration" else "fill it in or drop the row")
            problems.append(f"{where}: {column} is missing; {hint}")
            continue
        try:
            numbers[column] = float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: {column}={value!r} is not a number (write decimals with "
                            "a point, e.g. 3.5)")
    if {"label_min", "label_max"} <= set(numbers):
        low, high = numbers["label_min"], numbers["label_max"]
        for dim in DIMENSIONS:
            if dim in numbers and not low <= numbers[dim] <= high:
                problems.append(f"{where}: {dim}={item[dim]} is outside the declared range "
                                f"[{item['label_min']}, {item['label_max']}]")
    if numbers.get("duration", 1.0) <= 0:
        problems.append(f"{where}: duration={item['duration']} must be positive")
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
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {len(problems) - MAX_PROBLEMS_SHOWN}"
                                                  " more"] if len(problems) > MAX_PROBLEMS_SHOWN
                                                 else [])
        listing = "\n  ".join(shown)
        raise ManifestError(f"{source}: {len(problems)} problem(s):\n  {listing}")
    for column in (*DIMENSIONS, "label_min", "label_max", "duration"):
        manifest[column] = manifest[column].astype(float)
    return manifest


def sample_manifest() -> pd.DataFrame:
    """The bundled synthetic corpus in ``data_sample/`` (see its DATASHEET.md)."""
    csv_path = SAMPLE_DIR / "labels.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found; generate the bundled corpus with "
                                "`python -m helpers make-sample`.")
    return load_manifest(csv_path)


def load_data(spec: str = "bundled") -> pd.DataFrame:
    """A manifest from one string: ``bundled``, ``msp:/path``, ``iemocap:/path`` or a CSV."""
    if spec == "bundled":
        return sample_manifest()
    kind, _, path = spec.partition(":")
    if kind == "msp":
        return msp_podcast(path)
    if kind == "iemocap":
        return iemocap(path)
    return load_manifest(spec)


def data_fingerprint(manifest: pd.DataFrame, verify: bool = False) -> str:
    """A hash of the manifest's rows and its audio files' identity (see ``file_stamp``): what a
    result was made on, so that it is never reused for other data."""
    rows = manifest[list(MANIFEST_COLUMNS)].to_csv(index=False)
    return digest(json.dumps({"rows": rows, "files": [file_stamp(p, content=verify)
                                                      for p in manifest["path"]]}))


# --------------------------------------------------------------------------- real corpora

MSP_SPLIT_SETS = ("Train", "Development", "Test1", "Test2", "Test3")
MSP_SPLIT_NAMES = {"Validation": "Development"}  # older releases' name of the dev split
MSP_TEST_SETS = ("Test1", "Test2", "Test3")


def msp_podcast(root: str | Path, test_set: str = "Test1") -> pd.DataFrame:
    """MSP-Podcast from its official consensus labels (attributes on a 1-7 scale).

    Reads ``Labels/labels_consensus.csv`` and ``Audios/``. ``test_set`` picks which official test
    partition becomes ``split == "test"``; the other test partitions are left out.
    Rows with an unknown speaker get a per-file speaker id so speaker counts stay honest.
    """
    root = Path(root)
    labels = read_table(root / "Labels" / "labels_consensus.csv")
    labels["Split_Set"] = labels["Split_Set"].replace(MSP_SPLIT_NAMES)
    unknown = set(labels["Split_Set"]) - set(MSP_SPLIT_SETS)
    if unknown:
        raise ManifestError(f"{root / 'Labels/labels_consensus.csv'}: unknown Split_Set values "
                            f"{sorted(unknown)}; expected some of {list(MSP_SPLIT_SETS)} "
                            f"(or {list(MSP_SPLIT_NAMES)})")
    present = sorted(set(labels["Split_Set"]) & set(MSP_TEST_SETS))
    if test_set not in present:
        raise ValueError(f"test_set={test_set!r}: choose one of the test partitions this "
                         f"release has, {present}")
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
    if test_session not in range(1, 6) or test_session == dev_session:
        raise ValueError(f"test_session={test_session}, dev_session={dev_session}: choose two "
                         "different sessions among 1-5")
    rows = []
    for eval_file in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        if eval_file.name.startswith("._"):  # macOS metadata beside the real files
            continue
        session = int(eval_file.parts[-4].removeprefix("Session"))
        try:
            text = eval_file.read_text()
        except UnicodeDecodeError as error:
            raise ManifestError(f"{eval_file}: not a text file ({error.reason}); remove it "
                                "from EmoEvaluation/ or restore the original") from error
        for line in text.splitlines():
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

    Waveforms come from a decoded ``store`` (see ``waveform_store``) when one is given, else
    from the audio files. Training crops a random window of at most ``max_seconds``, a fresh
    one every epoch; evaluation takes the centre window, so it is repeatable. An item is asked
    for by its index, or by ``(index, epoch)`` as the batch sampler does: the crop then depends
    on nothing a worker process could hold stale, so persistent workers crop correctly.
    """

    def __init__(self, manifest: pd.DataFrame, split: str | None = None,
                 max_seconds: float | None = 4.0, train: bool = False, seed: int = 0,
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


# --------------------------------------------------------------------------- waveform store
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
