"""Reliability: a failed run destroys nothing, nothing stale or untrained is reported, and every
bad input gets one clear line that names the file, row or argument and what to do."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_adapters import MSP_LABELS
from transformers import Wav2Vec2Model

from conftest import GUARD, small_config, write_tone
from helpers.__main__ import main
from helpers.backbone import load_backbone
from helpers.config import RunConfig
from helpers.constants import DIMENSIONS
from helpers.corpora import iemocap, msp_podcast
from helpers.manifests import ManifestError, load_manifest
from helpers.methods import parse_method, prepare
from helpers.run import run
from helpers.train import TrainingFailed

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GUARD),
                                                      os.environ.get("PYTHONPATH", "")])}


def helpers_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> dict:
    """A 12-clip manifest CSV and a 2-layer backbone folder: a bench in seconds."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i in range(12):
        split = ["train"] * 6 + ["dev"] * 3 + ["test"] * 3
        path = write_tone(root / f"clip{i}.wav", seconds=0.4 + 0.05 * i, frequency=150 + 40 * i)
        rows.append({"path": path.name, **{d: 1 + (i * 7 % 6) for d in DIMENSIONS},
                     "split": split[i], "speaker": f"s{i % 3}", "label_min": 1,
                     "label_max": 7})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    torch.manual_seed(0)
    Wav2Vec2Model(small_config("base", layers=2)).save_pretrained(root / "backbone")
    return {"csv": str(root / "labels.csv"), "backbone": str(root / "backbone")}


# ----------------------------------------------------------- rule 1: nothing is destroyed
@pytest.mark.parametrize("bad, says", [
    (["--methods", "partial(99)"], "method partial(99): the backbone has 2 transformer layers"),
    (["--jobs", "0"], "jobs=0 must be at least 1"),
    (["--seeds", "0"], "seeds=0 must be at least 1"),
    (["--methods", "lora(0)"], "the number (rank) must be at least 1"),
    (["--methods", "partial(2)+cnn"], "+cnn (train the CNN feature encoder too) is only possible"),
    (["--device", "cuda"], "device 'cuda': this machine has no usable CUDA GPU"),
    (["--num-epochs", "0"], "num_epochs=0 must be at least 1"),
    (["--lrs", "nan"], "lrs='nan' must be comma-separated positive numbers")])
def test_a_bench_with_a_bad_argument_keeps_the_previous_results(tmp_path, tiny_corpus, bad,
                                                                 says, capsys):
    if bad == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "bench.jsonl").write_text('{"method": "full", "earlier": "two hours"}\n')
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "--results-root", str(tmp_path), "--data", tiny_corpus["csv"],
              "--backbone", tiny_corpus["backbone"], *bad])
    message = str(stopped.value.code)
    assert message.startswith("python -m helpers bench: error:")
    assert says in message  # the guard of this very setting fired
    assert "two hours" in (tmp_path / "bench.jsonl").read_text()


