"""Manifests: every corpus becomes the same table, checked row by row.

A *manifest* is a pandas table with one row per clip and the columns in ``MANIFEST_COLUMNS``.
Labels stay in the corpus's native units (1-7 for MSP-Podcast, 1-5 for IEMOCAP) next to the
range they live in (``label_min``, ``label_max``); the dataset maps them to the common range
[0, 1] for training and ``from_common`` maps predictions back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .audio import MIN_SECONDS, sf
from .constants import DIMENSIONS, SPLITS
from .fingerprints import digest, file_stamp
from .paths import SAMPLE_DIR

DURATION_TOLERANCE = 0.05  # seconds a declared duration may differ from the file's (rounding)
MANIFEST_COLUMNS = ("path", *DIMENSIONS, "split", "speaker", "duration", "label_min", "label_max")
MAX_PROBLEMS_SHOWN = 30


class ManifestError(ValueError):
    """A manifest with problems; the message lists every problem found, one per line."""



def to_common(values: np.ndarray | torch.Tensor, low: float, high: float):
    """Map labels from a corpus's native range [low, high] to the common range [0, 1]."""
    return (values - low) / (high - low)


def from_common(values: np.ndarray | torch.Tensor, low: float, high: float):
    """Map predictions in the common range [0, 1] back to the corpus's native range."""
    return values * (high - low) + low


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
        manifest["duration"] = [math.nan if _blank(p) else duration_or_nan(p)
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


def duration_or_nan(path: str) -> float:
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
            problems += _audio_problems(where, item["path"], item["duration"])
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
        if low >= high:
            problems.append(f"{where}: label_min={item['label_min']} must be below "
                            f"label_max={item['label_max']} (the labels' scale, e.g. 1 and 7)")
        for dim in DIMENSIONS:
            if dim in numbers and not low <= numbers[dim] <= high:
                problems.append(f"{where}: {dim}={item[dim]} is outside the declared range "
                                f"[{item['label_min']}, {item['label_max']}]")
    if numbers.get("duration", 1.0) <= 0:
        problems.append(f"{where}: duration={item['duration']} must be positive")
    return problems


def _audio_problems(where: str, path: str, duration: object) -> list[str]:
    """Problems visible from the file header alone (cheap enough for every row), the declared
    duration included: batches are planned and stores sized from it, so a wrong one would
    fail much later, far from its row."""
    if not Path(path).is_file():
        return [f"{where}: audio file not found"]
    try:
        info = sf.info(path)
    except Exception as error:
        return [f"{where}: unreadable or corrupt audio ({error})"]
    if info.duration < MIN_SECONDS:
        return [f"{where}: {info.duration:.3f} s long, below the {MIN_SECONDS} s minimum"]
    try:
        declared = float(duration)
    except (TypeError, ValueError):
        return []  # reported by _number_problems
    if abs(declared - info.duration) > max(DURATION_TOLERANCE, 0.01 * info.duration):
        return [f"{where}: duration={duration} but the file is {info.duration:.2f} s long; "
                "correct it, or drop the duration column to read every duration from the "
                "audio headers"]
    return []


def split_problems(manifest: pd.DataFrame) -> list[str]:
    """What makes the splits unusable for training and choosing an epoch: fewer than two
    clips in train or dev (the CCC of one clip is undefined, its loss has no gradient), or dev
    labels that do not vary (a dev CCC is then 0 whatever the model predicts)."""
    problems = []
    for split in ("train", "dev"):
        rows = manifest[manifest["split"] == split]
        if len(rows) < 2:
            problems.append(f"the {split} split has {len(rows)} clip(s); CCC needs at least 2 "
                            f"clips with different labels: add {split} rows to the manifest")
        elif split == "dev":
            problems += [f"{rows[dim].isna().sum()} dev clip(s) have no {dim} label; fill "
                         "them in" for dim in DIMENSIONS if rows[dim].isna().any()]
            problems += [f"every dev clip has {dim}={rows[dim].iloc[0]}: a dev CCC cannot tell "
                         "epochs apart without varied labels; add dev clips with other labels"
                         for dim in DIMENSIONS if rows[dim].nunique(dropna=False) < 2
                         and not rows[dim].isna().any()]
    return problems


def check_splits(manifest: pd.DataFrame, source: str = "manifest") -> None:
    """Raise one ``ManifestError`` if the splits cannot train and select (``split_problems``)."""
    problems = split_problems(manifest)
    if problems:
        raise ManifestError(f"{source}: " + "; ".join(problems))


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


def data_fingerprint(manifest: pd.DataFrame, verify: bool = False) -> str:
    """A hash of the manifest's rows and its audio files' identity (see ``file_stamp``): what a
    result was made on, so that it is never reused for other data."""
    rows = manifest[list(MANIFEST_COLUMNS)].to_csv(index=False)
    return digest(json.dumps({"rows": rows, "files": [file_stamp(p, content=verify)
                                                      for p in manifest["path"]]}))
