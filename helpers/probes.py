"""Probes: prosodic statistics, and ridge-regression probes scored with CCC (taught in
notebooks 00 and 01; they also describe the bundled corpus and backbone).

The same ``ridge_probe`` scores hand-made prosodic features here and a backbone's pooled
hidden states in the layer-wise probe, so the two are directly comparable.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF
from scipy.linalg import LinAlgWarning
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .audio import read_audio
from .config import RunConfig
from .constants import DIMENSIONS, SAMPLE_RATE
from .dataset import SpeechDataset  # the same preprocessing as training (centre crop)
from .manifests import to_common
from .metrics import ccc

ALPHAS = tuple(10.0 ** k for k in range(-3, 5))
POOLINGS = {"mean": lambda states: states.mean(0), "max": lambda states: states.amax(0)}


def prosodic_features(waveform: torch.Tensor) -> dict[str, float]:
    """Utterance-level statistics of frame energy (dB) and pitch (log Hz, loud frames only).

    Computed on the audio as stored, so absolute loudness counts.
    """
    frames = waveform.unfold(0, 400, 160)  # 25 ms windows every 10 ms
    energy = 10 * torch.log10(frames.pow(2).mean(1) + 1e-10)
    loud = energy > energy.max() - 30
    pitch = AF.detect_pitch_frequency(waveform, SAMPLE_RATE, freq_low=60, freq_high=500)
    voiced = pitch[: len(loud)][loud[: len(pitch)]].log()
    return {"energy_mean": energy[loud].mean().item(), "energy_std": energy[loud].std().item(),
            "energy_max": energy.max().item(), "pitch_mean": voiced.mean().item(),
            "pitch_std": voiced.std().item(),
            "pitch_range": (voiced.quantile(0.9) - voiced.quantile(0.1)).item(),
            "voiced_fraction": loud.float().mean().item(),
            "duration": len(waveform) / SAMPLE_RATE}


def prosodic_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """``prosodic_features`` of every clip in a manifest, one row each, computed on one
    thread: a clip's operations are small, and split across threads they wait for each other
    (measured on 2 busy cores: 0.05 s per clip on one thread, several seconds on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [prosodic_features(read_audio(p)) for p in manifest["path"]]
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows, index=manifest.index)


def common_labels(manifest: pd.DataFrame) -> np.ndarray:
    """(N, 3) labels mapped to the common range [0, 1]."""
    return np.stack([to_common(manifest[d].to_numpy(float), manifest["label_min"].to_numpy(float),
                               manifest["label_max"].to_numpy(float)) for d in DIMENSIONS], 1)


def ridge_predictions(features: np.ndarray, manifest: pd.DataFrame,
                      alphas: tuple[float, ...] = ALPHAS) -> pd.DataFrame:
    """Test-split predictions of a ridge regression per dimension (on the common 0-1 scale),
    fitted on the train split with its strength chosen by dev CCC."""
    labels, split = common_labels(manifest), manifest["split"].to_numpy()
    parts = {s: (features[split == s], labels[split == s]) for s in ("train", "dev", "test")}
    predictions = {}
    for column, dimension in enumerate(DIMENSIONS):
        def fitted(alpha: float):
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
            return model.fit(parts["train"][0], parts["train"][1][:, column])
        dev_ccc = lambda model: ccc(model.predict(parts["dev"][0]), parts["dev"][1][:, column])
        with warnings.catch_warnings():  # tiny alphas on collinear features: expected, harmless
            warnings.simplefilter("ignore", LinAlgWarning)
            best = max((fitted(alpha) for alpha in alphas), key=dev_ccc)
        predictions[dimension] = best.predict(parts["test"][0])
    return pd.DataFrame(predictions, index=manifest.index[split == "test"])


def ridge_probe(features: np.ndarray, manifest: pd.DataFrame,
                alphas: tuple[float, ...] = ALPHAS) -> dict[str, float]:
    """Test CCC per dimension (and their mean) of ``ridge_predictions``."""
    predictions = ridge_predictions(features, manifest, alphas)
    truth = common_labels(manifest.loc[predictions.index])
    scores = {d: ccc(predictions[d].to_numpy(), truth[:, i]) for i, d in enumerate(DIMENSIONS)}
    return {**scores, "mean": float(np.mean(list(scores.values())))}


@torch.no_grad()
def pooled_hidden_states(backbone, manifest: pd.DataFrame,
                         max_seconds: float = RunConfig.max_clip_seconds,
                         pooling: str = "mean") -> np.ndarray:
    """Hidden states of every layer for every clip, pooled over time by their ``"mean"`` or
    ``"max"``: (clips, layers + 1, width).

    Index 0 is the input to the first transformer layer (after the CNN and positional conv).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: choose one of {sorted(POOLINGS)}")

    backbone.eval()
    dataset = SpeechDataset(manifest, max_seconds=max_seconds)
    pooled = []
    for index in range(len(dataset)):
        output = backbone(dataset[index]["input_values"][None], output_hidden_states=True)
        pooled.append(torch.stack([POOLINGS[pooling](h[0]) for h in output.hidden_states]))
    return torch.stack(pooled).numpy()


def layer_probe(backbone, manifest: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    """Test CCC of a ridge probe on each layer's pooled states: what each layer 'knows'."""
    states = pooled_hidden_states(backbone, manifest, pooling=pooling)
    rows = [{"layer": layer, **ridge_probe(states[:, layer], manifest)}
            for layer in range(states.shape[1])]
    return pd.DataFrame(rows).set_index("layer").round(3)


def load_probes(folder: str | Path) -> dict[str, pd.DataFrame]:
    """The layer-wise probes recorded with a backbone (``probe.json``: pretrained and random)."""
    recorded = json.loads((Path(folder) / "probe.json").read_text())
    return {k: pd.DataFrame(v).rename_axis("layer") for k, v in recorded.items()}
