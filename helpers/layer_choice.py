"""Which layers should I train, and what will it cost me? The FLOP and memory models behind the
layer-choice explorer.

The forward and backward FLOPs of every stage of a backbone are counted on PyTorch's ``meta``
device (shapes only: no weights, no memory; 1-5 s for wav2vec2-large, once per process). A
training step then costs the forward pass of every stage that runs plus the backward pass of
every stage that trains (about twice its forward: gradients for both its inputs and its
weights). Frozen stages below the lowest trained one need no backward pass at all; with a cache
they do not even run.

Time is predicted from FLOPs at the seconds per GFLOP measured for that backbone on that device
(partial(3) in the timing records), and peak memory by ``peak_mib``: the weights, the gradients
and AdamW's two moments of what trains, and the larger of two transients, the frozen CNN's
feature maps (when the CNN runs) or the activations the trained layers keep for their backward
pass; the few coefficients are fitted to the measured peaks of each device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import torch
from scipy.optimize import least_squares
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from .backbone import backbone_config, blocks, build_backbone
from .constants import SAMPLE_RATE
from .methods import KINDS, Method, layers_trained, parse_method
from .paths import BUNDLED_BACKBONE
from .probes import load_probes
from .tables import summary_table


def stage_flops(config: PretrainedConfig, batch_size: int, clip_seconds: float) -> pd.DataFrame:
    """Forward and backward FLOPs and the parameters of each stage (CNN, projection, positional
    conv, layer 0 ... L-1) for a batch of ``batch_size`` clips of ``clip_seconds``, counted on
    the meta device in a training step where everything but the CNN trains. Counted once per
    process for each architecture and batch: a count dispatches some 4,000 operations in
    Python (seconds on a slow CPU), and the explorers ask for the same ones again."""
    return _stage_flops(type(config), config.to_json_string(), batch_size, clip_seconds).copy()


@lru_cache(maxsize=64)
def _stage_flops(config_class: type[PretrainedConfig], config_json: str, batch_size: int,
                 clip_seconds: float) -> pd.DataFrame:
    config = config_class.from_dict(json.loads(config_json))
    with torch.device("meta"):
        backbone = build_backbone(config)
        audio = torch.zeros(batch_size, int(clip_seconds * SAMPLE_RATE))
    backbone.feature_extractor._freeze_parameters()
    names = {module: name for name, module in backbone.named_modules()}
    counts = {}
    for phase in ("forward", "training"):
        with FlopCounterMode(display=False) as counter:
            if phase == "forward":
                with torch.no_grad():
                    backbone.eval()(audio)
            else:
                backbone.eval()(audio).last_hidden_state.sum().backward()
        counts[phase] = {key.removeprefix(type(backbone).__name__ + "."): sum(ops.values())
                         for key, ops in counter.get_flop_counts().items()}
        counts[phase]["total"] = counter.get_total_flops()
    rows = {stage: {"forward": counts["forward"].get(names[module], 0),
                    "backward": counts["training"].get(names[module], 0) -
                    counts["forward"].get(names[module], 0),
                    "params": sum(p.numel() for p in module.parameters())}
            for stage, module in blocks(backbone).items()}
    table = pd.DataFrame(rows).T
    # some backward operations are counted for the whole model only (not for a stage):
    # share them out in proportion, so that the stages add up to the counted total
    backward = counts["training"]["total"] - counts["forward"]["total"]
    table["backward"] *= backward / table["backward"].sum()
    return table


def training_flops(config: PretrainedConfig, batch_size: int, clip_seconds: float) -> pd.DataFrame:
    """FLOPs of one training step when the top n transformer layers train, for every n:
    ``partial`` runs the whole backbone forward and the top n layers backward, ``cached`` runs
    only the top n layers (their input comes from the cache); ``full`` (n = L) also trains the
    projection and the positional convolution (the CNN stays frozen). The head's FLOPs are
    negligible."""
    return step_flops(stage_flops(config, batch_size, clip_seconds))


def step_flops(stages: pd.DataFrame) -> pd.DataFrame:
    """``training_flops`` from counted stages (``stage_flops``' table)."""
    layers = stages.loc[[s for s in stages.index if s.startswith("layer ")]]
    below = stages.drop(layers.index).drop("CNN feature encoder")
    total = stages["forward"].sum()
    rows = []
    for n in range(1, len(layers) + 1):
        top = layers.iloc[len(layers) - n:]
        backward = top["backward"].sum() + (below["backward"].sum() if n == len(layers) else 0)
        rows.append({"layers trained": n, "partial GFLOP/step": (total + backward) / 1e9,
                     "cached GFLOP/step": (top["forward"] + top["backward"]).sum() / 1e9,
                     "trainable params": top["params"].sum() +
                     (below["params"].sum() if n == len(layers) else 0)})
    return pd.DataFrame(rows).set_index("layers trained").assign(
        **{"total params": stages["params"].sum()})


def pruned_config(spec: str, keep: int | None = None) -> PretrainedConfig:
    """``spec``'s architecture with only its first ``keep`` transformer layers (prune(k))."""
    config = backbone_config(spec)
    if keep is not None:
        if not 1 <= keep <= config.num_hidden_layers:
            raise ValueError(f"keep={keep}: {spec} has {config.num_hidden_layers} layers")
        config.num_hidden_layers = keep
    return config


# ------------------------------------------------------------------ memory at a step's peak
MIB = 2**20
# what scales each fitted coefficient (MiB per unit): the process itself; the frozen CNN's
# feature maps per MiB of fp32 audio (group- or layer-norm CNN); the activations a trained layer
# keeps, per MiB of its fp32 hidden states; one layer's working memory; WavLM's attention
# matrices (its own kernel keeps them), per MiB of fp32 scores
MEMORY_TERMS = ("process", "cnn group", "cnn layer", "trained layer", "working layer",
                "attention scores")


def memory_terms(config: PretrainedConfig, batch_size: int, clip_seconds: float, n: int,
                 runs_cnn: bool) -> np.ndarray:
    """The units of ``MEMORY_TERMS`` for a step that trains ``n`` layers of ``config``."""
    samples = batch_size * clip_seconds * SAMPLE_RATE
    frames = samples / 320  # the CNN's stride
    hidden = frames * config.hidden_size * 4 / MIB
    norm = getattr(config, "feat_extract_norm", "group")
    scores = (frames * config.num_attention_heads * frames / batch_size * 4 / MIB
              if config.model_type == "wavlm" else 0.0)
    audio = samples * 4 / MIB if runs_cnn else 0.0
    return np.array([1.0, audio * (norm == "group"), audio * (norm == "layer"), n * hidden,
                     hidden, n * scores])


def fixed_mib(total_params: int, trainable_params: int) -> float:
    """fp32 weights, and a gradient and AdamW's two moments for every trained parameter."""
    return (4 * total_params + 12 * trainable_params) / MIB


def peak_mib(coefficients: np.ndarray, fixed: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Peak memory: the process, the fixed part, and the larger transient (CNN or layers)."""
    terms = np.atleast_2d(terms) * coefficients
    return terms[:, 0] + fixed + np.maximum(terms[:, 1:3].sum(1), terms[:, 3:].sum(1))


def step_shape(record: pd.Series) -> tuple[PretrainedConfig, Method, int]:
    config = backbone_config(record["backbone"])
    method = parse_method(record["method"])
    if method.keep_layers:
        config.num_hidden_layers = method.keep_layers
    n = method.number if method.spec.counts_layers else config.num_hidden_layers
    return config, method, n


def calibration_steps(timing: pd.DataFrame) -> pd.DataFrame:
    """The measured training steps the memory model is fitted to: full, partial(n) and
    cached(n) (their precision and nothing else added), with a peak recorded."""
    def plain(name: str) -> bool:
        method = parse_method(name)
        return (method.spec.layer_sweep or method.spec.trains_on_cache) and method == Method(
            method.kind, method.number, precision=method.precision)
    steps = timing[(timing.get("phase", "train").fillna("train") == "train")
                   & timing["method"].map(plain)]
    return steps[steps["peak_mib"].notna()]


def fit_memory(steps: pd.DataFrame) -> np.ndarray:
    """The coefficients of ``MEMORY_TERMS`` that bring ``peak_mib`` closest to the measured
    peaks of ``steps`` (relative error, least squares, none negative)."""
    shapes = [step_shape(row) for _, row in steps.iterrows()]
    terms = np.array([memory_terms(config, row["batch_size"], row["clip_seconds"], n,
                                   not method.spec.trains_on_cache)
                      for (config, method, n), (_, row) in zip(shapes, steps.iterrows())])
    fixed = np.array([fixed_mib(row["total_params"], row["trainable_params"])
                      for _, row in steps.iterrows()])
    measured = steps["peak_mib"].to_numpy(float)
    fits = [least_squares(lambda c: peak_mib(c, fixed, terms) / measured - 1, start,
                          bounds=(0, np.inf), x_scale=np.asarray(start) + 1)
            for start in ([0, 250, 350, 12, 2, 2], [500, 2500, 300, 50, 800, 2])]
    return min(fits, key=lambda fit: np.abs(fit.fun).max()).x


def with_peak(timing: pd.DataFrame) -> pd.DataFrame:
    """``timing`` with one peak column: the CUDA allocator's peak, else the CPU's peak RSS."""
    allocated = timing.get("peak_allocated_mib", pd.Series(np.nan, index=timing.index))
    rss = timing.get("peak_rss_mib", pd.Series(np.nan, index=timing.index))
    return timing.assign(peak_mib=allocated.astype(float).fillna(rss.astype(float)))


@lru_cache(maxsize=64)
def _costs(spec: str, batch_size: int, clip_seconds: float,
           keep: int | None = None) -> tuple[pd.DataFrame, float]:
    """Training FLOPs for every n, and the forward (inference) GFLOPs of one batch."""
    stages = stage_flops(pruned_config(spec, keep), batch_size, clip_seconds)  # counted once
    return step_flops(stages), stages["forward"].sum() / 1e9


# ----------------------------------------------------- what the explorer predicts, per device
# the kinds that train the top n layers and nothing else: on audio (partial) and on a layer
# cache (cached); weighted-partial(n) costs what partial(n) does, so it adds no curve
TOP_LAYER_KINDS = [kind.name for kind in KINDS.values()
                   if kind.counts_layers and (kind.layer_sweep or kind.trains_on_cache)]


def top_layer_kind(method: Method) -> str:
    """Where a measured step sits among ``TOP_LAYER_KINDS`` (full: partial at n = L)."""
    return next(kind for kind in TOP_LAYER_KINDS
                if KINDS[kind].trains_on_cache == method.spec.trains_on_cache)


PREDICTED_PRECISION = {"CPU": "fp32", "GPU": "bf16"}  # how each kind of device is used here


@dataclass(frozen=True)
class DeviceModel:
    """What one device's timing records teach the explorer: its name, the precision predicted,
    the fitted memory coefficients, seconds per GFLOP of partial(3) per backbone, and the
    measured steps themselves (shown beside the predictions)."""

    label: str
    device: str
    precision: str
    memory: np.ndarray
    rates: dict[str, pd.Series]  # backbone -> seconds per GFLOP by audio seconds per batch
    steps: pd.DataFrame

    def rate(self, spec: str, audio_seconds: float) -> tuple[float | None, str]:
        """Seconds per GFLOP for ``spec`` with ``audio_seconds`` of audio per batch: its own
        rate at its measured batch nearest that, else wav2vec2-base's; moved to this batch by
        how wav2vec2-base's own rate changes between the two (a GPU is less efficient on
        small batches, and base was measured at more of them)."""
        reference = "random:wav2vec2-base"
        source = spec if spec in self.rates else reference
        if source not in self.rates:
            return None, ""
        measured_at, rate = nearest(self.rates[source], audio_seconds)
        if source != reference and reference in self.rates:
            base = self.rates[reference]
            rate *= nearest(base, audio_seconds)[1] / nearest(base, measured_at)[1]
        return rate, source


def nearest(rates: pd.Series, audio_seconds: float) -> tuple[float, float]:
    """The measured batch (audio seconds) nearest ``audio_seconds``, and its rate."""
    at = rates.index[np.abs(np.log(rates.index.to_numpy() / audio_seconds)).argmin()]
    return float(at), float(rates[at])


def device_models(timing: pd.DataFrame) -> dict[str, DeviceModel]:
    """One ``DeviceModel`` per kind of device in ``timing`` (CPU, GPU), each calibrated on that
    device's records at the precision the explorer predicts for it."""
    timing = with_peak(timing)
    gpu = timing["device"].str.contains("NVIDIA|cuda", case=False, regex=True)
    models = {}
    for label, rows in (("CPU", timing[~gpu]), ("GPU", timing[gpu])):
        precision = PREDICTED_PRECISION[label]
        rows = rows[rows["method"].map(lambda m: parse_method(m).precision) == precision]
        steps = calibration_steps(rows)
        if steps.empty:
            continue
        partial = steps[steps["method"].map(lambda m: parse_method(m).name) ==
                        parse_method(f"partial(3)+{precision}" if precision != "fp32" else
                                     "partial(3)").name]
        partial = partial.assign(audio=partial["batch_size"] * partial["clip_seconds"],
                                 rate=partial["seconds_per_step"] /
                                 (partial["flops_per_step"] / 1e9))
        rates = {backbone: group.groupby("audio")["rate"].median()
                 for backbone, group in partial.groupby("backbone")}
        names = sorted({name.split(" (")[0] for name in steps["device"]} - {"CPU"})
        models[label] = DeviceModel(label, " / ".join(names) or label, precision,
                                    fit_memory(steps), rates, steps)
    return models


def predictions(spec: str, batch_size: int, clip_seconds: float, costs: pd.DataFrame,
                models: dict[str, DeviceModel], keep: int | None = None) -> pd.DataFrame:
    """Predicted seconds per step and peak MiB of partial(n) and cached(n) for every n, on
    each device of ``models``: one row per n, kind and device."""
    config = pruned_config(spec, keep)
    fixed = fixed_mib(costs["total params"].to_numpy(), costs["trainable params"].to_numpy())
    rows = []
    for label, model in models.items():
        rate, _ = model.rate(spec, batch_size * clip_seconds)
        for kind in TOP_LAYER_KINDS:
            terms = np.array([memory_terms(config, batch_size, clip_seconds, n,
                                           not KINDS[kind].trains_on_cache)
                              for n in costs.index])
            seconds = costs[f"{kind} GFLOP/step"] * rate if rate is not None else np.nan
            rows.append(pd.DataFrame({"layers trained": costs.index, "kind": kind,
                                      "device": label, "s/step": seconds,
                                      "MiB": peak_mib(model.memory, fixed, terms)}))
    return pd.concat(rows, ignore_index=True)


def measured_points(spec: str, batch_size: int, clip_seconds: float,
                    models: dict[str, DeviceModel], keep: int | None = None) -> pd.DataFrame:
    """The measured steps at exactly this backbone and shape (n, kind, device, s, MiB)."""
    rows = []
    for label, model in models.items():
        steps = model.steps[(model.steps["backbone"] == spec) &
                            (model.steps["batch_size"] == batch_size) &
                            (model.steps["clip_seconds"] == clip_seconds)]
        for _, step in steps.iterrows():
            config, method, n = step_shape(step)
            if (keep or config.num_hidden_layers) == config.num_hidden_layers:
                rows.append({"layers trained": n, "kind": top_layer_kind(method),
                             "device": label,
                             "s/step": step["seconds_per_step"], "MiB": step["peak_mib"]})
    return pd.DataFrame(rows, columns=["layers trained", "kind", "device", "s/step", "MiB"])


def device_label(model: DeviceModel, spec: str, audio_seconds: float) -> str:
    """The device and precision, and whose measured rate times the steps if not ``spec``'s."""
    source = model.rate(spec, audio_seconds)[1]
    borrowed = f" (at {source.removeprefix('random:')}'s rate)" if source not in ("", spec) else ""
    return f"{model.device}, {model.precision}{borrowed}"


def explorer_inputs(spec: str, batch_size: int, clip_seconds: float, bench: pd.DataFrame,
                    models: dict[str, DeviceModel], keep: int | None = None) -> dict:
    """What the layer-choice explorer shows for backbone ``spec`` pruned to its first ``keep``
    layers (all by default): FLOPs per training step for every n and of inference
    (counted); predicted seconds per step and peak memory on each device of ``models``
    (``device_models``), with the measured steps at this shape; the probe per layer and
    partial(n)'s test CCC (bundled backbone unpruned only: the others' weights are not here)."""
    costs, inference = _costs(spec, batch_size, clip_seconds, keep)
    num_layers = backbone_config(spec).num_hidden_layers
    probe = accuracy = None
    if spec == "tiny" and (BUNDLED_BACKBONE / "probe.json").is_file():
        probe = load_probes(BUNDLED_BACKBONE)["pretrained"]
    if spec == "tiny" and bench is not None and len(costs) == num_layers:
        sweep = {m: layers_trained(parse_method(m), len(costs)) for m in bench["method"].unique()}
        rows = bench[bench["method"].map(sweep).notna()]
        summary = summary_table(rows)
        layers = [sweep[m] for m in summary.index]
        accuracy = summary.set_axis(layers)[["ccc_mean", "ccc_sd"]].sort_index()
    devices = {label: device_label(model, spec, batch_size * clip_seconds)
               for label, model in models.items()}
    return {"costs": costs, "probe": probe, "accuracy": accuracy,
            "predicted": predictions(spec, batch_size, clip_seconds, costs, models, keep),
            "measured": measured_points(spec, batch_size, clip_seconds, models, keep),
            "devices": devices, "inference_gflops": inference, "num_layers": num_layers}
