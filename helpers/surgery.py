"""Changing what trains: freezing the feature encoder, training only the last layers, adapters.

Each method's surgery function takes the regressor and the parsed method and returns the model
to train, with exactly the parameters the method trains left trainable (``methods.KINDS`` names
which function each method uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from .backbone import each_layer, encoder_input, family_of, position_bias, run_layers
from .dataset import wants_attention_mask
from .model import HEAD_MODULES, EmotionRegressor, frame_mask


class Method(Protocol):
    """What a surgery function reads of the parsed method (``methods.Method`` has it)."""

    number: int | None
    train_cnn: bool


# ------------------------------------------------------------- the methods' surgery functions
def train_all_layers(model: EmotionRegressor, method: Method) -> EmotionRegressor:
    """full: every transformer layer and the head train; the CNN too with ``+cnn``."""
    return model if method.train_cnn else freeze_feature_encoder(model)


def train_top_layers(model: EmotionRegressor, method: Method) -> SplitRegressor:
    """partial(n), cached(n): the top n layers and the head train, the prefix is frozen."""
    return split_at_layer(model, model.backbone.config.num_hidden_layers - method.number)


def add_lora(model: EmotionRegressor, method: Method) -> nn.Module:
    """lora(r): rank-r adapters on the attention projections; adapters and head train."""
    return apply_lora(model, r=method.number)


def add_lora_feed_forward(model: EmotionRegressor, method: Method) -> nn.Module:
    """lora-ffn(r): rank-r adapters on the feed-forward layers only (where PEFT-SER, Feng &
    Narayanan 2023, found LoRA works best for emotion)."""
    return apply_lora(model, r=method.number, on_attention=False, feed_forward=True)


def add_lora_everywhere(model: EmotionRegressor, method: Method) -> nn.Module:
    """lora-all(r): rank-r adapters on the attention and the feed-forward layers."""
    return apply_lora(model, r=method.number, feed_forward=True)


def add_dora(model: EmotionRegressor, method: Method) -> nn.Module:
    """dora(r): weight-decomposed LoRA (Liu et al. 2024) on the attention projections: each
    weight's direction gets a rank-r update and its magnitude a trained scale."""
    return apply_lora(model, r=method.number, dora=True)


def add_ia3(model: EmotionRegressor, method: Method) -> nn.Module:
    """ia3: learned vectors that rescale the keys, values and feed-forward activations (Liu et
    al. 2022); about a thousandth of LoRA's parameters."""
    return apply_ia3(model)


def train_biases(model: EmotionRegressor, method: Method) -> EmotionRegressor:
    """bitfit: only the transformer's biases and the head train (BitFit, Ben Zaken et al.
    2022: the classic lower bound of parameter-efficient finetuning)."""
    freeze_feature_encoder(model).backbone.requires_grad_(False)
    for name, parameter in model.backbone.encoder.named_parameters():
        parameter.requires_grad_(name.endswith(".bias"))
    return train_head(model)


def add_adapters(model: EmotionRegressor, method: Method) -> EmotionRegressor:
    """adapter(d): a bottleneck adapter of width d after every layer's feed-forward (Houlsby et
    al. 2019); the backbone is frozen, the adapters and the head train."""
    freeze_feature_encoder(model).backbone.requires_grad_(False)
    for layer in model.backbone.encoder.layers:
        layer.feed_forward = AdaptedFeedForward(layer.feed_forward,
                                                model.backbone.config.hidden_size, method.number)
    model.backbone.config.layerdrop = 0.0
    return train_head(model)


def weighted_sum(model: EmotionRegressor, method: Method) -> WeightedSplitRegressor:
    """weighted-sum: a frozen backbone, a learned mix of its layers, and the head (the SUPERB
    baseline)."""
    return weighted_split(model, 0)


def weighted_top_layers(model: EmotionRegressor, method: Method) -> WeightedSplitRegressor:
    """weighted-partial(n): partial(n) whose head reads a learned mix of every layer's output,
    not the top layer's alone (the weighted sum combined with finetuning, as in ELP-adapter,
    Lashkarashvili et al. 2024): lower layers' emotion cues reach the head untouched."""
    return weighted_split(model, method.number)


