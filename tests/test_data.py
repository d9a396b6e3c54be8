import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from conftest import small_config, write_tone
from helpers.audio import AudioError, normalize, read_audio
from helpers.constants import DIMENSIONS
from helpers.dataset import SpeechDataset, collate_for
from helpers.manifests import (ManifestError, from_common, load_manifest, to_common,
                               validate_manifest)

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def test_stereo_44k_comes_out_16k_mono(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", seconds=1.0, rate=44_100, channels=2)
    waveform = read_audio(path)
    assert waveform.ndim == 1 and waveform.dtype == torch.float32
    assert len(waveform) == pytest.approx(16_000, abs=1)


def test_48k_flac_is_resampled(tmp_path):
    assert len(read_audio(write_tone(tmp_path / "a.flac", seconds=0.5, rate=48_000))) == 8000


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        read_audio(tmp_path / "nowhere.wav")


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF this is not really a wave file")
    with pytest.raises(AudioError, match="broken.wav.*corrupt"):
        read_audio(path)


@pytest.mark.parametrize("seconds", [0.0, 0.05])
def test_empty_and_too_short_clips_are_refused(tmp_path, seconds):
    path = tmp_path / "short.wav"
    sf.write(path, torch.zeros(int(seconds * 16_000)).numpy(), 16_000)
    with pytest.raises(AudioError, match="short.wav.*minimum"):
        read_audio(path)


def test_labels_round_trip_through_the_common_range():
    labels = torch.tensor([1.0, 4.0, 7.0])
    assert torch.allclose(to_common(labels, 1, 7), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(from_common(to_common(labels, 1, 7), 1, 7), labels)


def test_collate_zero_pads_without_mask_for_group_norm_backbones():
    batch = [{"input_values": torch.ones(5), "labels": torch.zeros(3)},
             {"input_values": torch.ones(3), "labels": torch.ones(3)}]
    out = collate_for(small_config("base"))(batch)
    assert "attention_mask" not in out
    assert out["input_values"].tolist() == [[1.0] * 5, [1.0] * 3 + [0.0, 0.0]]
    assert out["lengths"].tolist() == [5, 3]


def test_collate_masks_padding_for_layer_norm_backbones():
    batch = [{"input_values": torch.ones(2), "labels": torch.zeros(3)},
             {"input_values": torch.ones(4), "labels": torch.ones(3)}]
    out = collate_for(small_config("large"))(batch)
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert out["labels"].shape == (2, 3)


def test_dataset_normalises_scales_labels_and_crops(manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    train = SpeechDataset(manifest, "train", max_seconds=0.25, train=True, seed=1)
    item = train[0]
    assert len(item["input_values"]) == 4000
    assert item["input_values"].mean().abs() < 1e-3
    assert item["input_values"].std(unbiased=False) == pytest.approx(1.0, abs=1e-3)
    assert item["labels"].tolist() == pytest.approx([0.0] * 3)  # label 1 on a 1-7 scale


def test_training_crops_are_random_per_epoch_and_evaluation_crops_are_fixed(manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    train = SpeechDataset(manifest, "train", max_seconds=0.1, train=True, seed=0)
    crops = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        crops.add(tuple(train[1]["input_values"][:5].tolist()))
    assert len(crops) > 1
    train.set_epoch(0)
    again = SpeechDataset(manifest, "train", max_seconds=0.1, train=True, seed=0)
    assert torch.equal(train[1]["input_values"], again[1]["input_values"])

    # the first dev clip (0.7 s) as noise: unlike a tone's, no other window of it equals the centre
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 11_200)
    sf.write(manifest_rows[2]["path"], noise, 16_000)
    dev = SpeechDataset(manifest, "dev", max_seconds=0.1)  # clips of 0.7 s and 0.8 s
    whole = read_audio(manifest_rows[2]["path"])
    start = (len(whole) - 1600) // 2
    centre = normalize(whole[start:start + 1600])  # the centre 0.1 s, in every epoch
    for epoch in range(4):
        dev.set_epoch(epoch)
        assert torch.equal(dev[0]["input_values"], centre), epoch
        assert torch.equal(dev[(0, epoch)]["input_values"], centre), epoch


def test_load_manifest_resolves_relative_paths(tmp_path, manifest_rows):
    table = pd.DataFrame(manifest_rows)
    table["path"] = [str(p).replace(str(tmp_path) + "/", "") for p in table["path"]]
    table.drop(columns=["label_min", "label_max", "duration"]).to_csv(tmp_path / "m.csv",
                                                                      index=False)
    manifest = load_manifest(tmp_path / "m.csv", label_range=(1, 7))
    assert manifest["duration"].iloc[0] == pytest.approx(0.5)
    with pytest.raises(ManifestError, match="label_range"):
        load_manifest(tmp_path / "m.csv")


def test_validate_manifest_reports_every_problem_in_one_pass(tmp_path, manifest_rows):
    rows = [dict(r) for r in manifest_rows]
    rows[0]["arousal"] = float("nan")
    rows[1]["valence"] = 9.0
    rows[2]["split"] = "validation"
    rows[3]["path"] = str(tmp_path / "missing.wav")
    rows[5]["path"] = rows[4]["path"]
    with pytest.raises(ManifestError) as error:
        validate_manifest(pd.DataFrame(rows))
    message = str(error.value)
    for expected in ["row 0", "arousal is missing", "row 1", "valence=9.0 is outside",
                     "row 2", "'validation'", "row 3", "not found", "rows [4, 5]",
                     "more than once", "row 5", "duration=1.0 but the file is 0.90 s long"]:
        assert expected in message  # row 5 declares its own duration for row 4's file
    assert message.startswith("manifest: 6 problem(s)")


def test_missing_columns_are_named():
    with pytest.raises(ManifestError, match="missing columns.*speaker"):
        validate_manifest(pd.DataFrame({"path": ["a.wav"], **{d: [1.0] for d in DIMENSIONS}}))
