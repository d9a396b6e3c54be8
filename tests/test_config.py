"""One home for a run's settings, and results keyed by everything that produced them."""

import inspect
import json

import pandas as pd
import pytest

from helpers import experiments, notebook
from helpers.__main__ import parser
from helpers.config import NOT_IN_FINGERPRINT, RunConfig
from helpers.data import data_fingerprint
from helpers.experiments import run_or_load


def test_run_config_holds_the_only_defaults():
    defaults = RunConfig()
    bench = parser().parse_args(["bench"])
    assert (bench.epochs, bench.batch_seconds, bench.backbone, bench.data, bench.device,
            bench.results_root) == (defaults.num_epochs, defaults.max_batch_seconds,
                                    defaults.backbone, defaults.data, defaults.device,
                                    defaults.results_root)
    settings = {"num_epochs", "lr", "batch_size", "seed", "patience", "device"}
    for function in (experiments.run, experiments.run_or_load, notebook.train):
        defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()
                    if name in settings}
        assert all(value is None for value in defaults.values()), function.__name__


@pytest.mark.parametrize("setting, value", [("num_epochs", 0), ("lr", float("nan")),
                                            ("lr", -1.0), ("max_batch_seconds", 0),
                                            ("num_workers", -1), ("seed", -3)])
def test_nonsense_settings_are_refused_by_name(setting, value):
    with pytest.raises(ValueError, match=setting):
        RunConfig(**{setting: value})


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="no settings.*batch_size"):
        RunConfig.from_dict({"batch_size": 8})


@pytest.fixture
def counted_runs(monkeypatch):
    calls = []

    def fake_run(config, manifest, fingerprint=None):
        calls.append(config)
        assert fingerprint == config.fingerprint(data_fingerprint(manifest))
        return experiments.Result(**{**FAKE, "fingerprint": fingerprint,
                                     "config": config.to_dict()})

    monkeypatch.setattr(experiments, "run", fake_run)
    return calls


FAKE = dict(method="full", kind="full", layers_or_rank=None, backbone="tiny", device="cpu",
            precision="fp32", tf32=False, attention="sdpa", seed=0, trainable_params=1, total_params=1, code_version="x",
            torch="x", python="x", data="bundled", lr=1e-4, num_epochs=1, max_batch_seconds=1,
            seconds_per_epoch=1, samples_per_second=1, audio_seconds_per_second=1,
            data_wait_seconds=[0], compute_seconds=[1], data_wait_share=0, best_epoch=0,
            skipped_steps=0, train_loss=[1], dev_ccc=[0], test_ccc_arousal=0,
            test_ccc_valence=0, test_ccc_dominance=0, test_ccc_mean=0)


def test_saved_results_are_reused_only_for_the_same_run(tmp_path, manifest_rows, counted_runs):
    manifest = pd.DataFrame(manifest_rows)
    base = RunConfig(device="cpu", results_root=str(tmp_path), num_epochs=2)
    run_or_load(base, manifest)
    run_or_load(base.with_(num_workers=2, progress=False), manifest)  # how, not what: reused
    assert len(counted_runs) == 1
    changes = [dict(num_epochs=3), dict(max_batch_seconds=16.0), dict(seed=1), dict(lr=1e-3),
               dict(method="partial(1)"), dict(data="other.csv"), dict(backbone="elsewhere")]
    for change in changes:
        run_or_load(base.with_(**change), manifest)
    assert len(counted_runs) == 1 + len(changes)
    other_data = manifest.assign(arousal=manifest["arousal"] + 0.5)  # DATA switched
    run_or_load(base, other_data)
    assert len(counted_runs) == 2 + len(changes)
    fingerprint = base.fingerprint(data_fingerprint(manifest))
    saved = next((tmp_path / "runs").glob(f"full-{fingerprint[:16]}.json"))
    values = json.loads(saved.read_text())
    saved.write_text(json.dumps({**values, "fingerprint": "someone else's"}))
    run_or_load(base, manifest)  # a file whose record does not match is not trusted
    assert len(counted_runs) == 3 + len(changes)


def test_the_device_and_its_model_are_part_of_the_fingerprint(monkeypatch):
    import helpers.timing

    cpu = RunConfig(device="cpu")
    assert "device" not in NOT_IN_FINGERPRINT
    before = cpu.fingerprint("d", "b")
    monkeypatch.setattr(helpers.timing, "device_name", lambda device: "another CPU")
    assert cpu.fingerprint("d", "b") != before  # timings made on other hardware


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        RunConfig(device="cuda").resolved()