def prune_layers(backbone: PreTrainedModel, keep: int) -> PreTrainedModel:
    """prune(k): keep only the first ``keep`` transformer layers (the top ones are dropped
    before finetuning, as audEERING's wav2vec2-large-robust-12 emotion model did with 24 -> 12).
    The config says so too, so a pruned backbone saves and reloads as a smaller one; the final
    layer norm of pre-LN models stays on top of what is kept."""
    layers = backbone.encoder.layers
    if not 1 <= keep <= len(layers):
        raise ValueError(f"prune({keep}): keep between 1 and {len(layers)} layers")
    backbone.encoder.layers = layers[:keep]
    backbone.config.num_hidden_layers = keep
    return backbone


# ------------------------------------------------------------------------- the building blocks


def train_head(model: EmotionRegressor) -> EmotionRegressor:
    """The pooling and the head train in every method."""
    for name in HEAD_MODULES:
        getattr(model, name).requires_grad_(True)
    return model


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def freeze_feature_encoder(model: EmotionRegressor) -> EmotionRegressor:
    """Freeze the CNN feature encoder, as standard Wav2Vec2 finetuning recipes do.

    transformers' own freezing is used, not just ``requires_grad_(False)``: it also stops the
    encoder from marking its input as needing gradients, without which a frozen CNN still
    runs a backward pass for its input gradients (about a fifth of a wav2vec2-base training
    step, spent on nothing). (HuBERT's model class lacks the shortcut its encoder has.)
    """
    model.backbone.feature_extractor._freeze_parameters()
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
    return train_head(model)


