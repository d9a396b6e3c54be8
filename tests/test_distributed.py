"""Scale-out: two CPU processes (gloo) under torchrun train like one, score once, write once.

A launch spends seconds starting processes before it trains, so each method's run is
launched once (``launched``) and several tests assert on it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock

from conftest import GUARD

from helpers.checkpoints import load_checkpoint, load_trainable_state
from helpers.config import RunConfig
from helpers.corpora import load_data
from helpers.methods import parse_method, prepare
from helpers.notebook import smoke_subset
from helpers.run import audio_loaders, cached_loaders, run
from helpers.train import evaluate

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")])}
EPOCHS = 2  # enough to interrupt a run after its first epoch and resume it
pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> str:
    """24 training clips of the bundled corpus (and 8 dev, 8 test) as a manifest CSV."""
    manifest = smoke_subset(load_data("bundled"), per_split=24)
    manifest = pd.concat([manifest[manifest.split == "train"],
                          manifest[manifest.split != "train"].groupby("split").head(8)])
    path = tmp_path_factory.mktemp("subset") / "subset.csv"
    manifest.to_csv(path, index=False)
    return str(path)


def launch(processes: int, out: Path, *options: str, wait: bool = True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(processes), "-m", "helpers", "train", "--device", "cpu",
               "--no-progress", "--out", str(out), *options]
    if not wait:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    finished = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(out.read_text())


def training_options(subset: str, method: str, results_root: Path) -> list[str]:
    """The settings of every two-process run here: 8 s batches on each process."""
    return ["--data", subset, "--method", method, "--num-epochs", str(EPOCHS),
            "--max-batch-seconds", "8", "--results-root", str(results_root)]


@pytest.fixture(scope="module")
def launched(subset, tmp_path_factory):
    """``launched(method)``: the result of the two-process run of ``method``, and its folder
    (its results root, holding the result ``two.json`` and the checkpoints ``ck/``).

    Launched by the first test that asks for it in the session. Under pytest-xdist, tests of
    this module may run on different workers, so the run lives in the folder the workers
    share, and a lock makes the other worker wait for it instead of launching it again.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's

    def launched_run(method: str) -> tuple[dict, Path]:
        folder = shared / f"two-processes-{method.replace('(', '').replace(')', '')}"
        with FileLock(f"{folder}.lock"):
            if not (folder / "two.json").is_file():
                folder.mkdir(exist_ok=True)
                launch(2, folder / "two.json", *training_options(subset, method, folder),
                       "--checkpoint-dir", str(folder / "ck"))
        return json.loads((folder / "two.json").read_text()), folder
    return launched_run


@pytest.mark.parametrize("method", ["partial(3)", "cached(3)"])
def test_two_processes_share_an_epoch_score_once_and_write_once(subset, launched, method):
    result, folder = launched(method)
    assert result["world_size"] == 2
    assert result["train_clips_per_epoch"] == [24] * EPOCHS  # the ranks' shares, once each
    assert list(folder.glob("*.json")) == [folder / "two.json"]  # one writer

    # the dev CCC of the gathered predictions is that of one process scoring the same weights
    config = RunConfig(method=method, data=subset, device="cpu", max_batch_seconds=8,
                       results_root=str(folder), progress=False)
    manifest = load_data(subset)
    prepared = prepare(config.method, config.backbone, config.seed)
    load_trainable_state(prepared.model, load_checkpoint(folder / "ck" / "last.pt")
                         ["best_trainable"])
    parsed = parse_method(method)
    loaders = (cached_loaders(prepared, manifest, config, parsed)[0]
               if parsed.spec.trains_on_cache
               else audio_loaders(manifest, prepared.regressor.backbone.config, config, parsed))
    single = evaluate(prepared.model, loaders["dev"], "cpu")["ccc"]["mean"]
    best = result["best_epoch"]
    assert result["dev_ccc"][best] == pytest.approx(single, abs=1e-4)  # dev_ccc is rounded

    # the same global batch (2 x 8 s) in one process trains to a similar loss, epoch by epoch
    one = run(config.with_(num_epochs=EPOCHS, max_batch_seconds=16))
    assert result["train_loss"] == pytest.approx(one.train_loss, abs=0.1)


def test_a_two_process_run_resumes_from_its_checkpoint(tmp_path, subset, launched):
    """Killed after its first epoch and resumed, a run ends as the uninterrupted one did."""
    whole, _ = launched("partial(3)")
    options = training_options(subset, "partial(3)", tmp_path)
    checkpoint = tmp_path / "cut" / "last.pt"
    cut = launch(2, tmp_path / "cut.json", *options, "--checkpoint-dir", str(tmp_path / "cut"),
                 wait=False)
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(cut.pid, signal.SIGKILL)  # interrupted after its first epoch
    cut.wait()
    assert checkpoint.exists() and not (tmp_path / "cut.json").exists()
    assert len(load_checkpoint(checkpoint)["result"]["history"]) < EPOCHS
    resumed = launch(2, tmp_path / "cut.json", *options, "--checkpoint-dir",
                     str(tmp_path / "cut"), "--resume")
    assert resumed["train_loss"] == whole["train_loss"]
    assert resumed["dev_ccc"] == whole["dev_ccc"] and resumed["test_ccc_mean"] == \
        whole["test_ccc_mean"]