def bench_until_a_run_finished(args: list[str], results: Path, **streams):
    """Start ``python -m helpers bench`` in a process group of its own and return once its
    first run's record is in the partial file (or after 300 s), with that file's path."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **streams}
    bench = subprocess.Popen([sys.executable, "-m", "helpers", *args], env=ENV, text=True,
                             start_new_session=True, **streams)
    partial = results / "bench.jsonl.partial"
    deadline = time.time() + 300
    while time.time() < deadline and not (partial.is_file() and partial.read_text().count("\n")):
        time.sleep(0.2)
    return bench, partial


def test_a_bench_killed_mid_run_loses_nothing_and_resumes(tmp_path, tiny_corpus):
    (tmp_path / "bench.jsonl").write_text('{"method": "full", "earlier": "two hours"}\n')
    args = ["bench", "--data", tiny_corpus["csv"], "--backbone",
            tiny_corpus["backbone"], "--methods", "partial(1),cached(1)", "--lrs", "1e-3",
            "--seeds", "1", "--num-epochs", "1", "--max-batch-seconds", "2",
            "--results-root", str(tmp_path)]
    bench, partial = bench_until_a_run_finished(args, tmp_path, stderr=subprocess.DEVNULL)
    os.killpg(bench.pid, signal.SIGKILL)  # the bench and the run it had started
    bench.wait()
    assert "two hours" in (tmp_path / "bench.jsonl").read_text()  # untouched
    assert partial.read_text().count("\n") == 1  # killed during the second run (seconds)
    resumed = helpers_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("--- ") == 1  # the finished run is not rerun
    records = pd.read_json(tmp_path / "bench.jsonl", lines=True)
    assert len(records) == 1 + 2 and not partial.exists()  # the earlier record is kept
    assert set(records["method"]) == {"full", "partial(1)", "cached(1)"}  # full: the earlier
    assert "two hours" in (tmp_path / "bench.jsonl").read_text()


# ---------------------------------------------- rule 2: no untrained model, no reused record
def test_a_model_that_never_trained_is_not_reported(tmp_path, manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    manifest.loc[manifest["split"] == "train", "arousal"] = float("nan")  # every loss NaN
    config = RunConfig(device="cpu", num_epochs=1, results_root=str(tmp_path), progress=False,
                       backbone="random:tiny")
    with pytest.raises(TrainingFailed, match="never trained"):
        run(config, manifest)


# ------------------------------------------------------------------ rule 4: clear errors
def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


@pytest.fixture
def one_clip(tmp_path) -> str:
    return str(write_tone(tmp_path / "a.wav", seconds=0.5))


HEADER = "path,arousal,valence,dominance,split,speaker,label_min,label_max,duration\n"


@pytest.mark.parametrize("text, expected", [
    ("", "not a readable CSV"),
    (HEADER + "{clip},\"3,5\",4,4,train,s,1,7,0.5\n", r"arousal='3,5' is not a number"),
    (HEADER + ",4,4,4,train,s,1,7,0.5\n", "row 0: the path is empty"),
    (HEADER + "{clip},4,4,4,train,s,1,7,\n", "duration is missing; drop the column"),
    (HEADER + "{clip},4,4,4,validation,s,1,7,0.5\n", "split 'validation' is not one of"),
    (HEADER + "{clip},9,4,4,train,s,1,7,0.5\n", r"arousal=9\S* is outside the declared range"),
])
def test_bad_manifests_name_the_row_and_the_fix(tmp_path, one_clip, text, expected):
    with pytest.raises(ManifestError, match=expected):
        load_manifest(write_csv(tmp_path, text.replace("{clip}", one_clip)))


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv: manifest not found"):
        load_manifest(tmp_path / "nowhere.csv")


def test_iemocap_skips_hidden_macos_files(tmp_path):
    folder = tmp_path / "Session5" / "dialog" / "EmoEvaluation"
    folder.mkdir(parents=True)
    (folder / "._Ses05F_impro01.txt").write_bytes(b"\x00\x05\x16\x07\xff\xfe junk")
    (folder / "Ses05F_impro01.txt").write_text(
        "[6.2 - 8.2]\tSes05F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n")
    write_tone(tmp_path / "Session5/sentences/wav/Ses05F_impro01/Ses05F_impro01_F000.wav")
    assert len(iemocap(tmp_path, test_session=5, dev_session=None)) == 1
    with pytest.raises(ValueError, match="two different sessions"):
        iemocap(tmp_path, test_session=4, dev_session=4)


@pytest.fixture
def msp_release(tmp_path) -> Path:
    (tmp_path / "Labels").mkdir()
    labels = MSP_LABELS.replace("Development", "Validation")  # older releases
    (tmp_path / "Labels" / "labels_consensus.csv").write_text(labels)
    for name in pd.read_csv(tmp_path / "Labels" / "labels_consensus.csv")["FileName"]:
        write_tone(tmp_path / "Audios" / name, seconds=0.3)
    return tmp_path


def test_msp_podcast_accepts_validation_and_refuses_a_non_test_partition(msp_release):
    assert (msp_podcast(msp_release)["split"] == "dev").sum() == 1
    for wrong in ["Train", "Development", "Test9"]:
        with pytest.raises(ValueError, match="test partitions this release has"):
            msp_podcast(msp_release, test_set=wrong)


@pytest.mark.parametrize("method, expected", [
    ("partial(99)", r"6 transformer layers, so at most partial\(6\)"),
    ("cached(7)", r"at most cached\(6\)"),
])
def test_methods_that_do_not_fit_the_backbone_are_refused(method, expected):
    with pytest.raises(ValueError, match=expected):
        prepare(method, "random:tiny")


@pytest.mark.parametrize("method, expected", [
    ("lora(0)", "at least 1"), ("partial(3)+cnn", r"\+cnn .* only .* full"),
    ("weighted-sum+cnn", r"\+cnn"), ("full+bf16+fp16", "two precisions")])
def test_options_a_method_cannot_honour_are_refused(method, expected):
    with pytest.raises(ValueError, match=expected):
        parse_method(method)


def test_a_mistyped_folder_is_named_and_a_hub_id_fails_fast_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_backbone(str(tmp_path / "backbon"))
    with pytest.raises(FileNotFoundError, match="Hub cannot be reached"):
        load_backbone("someone/not-cached-wav2vec2")  # the network guard refuses the probe
    assert time.perf_counter() - start < 10


def test_resume_without_a_checkpoint_folder_is_refused(tmp_path, tiny_corpus):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--resume", "--data", tiny_corpus["csv"], "--backbone",
              tiny_corpus["backbone"], "--device", "cpu", "--num-epochs", "1",
              "--results-root", str(tmp_path), "--no-progress"])
    assert "resume=True (--resume) needs checkpoint_dir (--checkpoint-dir)" in \
        str(stopped.value.code)


def test_ctrl_c_stops_a_bench_promptly_and_keeps_what_finished(tmp_path, tiny_corpus):
    args = ["bench", "--data", tiny_corpus["csv"], "--backbone", tiny_corpus["backbone"],
            "--methods", "partial(1),cached(1),full", "--lrs", "1e-3", "--seeds", "3",
            "--num-epochs", "1", "--max-batch-seconds", "2", "--results-root", str(tmp_path)]
    bench, partial = bench_until_a_run_finished(args, tmp_path, stdout=subprocess.DEVNULL)
    os.killpg(bench.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
    stopped = time.time()
    _, stderr = bench.communicate(timeout=60)
    assert time.time() - stopped < 30 and bench.returncode != 0  # no queued run started
    assert "stopped by Ctrl-C" in stderr and "--resume" in stderr and "Traceback" not in stderr
    kept = partial.read_text().count("\n")
    assert 1 <= kept < 9 and not (tmp_path / "bench.jsonl").exists()
