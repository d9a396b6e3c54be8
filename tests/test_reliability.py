"""What a user feeds the series, at its edges: each bad input is refused before any work, with
one message that names the file, row, split or setting and what to do."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers.__main__ import main
from helpers.audio import AudioError, read_audio
from helpers.config import RunConfig
from helpers.files import (DiskSpaceError, OutputPathError, atomic_write, check_output_file,
                           check_writable, write_json, write_records)
from helpers.manifests import ManifestError, check_splits, manifest_problems
from helpers.run import check_batch_budget, check_predictions
from helpers.train import TrainingFailed, fit


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
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--out", str(tmp_path), "--results-root", str(tmp_path / "results")])
    assert "is a folder; --out takes a file name" in str(stopped.value.code)
    assert not (tmp_path / "results").exists()


def test_a_run_whose_steps_all_lack_a_gradient_is_reported_as_never_learned(capsys):
    from functools import partial

    from torch.utils.data import DataLoader

    from conftest import ToneDataset
    from helpers.dataset import collate
    from test_loaders import tone_model

    one_clip_batches = DataLoader(ToneDataset(4), batch_size=1,
                                  collate_fn=partial(collate, attention_mask=False))
    dev = DataLoader(ToneDataset(4), batch_size=4,
                     collate_fn=partial(collate, attention_mask=False))
    config = RunConfig(device="cpu", num_epochs=2, progress=False)
    with pytest.raises(TrainingFailed, match=r"all 8 training steps had a zero gradient \(train "
                       r"loss per epoch: 1\.000, 1\.000\).*batch of one clip"):
        fit(tone_model(), one_clip_batches, dev, config)
    assert "epoch 2/2: train loss 1.000, dev CCC" in capsys.readouterr().out  # no bar: lines


def test_a_declared_duration_that_disagrees_with_the_file_names_the_row(manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    manifest.loc[2, "duration"] = 0.2  # understated: the file is 0.7 s long
    manifest.loc[4, "duration"] = 30.0  # overstated
    problems = manifest_problems(manifest)
    assert any(p.startswith("row 2 (") and "duration=0.2 but the file is 0.70 s long" in p
               for p in problems)
    assert any(p.startswith("row 4 (") and "duration=30.0" in p for p in problems)
    assert len(problems) == 2
    manifest.loc[2, "duration"], manifest.loc[4, "duration"] = 0.72, 0.9  # rounding is fine
    assert manifest_problems(manifest) == []


def test_a_full_disk_while_writing_names_the_file_and_keeps_the_earlier_one(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"kept": True})

    def fill_the_disk(temporary):
        temporary.write_text("half a rec")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskSpaceError, match=r"ran out of space while writing .*result.json.*"
                       r"the earlier result.json is unchanged"):
        atomic_write(path, fill_the_disk)
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left


def test_a_checkpoint_cut_short_by_a_full_disk_says_so(tmp_path, monkeypatch):
    """torch.save hides the reason ("unexpected pos"); next to nothing free gives it away."""
    import helpers.files
    from helpers.checkpoints import atomic_save

    def cut_short(state, temporary):
        temporary.write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    free = shutil.disk_usage(tmp_path)._replace(free=1024)
    monkeypatch.setattr(torch, "save", cut_short)
    monkeypatch.setattr(helpers.files.shutil, "disk_usage", lambda folder: free)
    with pytest.raises(DiskSpaceError, match=r"ran out of space while writing .*last.pt"):
        atomic_save({"weights": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_on_a_disk_with_room_keeps_its_own_error(tmp_path):
    def broken(temporary):
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug, not the disk"):
        atomic_write(tmp_path / "x.json", broken)


def test_bench_resume_names_a_hand_edited_record_that_lacks_what_the_tables_read(tmp_path):
    from helpers.tools.bench import GridRunner

    good = {"method": "full", "seed": 0, "lr": 5e-4, "trainable_params": 1,
            "seconds_per_epoch": 1.0, "dev_ccc": [0.1], "test_ccc_mean": 0.1,
            "test_ccc_arousal": 0.1, "test_ccc_valence": 0.1, "test_ccc_dominance": 0.1,
            "fingerprint": "a" * 64}
    edited = {**good, "method": "partial(3)", "fingerprint": "b" * 64}
    del edited["dev_ccc"]
    write_records([good, edited], tmp_path / "bench.jsonl")
    with pytest.raises(ValueError, match=r"bench.jsonl: the record of partial\(3\) \(seed 0, "
                       r"lr 0.0005, fingerprint bbbbbbbbbbbb\) has no dev_ccc; restore the "
                       r"line, or delete it"):
        GridRunner(tmp_path / "bench.jsonl", resume=True)
    write_records([good], tmp_path / "bench.jsonl")
    assert len(GridRunner(tmp_path / "bench.jsonl", resume=True).done) == 1


PEER = """
import os, sys, torch, torch.distributed as dist
from helpers.distributed import peers_watched, sum_over_ranks
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    os._exit(1)  # killed
with peers_watched():
    sum_over_ranks(1.0)
"""


def test_a_rank_killed_mid_run_gives_the_others_a_message_not_a_gloo_error(tmp_path):
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", PEER], env={**env, "RANK": str(rank)},
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    survivor = ranks[0].communicate(timeout=120)[1]
    ranks[1].wait(timeout=60)
    assert ranks[0].returncode != 0
    assert "PeerLost: rank 0: another process of this run stopped" in survivor
    assert "--resume" in survivor


def test_every_option_of_train_says_what_it_does_once():
    text = subprocess.run([sys.executable, "-m", "helpers", "train", "--help"],
                          capture_output=True, text=True).stdout
    assert "--no_progress, --no-progress\n" in text
    assert "the opposite of --progress (show progress bars)" in text
    assert "(default: never stop early) (default" not in " ".join(text.split())


def test_lr_none_on_a_backbone_the_bench_never_trained_asks_for_a_rate(monkeypatch, tmp_path):
    from helpers.notebook import bench_learning_rate, reference_results
    from helpers.tables import chosen_learning_rates

    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))  # the reference bench: the tiny backbone
    with pytest.raises(ValueError, match=r"the bench never trained random:hubert-base\. Set LR "
                       r"in the parameters cell.*--lrs 2e-5"):
        bench_learning_rate("full", "random:hubert-base")
    chosen = chosen_learning_rates(reference_results("bench"), ["full"])["full"]
    assert bench_learning_rate("full", "tiny") == chosen
