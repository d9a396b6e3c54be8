"""Changing what trains: freezing the feature encoder, training only the last layers."""

from __future__ import annotations

from torch import nn

from .model import EmotionRegressor


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def freeze_feature_encoder(model: EmotionRegressor) -> EmotionRegressor:
    """Freeze the CNN feature encoder, as standard Wav2Vec2 finetuning recipes do."""
    freeze(model.backbone.feature_extractor)
    return model


def train_last_layers(model: EmotionRegressor, n: int) -> EmotionRegressor:
    """Train only the last ``n`` transformer layers and the head; freeze everything below.

    The final encoder layer norm (pre-LN "large" models) sits above the last layer and trains
    with it; LayerDrop is switched off because a frozen prefix must behave deterministically.
    """
    layers = model.backbone.encoder.layers
    if not 0 <= n <= len(layers):
        raise ValueError(f"n={n}: the backbone has {len(layers)} transformer layers")
    freeze(model.backbone)
    for layer in layers[len(layers) - n:]:
        layer.requires_grad_(True)
    if n > 0 and model.backbone.config.do_stable_layer_norm:
        model.backbone.encoder.layer_norm.requires_grad_(True)
    model.backbone.config.layerdrop = 0.0
    model.head.requires_grad_(True)
    return model
