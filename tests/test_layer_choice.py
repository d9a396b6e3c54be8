"""The layer-choice explorer's answer to "what will it cost me?": its memory model holds to
every measured peak it is calibrated on (CPU and GPU), and its time for the bundled model holds
to that model's measured steps; the figure and summary draw from the same numbers."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from helpers.layer_choice import (DeviceModel, calibration_steps, device_models,
                                  explorer_inputs, fixed_mib, memory_terms, peak_mib,
                                  step_shape, with_peak)
from helpers.notebook import measured_steps
from helpers.plots import layer_choice_figure, layer_choice_summary

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, DeviceModel]:
    with pytest.MonkeyPatch.context() as patch:  # the shipped records only
        patch.setenv("RESULTS_DIR", str(tmp_path_factory.mktemp("empty-results")))
        return device_models(measured_steps())


def predicted_peak(model: DeviceModel, step: pd.Series) -> float:
    config, method, n = step_shape(step)
    terms = memory_terms(config, step["batch_size"], step["clip_seconds"], n,
                         method.kind != "cached")
    fixed = fixed_mib(step["total_params"], step["trainable_params"])
    return float(peak_mib(model.memory, np.array([fixed]), terms)[0])


@pytest.mark.parametrize("device", ["CPU", "GPU"])
def test_the_memory_model_is_within_25_percent_of_every_peak_it_is_calibrated_on(models,
                                                                                   device):
    model = models[device]
    assert len(model.steps) >= 15 and model.steps["backbone"].nunique() >= 3
    errors = {f"{s.backbone} {s.method} {s.batch_size}x{s.clip_seconds:g}s":
              predicted_peak(model, s) / s.peak_mib - 1 for _, s in model.steps.iterrows()}
    assert max(abs(e) for e in errors.values()) <= 0.25, errors


def test_the_bundled_models_predicted_step_time_is_within_25_percent_of_its_measured(models):
    chosen = explorer_inputs("tiny", 2, 3.0, None, models)
    measured = chosen["measured"].query("device == 'CPU'")
    assert set(measured["kind"]) == {"partial", "cached"} and len(measured) >= 5
    predicted = chosen["predicted"].set_index(["layers trained", "kind", "device"])
    for _, step in measured.iterrows():
        at = predicted.at[(step["layers trained"], step["kind"], "CPU"), "s/step"]
        assert abs(at / step["s/step"] - 1) <= 0.25, step.to_dict()
    assert "tiny" in models["CPU"].rates  # timed at its own rate, not wav2vec2-base's


def test_the_memory_model_is_not_a_constant(models):
    """More layers trained, longer clips and bigger batches each need more memory."""
    calm = explorer_inputs("random:wav2vec2-base", 2, 3.0, None, models)["predicted"]
    busy = explorer_inputs("random:wav2vec2-base", 16, 6.0, None, models)["predicted"]
    for device in ("CPU", "GPU"):
        cached = calm.query("kind == 'cached' and device == @device")["MiB"]
        assert cached.is_monotonic_increasing and cached.iloc[-1] > cached.iloc[0]
        mine = "kind == 'partial' and device == @device"
        assert (busy.query(mine)["MiB"].to_numpy() > calm.query(mine)["MiB"].to_numpy()).all()


def test_a_fit_follows_the_records_it_is_given(models):
    steps = calibration_steps(with_peak(models["CPU"].steps))
    doubled = device_models(steps.assign(peak_rss_mib=steps["peak_mib"] * 2))["CPU"]
    step = steps.iloc[0]
    assert predicted_peak(doubled, step) == pytest.approx(2 * predicted_peak(models["CPU"], step),
                                                         rel=0.1)


def test_the_figure_and_summary_show_every_device(models):
    chosen = explorer_inputs("random:wav2vec2-large", 8, 4.0, None, models, keep=18)
    figure = layer_choice_figure(n=3, **chosen)
    assert len(figure.axes) == 4
    summary = layer_choice_summary(chosen, 3)
    assert summary.loc["layers kept", "top 3"] == 18
    assert "H200" in summary.loc["GPU", "top 3"] and "EPYC" in summary.loc["CPU", "top 3"]
    assert {"partial MiB (GPU)", "cached s/step (CPU)"} <= set(summary.index)
