"""One home for a run's settings, and results keyed by everything that produced them."""

import ast
import importlib
import inspect
import json
import pkgutil

import nbformat
import pandas as pd
import pytest

import helpers
import helpers.run
from helpers.__main__ import parser
from helpers.config import NOT_IN_FINGERPRINT, BenchGrid, RunConfig, TimingConfig
from helpers.device import resolve_device
from helpers.fingerprints import run_fingerprint
from helpers.manifests import data_fingerprint
from helpers.results import Result
from helpers.run import run_or_load
from helpers.tools.run_notebooks import series


def cli_defaults(command: str) -> dict:
    """Every option of a generated command with the default the parser gives it."""
    args = vars(parser().parse_args([command]))
    return {k: v for k, v in args.items() if k not in ("command", "function", "out", "dry_run")}


@pytest.mark.parametrize("command, dtypes", [("train", (RunConfig,)),
                                             ("bench", (RunConfig, TimingConfig, BenchGrid))])
def test_the_command_line_states_exactly_the_settings_and_their_defaults(command, dtypes):
    given = cli_defaults(command)
    expected = {}
    for dtype in reversed(dtypes):  # a setting two dataclasses share takes the first's default
        expected.update(dtype().to_dict())
    assert given == expected  # the same names (no renamed twins) and the same defaults


def test_no_function_states_a_default_of_its_own_for_a_setting():
    """A parameter named like a setting defaults to None or to the settings' own default."""
    defaults = {}
    for dtype in (RunConfig, TimingConfig, BenchGrid):
        for name, value in dtype().to_dict().items():
            defaults.setdefault(name, set()).add(json.dumps(value))
    wrong = []
    for module in [importlib.import_module(m.name) for m in pkgutil.walk_packages(
            helpers.__path__, "helpers.") if m.name != "helpers.__main__"
            and not m.name.startswith("helpers.bundled")]:  # the pretraining recipe: RECIPE
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            for parameter in inspect.signature(function).parameters.values():
                value = parameter.default
                if parameter.name in defaults and value not in (None, parameter.empty) \
                        and json.dumps(value) not in defaults[parameter.name]:
                    wrong.append(f"{module.__name__}.{name}({parameter.name}={value!r})")
    assert not wrong


SETTING_NAMES = {"NUM_EPOCHS": "num_epochs", "LR": "lr", "BATCH_SECONDS": "max_batch_seconds",
                 "SEED": "seed", "BACKBONE": "backbone", "DATA": "data", "DEVICE": "device"}


@pytest.mark.parametrize("path", series(), ids=lambda p: p.stem)
def test_a_notebooks_parameters_cell_states_no_other_default(path):
    """A parameters cell may leave a setting out, set it to None (the series' choice), or
    state RunConfig's default; the notebooks' budget itself lives in config.py."""
    cell = next(c for c in nbformat.read(path, as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    defaults = RunConfig().to_dict()
    for node in ast.parse(cell.source).body:
        if not isinstance(node, ast.Assign) or node.targets[0].id not in SETTING_NAMES:
            continue
        value = node.value
        if isinstance(value, ast.BoolOp):  # os.environ.get("X") or None
            value = value.values[-1]
        if isinstance(value, ast.Call):  # os.environ.get("X", default)
            value = value.args[1] if len(value.args) > 1 else ast.Constant(None)
        stated = ast.literal_eval(value)
        setting = SETTING_NAMES[node.targets[0].id]
        assert stated in (None, defaults[setting]), f"{path.stem}: {setting}={stated!r}"


@pytest.mark.parametrize("setting, value", [("num_epochs", 0), ("lr", float("nan")),
                                            ("lr", -1.0), ("max_batch_seconds", 0),
                                            ("num_workers", -1), ("seed", -3),
                                            ("max_grad_norm", 0), ("max_grad_norm", -1),
                                            ("warmup_ratio", -1), ("weight_decay", -0.1)])
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
        assert fingerprint == run_fingerprint(config, data_fingerprint(manifest))
        return Result(**{**FAKE, "fingerprint": fingerprint, "config": config.to_dict()})

    monkeypatch.setattr(helpers.run, "run", fake_run)
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
    fingerprint = run_fingerprint(base, data_fingerprint(manifest))
    saved = next((tmp_path / "runs").glob(f"full-{fingerprint[:16]}.json"))
    values = json.loads(saved.read_text())
    saved.write_text(json.dumps({**values, "key": "someone else's"}))
    run_or_load(base, manifest)  # a file whose record does not match is not trusted
    assert len(counted_runs) == 3 + len(changes)


def test_the_device_and_its_model_are_part_of_the_fingerprint(monkeypatch):
    import helpers.fingerprints

    cpu = RunConfig(device="cpu")
    assert "device" not in NOT_IN_FINGERPRINT
    before = run_fingerprint(cpu, "d", "b")
    monkeypatch.setattr(helpers.fingerprints, "device_name", lambda device: "another CPU")
    assert run_fingerprint(cpu, "d", "b") != before  # timings made on other hardware


def test_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        resolve_device("cuda")