# ------------------------------------------------------------------ frozen prefix + suffix
class FrozenPrefix(nn.Module):
    """Everything below transformer layer k: CNN -> projection -> positional conv -> layers
    0..k-1. Always in eval mode and without gradients: it is computed, never trained, which is
    what makes its output cacheable.
    """

    def __init__(self, backbone: PreTrainedModel, k: int):
        super().__init__()
        self.backbone, self.k = backbone, k  # shared with the suffix: freezing is by layer

    def state_items(self) -> list[tuple[str, torch.Tensor]]:
        """The backbone weights this prefix uses (those that decide its output)."""
        parts = ["feature_extractor.", "feature_projection.", "encoder.pos_conv_embed.",
                 *[f"encoder.layers.{i}." for i in range(self.k)]]
        if not self.backbone.config.do_stable_layer_norm:
            parts.append("encoder.layer_norm.")
        return [(name, tensor) for name, tensor in sorted(self.backbone.state_dict().items())
                if name.startswith(tuple(parts))]

    def train(self, mode: bool = True) -> "FrozenPrefix":
        return super().train(False)  # dropout, LayerDrop and SpecAugment stay off

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states entering layer k, shape (batch, frames, width)."""
        hidden, frames = encoder_input(self.backbone, input_values, attention_mask)
        return run_layers(self.backbone.encoder.layers[: self.k], self.backbone.config, hidden,
                          frames, position_bias(self.backbone))

    @torch.no_grad()
    def states(self, input_values: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """What enters layer 0, then the output of each layer below k."""
        hidden, frames = encoder_input(self.backbone, input_values, attention_mask)
        return [hidden, *each_layer(self.backbone.encoder.layers[: self.k],
                                    self.backbone.config, hidden, frames,
                                    position_bias(self.backbone))]


class TrainableSuffix(nn.Module):
    """Layers k..L-1 (+ the final layer norm of pre-LN models), pooling and the head. It takes
    hidden states, so it trains the same on live prefix outputs and on a cache of them.
    """

    def __init__(self, model: EmotionRegressor, k: int):
        super().__init__()
        self.layers = model.backbone.encoder.layers[k:]
        self.config = model.backbone.config
        self.final_norm = model.backbone.encoder.layer_norm if self.config.do_stable_layer_norm \
            else None
        self.head, self.pooling = model.head, model.pooling
        self.pool_and_predict = model.pool_and_predict
        self.position_bias = position_bias(model.backbone)  # WavLM's, from layer 0's embedding

    def frames(self, hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor | None:
        """The frame mask its layers take (None: the family runs unmasked)."""
        return frame_mask(frame_lengths, hidden.shape[1]) if wants_attention_mask(self.config) \
            else None

    def states(self, hidden: torch.Tensor, frame_lengths: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of its layers (before the final layer norm)."""
        return list(each_layer(self.layers, self.config, hidden,
                               self.frames(hidden, frame_lengths), self.position_bias))

    def forward(self, hidden: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        hidden = run_layers(self.layers, self.config, hidden, self.frames(hidden, frame_lengths),
                            self.position_bias)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        return self.pool_and_predict(hidden, frame_lengths)


class SplitRegressor(nn.Module):
    """An EmotionRegressor run as frozen prefix + trainable suffix; same inputs and outputs."""

    def __init__(self, model: EmotionRegressor, k: int):
        super().__init__()
        self.model, self.k = model, k
        self.prefix = FrozenPrefix(model.backbone, k)
        self.suffix = TrainableSuffix(model, k)

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.prefix(input_values, attention_mask)
        return self.suffix(hidden, self.model.frame_lengths(lengths, hidden))


def split_at_layer(model: EmotionRegressor, k: int) -> SplitRegressor:
    """Split ``model`` before transformer layer ``k``: layers below are frozen and run without
    gradients in eval mode; layers k..L-1, the pooling and the head train.
    """
    num_layers = len(model.backbone.encoder.layers)
    if not 0 <= k <= num_layers:
        raise ValueError(f"k={k}: choose a layer between 0 and {num_layers}")
    train_last_layers(model, num_layers - k)
    return SplitRegressor(model, k)


class WeightedSplitRegressor(SplitRegressor):
    """A split regressor whose head reads a learned softmax-weighted sum of every layer's
    hidden states (index 0: what enters layer 0; the top one is the backbone's output, after
    the final layer norm of pre-LN models) instead of the top layer's alone."""

    def __init__(self, model: EmotionRegressor, k: int):
        super().__init__(model, k)
        self.layer_logits = nn.Parameter(torch.zeros(len(model.backbone.encoder.layers) + 1))

    def layer_weights(self) -> torch.Tensor:
        """How much each layer contributes (index 0: the input to the first layer)."""
        return self.layer_logits.softmax(0)

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        states = self.prefix.states(input_values, attention_mask)
        frame_lengths = self.model.frame_lengths(lengths, states[0])
        states += self.suffix.states(states[-1], frame_lengths)
        if self.suffix.final_norm is not None:
            states[-1] = self.suffix.final_norm(states[-1])
        hidden = torch.einsum("l,lbtd->btd", self.layer_weights(), torch.stack(states))
        return self.model.pool_and_predict(hidden, frame_lengths)


def weighted_split(model: EmotionRegressor, n: int) -> WeightedSplitRegressor:
    """The top ``n`` layers, the layer weights and the head train (n = 0: a frozen backbone)."""
    train_last_layers(model, n)
    return WeightedSplitRegressor(model, len(model.backbone.encoder.layers) - n)


# ------------------------------------------------------------------------ bottleneck adapters
class Bottleneck(nn.Module):
    """Down to ``d`` features, GELU, back up, added to the input. The up-projection starts at
    zero, so a fresh adapter is the identity and the backbone's output is unchanged until it
    trains."""

    def __init__(self, width: int, d: int):
        super().__init__()
        self.down, self.up = nn.Linear(width, d), nn.Linear(d, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.gelu(self.down(hidden)))


class AdaptedFeedForward(nn.Module):
    """A layer's feed-forward block followed by a bottleneck adapter (before the residual add,
    where Houlsby et al. put theirs). The series' own module, the same in every family:
    transformers ships adapters only inside the attention of pre-LN Wav2Vec2 layers."""

    def __init__(self, feed_forward: nn.Module, width: int, d: int):
        super().__init__()
        self.feed_forward, self.adapter = feed_forward, Bottleneck(width, d)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.feed_forward(hidden))


