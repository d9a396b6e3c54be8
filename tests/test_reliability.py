"""What a user feeds the series, at its edges: each bad input is refused before any work, with
one message that names the file, row, split or setting and what to do."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers.audio import AudioError, read_audio
from helpers.config import RunConfig
from helpers.files import OutputPathError, check_output_file, check_writable
from helpers.manifests import ManifestError, check_splits, manifest_problems
from helpers.run import check_batch_budget, check_predictions
from helpers.train import TrainingFailed


def test_audio_with_a_nan_sample_is_refused_by_name(tmp_path):
    samples = np.random.default_rng(0).normal(0, 0.1, 8000).astype("float32")
    samples[100] = np.nan
    path = tmp_path / "clip.wav"
    sf.write(path, samples, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"clip.wav: 1 samples are not finite"):
        read_audio(path)


def test_a_label_range_without_width_is_named(manifest_rows):
    manifest = pd.DataFrame(manifest_rows).assign(label_min=3.0, label_max=3.0, arousal=3.0,
                                                  valence=3.0, dominance=3.0)
    problems = manifest_problems(manifest, check_audio=False)
    assert any("label_min=3.0 must be below label_max=3.0" in p for p in problems)


def splits(dev_arousal: list[float], train_clips: int = 3) -> pd.DataFrame:
    rows = [{"split": "train", "arousal": float(i), "valence": 1.0 + i, "dominance": 2.0 + i}
            for i in range(train_clips)]
    rows += [{"split": "dev", "arousal": a, "valence": 1.0 + i, "dominance": 2.0 + i}
             for i, a in enumerate(dev_arousal)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("manifest, says", [
    (splits([3.0, 4.0], train_clips=1), "the train split has 1 clip"),
    (splits([3.0]), "the dev split has 1 clip"),
    (splits([3.0, 3.0, 3.0]), "every dev clip has arousal=3.0: a dev CCC cannot tell epochs")])
def test_splits_too_small_or_too_flat_to_train_and_select_on_are_refused(manifest, says):
    with pytest.raises(ManifestError, match=says):
        check_splits(manifest)
    check_splits(splits([3.0, 4.0]))  # two varied dev clips and three train clips will do


def test_a_clip_too_short_for_the_cnn_is_refused_as_a_setting():
    with pytest.raises(ValueError, match="max_clip_seconds=0.02 must be at least 0.1"):
        RunConfig(max_clip_seconds=0.02)


def test_a_batch_budget_that_holds_one_clip_is_refused_with_the_budget_that_works():
    manifest = splits([3.0, 4.0]).assign(duration=[5.0, 3.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"holds only one training clip of up to 4.00 s.*at "
                                         r"least 8"):
        check_batch_budget(manifest, RunConfig(max_batch_seconds=4.0, max_clip_seconds=4.0))
    check_batch_budget(manifest, RunConfig(max_batch_seconds=4.0, max_clip_seconds=2.0))


def test_predictions_far_off_the_label_scale_stop_the_run_as_diverged():
    check_predictions(torch.tensor([[0.2, 0.9, -0.3]]), "test", 5e-4)
    with pytest.raises(TrainingFailed, match=r"test predictions reach 130 .* diverged at lr 10"):
        check_predictions(torch.tensor([[0.5, 130.0, 0.1]]), "test", 10.0)
    with pytest.raises(TrainingFailed, match="nan"):
        check_predictions(torch.tensor([[float("nan"), 0.0, 0.0]]), "test", 1e-3)


def test_an_output_place_that_cannot_be_written_is_named_before_any_work(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_writable(a_file)
    with pytest.raises(OutputPathError, match="is a folder; --out takes a file name"):
        check_output_file(tmp_path)
    assert check_writable(tmp_path / "new" / "root").is_dir()


def test_train_refuses_an_out_that_is_a_folder_before_training(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "helpers", "train", "--out", str(tmp_path), "--results-root",
         str(tmp_path / "results")], capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "is a folder; --out takes a file name" in finished.stderr
    assert "Traceback" not in finished.stderr and not (tmp_path / "results").exists()
