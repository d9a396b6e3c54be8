"""Which layers should I train, and what will it cost me? The FLOP model behind the layer-choice
explorer.

The forward and backward FLOPs of every stage of a backbone are counted on PyTorch's ``meta``
device (shapes only: no weights, no memory, about a second even for wav2vec2-large). A training
step then costs the forward pass of every stage that runs plus the backward pass of every stage
that trains (about twice its forward: gradients for both its inputs and its weights). Frozen
stages below the lowest trained one need no backward pass at all; with a cache they do not
even run.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from .backbone import backbone_config, blocks, build_backbone
from .constants import SAMPLE_RATE
from .methods import layers_trained, parse_method
from .paths import BUNDLED_BACKBONE
from .probes import load_probes
from .tables import summary_table

def stage_flops(config: PretrainedConfig, batch_size: int, clip_seconds: float) -> pd.DataFrame:
    """Forward and backward FLOPs of each stage (CNN, projection, positional conv, layer 0 ...
    L-1) for a batch of ``batch_size`` clips of ``clip_seconds``, counted on the meta device
    in a training step where everything but the CNN trains."""
    with torch.device("meta"):
        backbone = build_backbone(copy.deepcopy(config))
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
                    counts["forward"].get(names[module], 0)}
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
                     "cached GFLOP/step": top.sum().sum() / 1e9})
    return pd.DataFrame(rows).set_index("layers trained")


def pruned_config(spec: str, keep: int | None = None) -> PretrainedConfig:
    """``spec``'s architecture with only its first ``keep`` transformer layers (prune(k))."""
    config = backbone_config(spec)
    if keep is not None:
        if not 1 <= keep <= config.num_hidden_layers:
            raise ValueError(f"keep={keep}: {spec} has {config.num_hidden_layers} layers")
        config.num_hidden_layers = keep
    return config


@lru_cache(maxsize=64)
def _costs(spec: str, batch_size: int, clip_seconds: float,
           keep: int | None = None) -> tuple[pd.DataFrame, float]:
    """Training FLOPs for every n, and the forward (inference) GFLOPs of one batch."""
    stages = stage_flops(pruned_config(spec, keep), batch_size, clip_seconds)  # counted once
    return step_flops(stages), stages["forward"].sum() / 1e9


def explorer_inputs(spec: str, batch_size: int, clip_seconds: float, bench: pd.DataFrame,
                    timing: pd.DataFrame, keep: int | None = None) -> dict:
    """What the layer-choice explorer shows for backbone ``spec`` pruned to its first ``keep``
    layers (all by default): FLOPs per training step for every n and of inference
    (counted), the probe per layer and partial(n)'s test CCC (bundled backbone unpruned only:
    the others' weights are not here), and seconds per GFLOP of partial(3) as measured in
    the ``timing`` grid, which turns FLOPs into a predicted time on that grid's device."""
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
    rate = None
    if timing is not None and "partial(3)" in set(timing["method"]):
        row = timing[timing["method"] == "partial(3)"]
        rate = float(row["seconds_per_step"].median() / (row["flops_per_step"].median() / 1e9))
    return {"costs": costs, "probe": probe, "accuracy": accuracy, "seconds_per_gflop": rate,
            "inference_gflops": inference, "num_layers": num_layers}
