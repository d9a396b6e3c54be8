"""One comparable run per method: build the model, train it, measure it, return a record."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from .backbone import count_parameters, load_backbone
from .data import LengthBucketSampler, SpeechDataset, collate_for
from .model import EmotionRegressor
from .surgery import freeze_feature_encoder, train_last_layers
from .timing import device_name, median, peak_memory, reset_peak_memory
from .train import TrainConfig, evaluate, fit, resolve_precision


@dataclass(frozen=True)
class Method:
    """A finetuning method: which transformer layers train, in which precision."""

    name: str = "full"
    train_layers: int | None = None  # None: every transformer layer
    train_cnn: bool = False
    precision: str = "fp32"


METHODS = {"full": Method("full"), "full+cnn": Method("full+cnn", train_cnn=True)}


def build_model(method: Method, backbone: str, seed: int) -> EmotionRegressor:
    """The regressor with exactly the parameters ``method`` trains left trainable."""
    torch.manual_seed(seed)
    model = EmotionRegressor(load_backbone(backbone, seed=seed))
    if method.train_layers is not None:
        return train_last_layers(model, method.train_layers)
    return model if method.train_cnn else freeze_feature_encoder(model)


def make_loader(manifest: pd.DataFrame, split: str, backbone_config, batch_size: int,
                train: bool, seed: int = 0, max_seconds: float | None = 4.0) -> DataLoader:
    """A loader over one split: length-bucketed batches, shuffled per epoch when training."""
    dataset = SpeechDataset(manifest, split, max_seconds=max_seconds, train=train, seed=seed)
    sampler = LengthBucketSampler(dataset.num_samples(), batch_size, shuffle=train, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_for(backbone_config))


def run(method: Method, manifest: pd.DataFrame, backbone: str = "tiny", seed: int = 0,
        num_epochs: int = 2, batch_size: int = 8, lr: float = 1e-4, device: str = "cpu",
        warmup_epochs: int = 1) -> dict:
    """Train ``method`` and return one flat, JSON-ready result record.

    Seconds per epoch is the median over epochs after the first ``warmup_epochs``.
    """
    model = build_model(method, backbone, seed)
    loaders = {split: make_loader(manifest, split, model.backbone.config, batch_size,
                                  train=split == "train", seed=seed)
               for split in ("train", "dev", "test")}
    config = TrainConfig(num_epochs=num_epochs, lr=lr, precision=method.precision,
                         device=device, seed=seed, patience=None)
    reset_peak_memory(device)
    fitted = fit(model, loaders["train"], loaders["dev"], config)
    epoch_seconds = [r["seconds"] for r in fitted.history]
    measured = epoch_seconds[warmup_epochs:] or epoch_seconds
    test = evaluate(model, loaders["test"], device, method.precision)["ccc"]
    return {
        "method": method.name, "backbone": backbone, "device": device_name(device),
        "precision": resolve_precision(method.precision, device), "seed": seed,
        "trainable_params": count_parameters(model, trainable_only=True),
        "total_params": count_parameters(model), "num_epochs": num_epochs,
        "seconds_per_epoch": median(measured),
        "samples_per_second": len(loaders["train"].dataset) / median(measured),
        **peak_memory(device), "best_epoch": fitted.best_epoch,
        "skipped_steps": fitted.skipped_steps,
        **{f"test_ccc_{k}": v for k, v in test.items()},
        "torch": torch.__version__, "python": platform.python_version(),
    }


def append_result(record: dict, path: str | Path) -> None:
    """Append one record to a JSON-lines results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def load_results(path: str | Path) -> pd.DataFrame:
    """A JSON-lines results file as a table."""
    return pd.read_json(path, lines=True)

