"""The real-corpus adapters, on small trees written in the official formats."""

import pandas as pd
import pytest

from conftest import write_tone
from helpers.corpora import iemocap, msp_podcast
from helpers.manifests import ManifestError, from_common, to_common

MSP_LABELS = """FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Train
MSP-PODCAST_0001_0019.wav,A,6.0,2.2,5.6,Unknown,Male,Train
MSP-PODCAST_0002_0001.wav,H,3.8,6.4,4.0,,Female,Development
MSP-PODCAST_0003_0003.wav,S,2.0,2.6,3.0,931,Male,Test1
MSP-PODCAST_0004_0007.wav,X,5.0,4.0,5.0,1201,Female,Test2
"""


@pytest.fixture
def msp_root(tmp_path):
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Labels" / "labels_consensus.csv").write_text(MSP_LABELS)
    for name in pd.read_csv(tmp_path / "Labels" / "labels_consensus.csv")["FileName"]:
        write_tone(tmp_path / "Audios" / name, seconds=0.3)
    return tmp_path


def test_msp_podcast_reads_the_consensus_labels(msp_root):
    manifest = msp_podcast(msp_root)
    assert manifest["split"].tolist() == ["train", "train", "dev", "test"]  # Test2 left out
    assert manifest.loc[0, ["arousal", "valence", "dominance"]].tolist() == [4.2, 4.0, 4.4]
    assert (manifest["label_min"] == 1).all() and (manifest["label_max"] == 7).all()
    assert manifest.loc[0, "speaker"] == "127"
    assert manifest.loc[1, "speaker"] == "unknown-MSP-PODCAST_0001_0019.wav"  # "Unknown"
    assert manifest.loc[2, "speaker"].startswith("unknown-")                   # missing
    assert manifest["duration"].round(2).tolist() == [0.3] * 4


def test_msp_podcast_can_use_another_test_set(msp_root):
    manifest = msp_podcast(msp_root, test_set="Test2")
    assert manifest.loc[manifest["split"] == "test", "speaker"].tolist() == ["1201"]


def test_msp_podcast_refuses_unknown_split_sets(msp_root):
    labels = msp_root / "Labels" / "labels_consensus.csv"
    labels.write_text(MSP_LABELS.replace("Development", "Holdout"))
    with pytest.raises(ManifestError, match="Holdout"):
        msp_podcast(msp_root)


def test_msp_podcast_names_a_missing_audio_file(msp_root):
    (msp_root / "Audios" / "MSP-PODCAST_0002_0001.wav").unlink()
    with pytest.raises(ManifestError, match="MSP-PODCAST_0002_0001.wav.*not found"):
        msp_podcast(msp_root)


EVALUATION = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes0{s}F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tNeutral;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes0{s}F_impro01_M001\tang\t[1.5000, 4.0000, 4.5000]
C-E1:\tAnger;\t()
"""


@pytest.fixture
def iemocap_root(tmp_path):
    for session in range(1, 6):
        folder = tmp_path / f"Session{session}"
        (folder / "dialog" / "EmoEvaluation").mkdir(parents=True)
        (folder / "dialog" / "EmoEvaluation" / f"Ses0{session}F_impro01.txt").write_text(
            EVALUATION.format(s=session))
        for turn in ("F000", "M001"):
            write_tone(folder / "sentences" / "wav" / f"Ses0{session}F_impro01" /
                       f"Ses0{session}F_impro01_{turn}.wav", seconds=0.2)
    (tmp_path / "Documentation").mkdir()  # other folders of the release are ignored
    return tmp_path


def test_iemocap_reads_evaluation_files_and_skips_comments(iemocap_root):
    manifest = iemocap(iemocap_root)
    assert len(manifest) == 10
    angry = manifest[manifest["path"].str.endswith("Ses01F_impro01_M001.wav")].iloc[0]
    assert (angry["valence"], angry["arousal"], angry["dominance"]) == (1.5, 4.0, 4.5)
    assert angry["speaker"] == "Ses01M" and angry["label_max"] == 5.0
    assert angry["duration"] == pytest.approx(0.2)  # the file's header, not the turn's times


def test_iemocap_splits_leave_one_session_out(iemocap_root):
    for fold in range(1, 6):
        manifest = iemocap(iemocap_root, test_session=fold, dev_session=None)
        test_paths = manifest.loc[manifest["split"] == "test", "path"]
        assert len(test_paths) == 2 and test_paths.str.contains(f"Session{fold}").all()
        assert (manifest["split"] != "dev").all()


def test_iemocap_points_at_the_right_folder(tmp_path):
    with pytest.raises(ManifestError, match="Session1"):
        iemocap(tmp_path)


def test_predictions_map_back_to_each_corpus_scale():
    assert from_common(to_common(4.0, 1, 7), 1, 7) == 4.0
    assert from_common(0.5, 1, 5) == 3.0