def save_trained(model: nn.Module, path: str | Path) -> Path:
    """The parameters a method trained (adapters, biases, top layers, head), as safetensors:
    what must be shipped beside the public backbone."""
    trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if p.requires_grad}
    save_file(trained, str(path))
    return Path(path)


def load_trained(model: nn.Module, path: str | Path) -> nn.Module:
    """Put saved trained parameters back into a model prepared by the same method (and
    backbone); a name missing on either side is an error, not a warning."""
    saved = load_file(str(path))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != expected:
        missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
        raise ValueError(f"{path}: saved for another method or backbone (missing: "
                         f"{missing[:3]}, unexpected: {unexpected[:3]})")
    model.load_state_dict(saved, strict=False)
    return model


# ------------------------------------------------------------------------------- LoRA
ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
FEED_FORWARD = ("intermediate_dense", "output_dense")


def lora_targets(num_layers: int, modules: tuple[str, ...] = ATTENTION,
                 layers: int | None = None) -> str:
    """A regex naming ``modules`` in the last ``layers`` transformer layers (default: all)."""
    chosen = range(num_layers - (layers or num_layers), num_layers)
    return (rf".*encoder\.layers\.({'|'.join(map(str, chosen))})\..*"
            rf"\.({'|'.join(modules)})$")


def apply_lora(model: EmotionRegressor, r: int = 16, alpha: int = 32, dropout: float = 0.05,
               feed_forward: bool = False, layers: int | None = None, on_attention: bool = True,
               dora: bool = False):
    """Wrap ``model`` with peft LoRA adapters; only the adapters and the head train.

    Adapters go on the attention projections (with ``on_attention``) and the feed-forward
    layers (with ``feed_forward``), optionally only in the last ``layers`` layers; ``dora``
    makes them DoRA adapters. No ``task_type`` is set: peft's task wrappers would forward
    ``input_ids``, which a speech model does not take.
    """
    modules = (ATTENTION if on_attention else ()) + (FEED_FORWARD if feed_forward else ())
    if not modules:
        raise ValueError("apply_lora: choose on_attention=True, feed_forward=True or both")
    if on_attention:
        check_attention_adaptable(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=dora,
                        modules_to_save=HEAD_MODULES, target_modules=lora_targets(
                            len(model.backbone.encoder.layers), modules, layers))
    return wrap_with_peft(model, config)


def apply_ia3(model: EmotionRegressor):
    """Wrap ``model`` with peft IA3 vectors on the keys, values and the feed-forward output."""
    check_attention_adaptable(model)
    targets = ("k_proj", "v_proj", "output_dense")
    num_layers = len(model.backbone.encoder.layers)
    config = IA3Config(target_modules=lora_targets(num_layers, targets),
                       feedforward_modules=lora_targets(num_layers, ("output_dense",)),
                       modules_to_save=HEAD_MODULES)
    return wrap_with_peft(model, config)


def check_attention_adaptable(model: EmotionRegressor) -> None:
    """Refuse adapters on attention projections that the backbone's family never calls as
    modules (WavLM hands their weights to torch's multi-head attention function)."""
    model_type = model.backbone.config.model_type
    if not family_of(model_type).adapts_attention:
        raise ValueError(f"adapters on a {model_type} backbone's attention would never run: its "
                         "attention reads the projection weights directly; put them on the "
                         "feed-forward layers (lora-ffn, or apply_lora(..., on_attention=False, "
                         "feed_forward=True))")


def wrap_with_peft(model: EmotionRegressor, config) -> nn.Module:
    """The backbone frozen (the CNN without a backward pass), peft's adapters added."""
    freeze_feature_encoder(model)
    model.backbone.config.layerdrop = 0.0
    return get_peft_model(model, config)
