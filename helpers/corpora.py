"""Corpus adapters: one string (``bundled``, ``msp:/path``, ``iemocap:/path`` or a manifest
CSV) becomes a manifest. Adding a corpus is one function here and one entry in ``ADAPTERS``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .constants import SPLITS
from .manifests import (ManifestError, duration_or_nan, load_manifest, read_table,
                        sample_manifest, validate_manifest)


def load_data(spec: str = "bundled") -> pd.DataFrame:
    """A manifest from one string: ``bundled``, ``<adapter>:/path`` or a manifest CSV."""
    if spec == "bundled":
        return sample_manifest()
    kind, _, path = spec.partition(":")
    if kind in ADAPTERS:
        return ADAPTERS[kind](path)
    return load_manifest(spec)


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
    manifest.insert(6, "duration", [duration_or_nan(p) for p in manifest["path"]])
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
            wav = eval_file.parents[2] / "sentences" / "wav" / dialog / f"{turn}.wav"
            rows.append({
                "path": str(wav),
                "arousal": float(match["a"]), "valence": float(match["v"]),
                "dominance": float(match["d"]), "split": split,
                "speaker": f"Ses{session:02d}{turn.split('_')[-1][0]}",  # F or M of the turn
                "duration": duration_or_nan(str(wav)),  # the header's, not the turn's times
                "label_min": 1.0, "label_max": 5.0,
            })
    if not rows:
        raise ManifestError(f"{root}: no Session*/dialog/EmoEvaluation/*.txt label lines found; "
                            "point iemocap() at the folder that holds Session1 … Session5.")
    return validate_manifest(pd.DataFrame(rows), source=str(root))


ADAPTERS = {"msp": msp_podcast, "iemocap": iemocap}  # prefix -> adapter
