"""The bundled corpus: reproducible, honestly described, and behaving like the real task."""

import json
import os

import pandas as pd
import pytest
import torch

from helpers.audio import read_audio
from helpers.bundled.corpus import (ADJECTIVES, FRAMES, SPEAKERS, espeak_available, plan_corpus,
                                    render_clip)
from helpers.bundled.datasheet import corpus_statistics, espeak_version
from helpers.constants import DIMENSIONS
from helpers.manifests import sample_manifest
from helpers.paths import SAMPLE_DIR
from helpers.probes import prosodic_table, ridge_probe

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest

STATS = json.loads((SAMPLE_DIR / "stats.json").read_text())


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return sample_manifest()


def test_regenerating_with_the_same_seed_gives_the_same_labels(manifest):
    plan = plan_corpus(STATS["seed"])
    shipped = pd.read_csv(SAMPLE_DIR / "labels.csv")
    columns = ["path", *DIMENSIONS, "split", "speaker", "text", "rate_wpm", "pitch"]
    pd.testing.assert_frame_equal(plan[columns], shipped[columns])
    assert not plan_corpus(STATS["seed"] + 1)[list(DIMENSIONS)].equals(plan[list(DIMENSIONS)])


@pytest.mark.skipif(not espeak_available() and not os.environ.get("CI"),
                    reason="espeak-ng is not installed (CI installs it and runs this test)")
def test_regenerated_audio_is_identical_to_the_shipped_audio(tmp_path):
    if espeak_version() != STATS["synthesiser"]:
        pytest.skip(f"{espeak_version()} differs from {STATS['synthesiser']}: labels still "
                    "match, audio may not")
    for _, row in plan_corpus(STATS["seed"]).iloc[[0, 300, 700]].iterrows():
        render_clip(row, tmp_path)
        assert torch.equal(read_audio(tmp_path / row["path"]),
                           read_audio(SAMPLE_DIR / row["path"])), row["path"]


def test_datasheet_numbers_match_the_files(manifest):
    recomputed = json.loads(json.dumps(corpus_statistics(manifest)))  # same types as the file
    for key, value in recomputed.items():
        assert STATS[key] == value, key
    datasheet = (SAMPLE_DIR / "DATASHEET.md").read_text()
    assert f"**{len(manifest)} clips**" in datasheet
    assert f"**{manifest['speaker'].nunique()} synthetic" in datasheet
    assert "not human emotional speech" in datasheet


def test_corpus_meets_its_specification(manifest):
    assert len(manifest) >= 800 and manifest["speaker"].nunique() >= 10
    size = sum(f.stat().st_size for f in (SAMPLE_DIR / "audio").rglob("*") if f.is_file())
    assert size < 40 * 2**20
    speakers = manifest.groupby("split")["speaker"].apply(set)
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert set(manifest["speaker"]) == {name for name, *_ in SPEAKERS}


def test_dev_and_test_wordings_are_never_heard_in_training(manifest):
    def wording(text: str) -> tuple[str, str]:
        words = text.rstrip(".").lower().split()
        return (next(w for w in words if w in FRAMES), next(w for w in words if w in ADJECTIVES))

    pairs = manifest["text"].map(wording)
    train_pairs = set(pairs[manifest["split"] == "train"])
    for split in ("dev", "test"):
        assert not train_pairs & set(pairs[manifest["split"] == split]), split
    train_words = {adjective for _, adjective in train_pairs}
    assert train_words == set(ADJECTIVES)  # every word is heard, just not in those wordings


@pytest.mark.recorded
def test_prosody_predicts_arousal_but_not_valence(manifest):
    """Acceptance: like real speech, prosody carries arousal; valence needs the words. The
    recorded baseline is recomputed from the pitch of every clip (about a minute on 2 cores:
    ``make check-recorded``, which CI runs after ``make test``)."""
    scores = ridge_probe(prosodic_table(manifest).to_numpy(), manifest)
    assert scores["arousal"] >= 0.6
    assert scores["valence"] < scores["arousal"] - 0.3
    for dimension, recorded in STATS["prosodic_baseline_test_ccc"].items():
        assert scores[dimension] == pytest.approx(recorded, abs=0.01), dimension
