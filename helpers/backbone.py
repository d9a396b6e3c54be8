"""Getting a backbone: the bundled tiny one, a Hub checkpoint, a local folder, or a random preset.

``load_backbone`` takes one string so that a notebook's parameters cell can switch backbones:

=================================  ======================================================
``"tiny"``                         the bundled backbone in ``data_sample/backbone/``
``"facebook/wav2vec2-base"``       any Hub id of a supported family (internet the first time)
``"path/to/folder"``               a folder written by ``save_pretrained``
``"random:wav2vec2-base"``         a published architecture with random weights: exact speed
``"random:wavlm-large"`` ...       and memory figures without downloading anything (PRESETS)
=================================  ======================================================

Three families share the shape the series relies on (CNN feature encoder -> projection ->
positional convolution -> L transformer layers): Wav2Vec2, HuBERT and WavLM. ``FAMILIES`` says
how each is built; what differs between them inside the transformer (WavLM's relative position
bias, handed from the first layer to the others) is handled by ``encoder_input`` and
``each_layer``, so every method and the layer cache work on each family alike. A checkpoint of
another family is refused, never loaded into the wrong class, and a load that leaves a weight
of the architecture missing or unused is an error.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import (HubertConfig, HubertModel, PretrainedConfig, PreTrainedModel,
                          Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel)
from transformers.masking_utils import create_bidirectional_mask

from .constants import SAMPLE_RATE
from .paths import BUNDLED_BACKBONE

# WavLM's own attention hands torch a boolean padding mask beside its float position bias
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")


@dataclass(frozen=True)
class Family:
    """One backbone family: its classes and the attention kernels transformers offers for it."""

    name: str                  # the config's ``model_type``
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    attentions: tuple[str, ...]
    note: str = ""             # what the family does differently (shown in notebook 01)
    adapts_attention: bool = True  # its attention calls q/k/v/out_proj as modules (adapters run)


FAMILIES = {family.name: family for family in [
    Family("wav2vec2", Wav2Vec2Config, Wav2Vec2Model, ("sdpa", "eager"),
           "contrastive pretraining; absolute positions from a convolution"),
    Family("hubert", HubertConfig, HubertModel, ("sdpa", "eager"),
           "masked prediction of clustered targets; the same layers as Wav2Vec2"),
    Family("wavlm", WavLMConfig, WavLMModel, ("mha",),
           "denoising masked prediction; a gated relative position bias, computed in layer 0 "
           "and handed to every later layer; attention through torch's multi-head function, "
           "which materialises every attention matrix (no fused kernel in transformers)",
           adapts_attention=False),
]}
ATTENTIONS = ("sdpa", "eager")  # what a run may ask for; a family without it runs its own


def family_of(model_type: str | None) -> Family:
    """The family of a config's ``model_type``; any other model type is refused."""
    if model_type not in FAMILIES:
        raise ValueError(f"a {model_type!r} checkpoint: the series supports the "
                         f"{', '.join(FAMILIES)} families (CNN feature encoder + transformer "
                         "encoder); choose a checkpoint of one of them")
    return FAMILIES[model_type]


def check_attention(asked: str) -> str:
    """Refuse an attention kernel the series does not offer."""
    if asked not in ATTENTIONS:
        raise ValueError(f"attention={asked!r}: choose one of {ATTENTIONS}")
    return asked


def attention_kernel(model_type: str, asked: str = "sdpa") -> str:
    """The attention kernel a backbone runs with: the one asked for where its family has it,
    else the family's own (WavLM: ``mha``, torch's multi-head attention function)."""
    check_attention(asked)
    available = family_of(model_type).attentions
    return asked if asked in available else available[0]


def transformers_attention(model_type: str, asked: str) -> str:
    """The ``attn_implementation`` to hand transformers (WavLM's own path is its "eager")."""
    kernel = attention_kernel(model_type, asked)
    return kernel if kernel in ATTENTIONS else "eager"


LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, feat_extract_norm="layer", conv_bias=True,
             do_stable_layer_norm=True)


def base_config() -> Wav2Vec2Config:
    """facebook/wav2vec2-base: 12 post-LN layers of width 768, group-norm CNN (~94.4 M)."""
    return Wav2Vec2Config()  # the library defaults are exactly the base architecture


def large_config() -> Wav2Vec2Config:
    """facebook/wav2vec2-large-lv60 / large-robust: 24 pre-LN layers of width 1024 (~315 M)."""
    return Wav2Vec2Config(**LARGE)


def tiny_config(width: int = 256) -> Wav2Vec2Config:
    """A small base-like Wav2Vec2 (6 layers; ~3 M parameters at width 192, ~5 M at 256) with
    the real CNN strides (20 ms frames): the architecture of the pretraining recipe."""
    return Wav2Vec2Config(
        hidden_size=width, num_hidden_layers=6, num_attention_heads=4,
        intermediate_size=4 * width, conv_dim=(64,) * 7, num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16)


def bundled_architecture() -> Wav2Vec2Config:
    """The bundled backbone's architecture (for random-weight comparisons), or the recipe's
    default before a backbone has been pretrained."""
    if (BUNDLED_BACKBONE / "config.json").is_file():
        return Wav2Vec2Config.from_pretrained(BUNDLED_BACKBONE)
    return tiny_config()


PRESETS = {  # the published architectures' shapes (their config.json), with random weights
    "random:wav2vec2-base": base_config,
    "random:wav2vec2-large": large_config,
    "random:hubert-base": HubertConfig,          # facebook/hubert-base-ls960: the defaults
    "random:hubert-large": lambda: HubertConfig(**LARGE),   # facebook/hubert-large-ll60k
    "random:wavlm-base-plus": WavLMConfig,       # microsoft/wavlm-base-plus: the defaults
    "random:wavlm-large": lambda: WavLMConfig(**LARGE),     # microsoft/wavlm-large
    "random:tiny": bundled_architecture,
}


def build_backbone(config: PretrainedConfig, attention: str = "sdpa") -> PreTrainedModel:
    """A backbone of ``config``'s family with random weights."""
    config._attn_implementation = transformers_attention(config.model_type, attention)
    return family_of(config.model_type).model_class(config)


def load_backbone(spec: str = "tiny", seed: int = 0, attention: str = "sdpa") -> PreTrainedModel:
    """The backbone ``spec`` names (see the module docstring); random presets use ``seed``.

    ``attention`` picks the attention kernel: ``sdpa`` (PyTorch's fused
    scaled-dot-product attention, the fast path) or ``eager`` (plain matrix products, kept
    for checks: the two agree to rounding). WavLM has neither and runs its own.
    """
    check_attention(attention)
    if spec == "tiny" and not (BUNDLED_BACKBONE / "config.json").is_file():
        warnings.warn(f"{BUNDLED_BACKBONE} not found: using the tiny architecture with random "
                      "weights, so its frozen layers hold no useful features yet.")
        spec = "random:tiny"
    if spec.startswith("random:"):
        torch.manual_seed(seed)
        return build_backbone(backbone_config(spec), attention)
    return load_pretrained(checkpoint_location(spec), attention)


def load_pretrained(location: str | Path, attention: str) -> PreTrainedModel:
    """A checkpoint loaded into its own family's class; a weight of the architecture left
    missing or unused stops the load (pretraining heads such as a quantizer are not used by a
    backbone and are let go, with one line saying so)."""
    model_type = checkpoint_model_type(location)
    model, report = family_of(model_type).model_class.from_pretrained(
        location, output_loading_info=True,
        attn_implementation=transformers_attention(model_type, attention))
    check_load_report(location, model, report)
    return model


def check_load_report(location: str | Path, model: nn.Module, report: dict) -> None:
    """Refuse a load whose report shows missing, mismatched or unexpected architecture weights."""
    own = {name.split(".")[0] for name, _ in model.named_children()}
    unexpected = [k for k in report.get("unexpected_keys", []) if k.split(".")[0] in own]
    problems = {"missing": report.get("missing_keys", []), "unexpected": unexpected,
                "shape-mismatched": [k[0] if isinstance(k, tuple) else k
                                     for k in report.get("mismatched_keys", [])]}
    found = {what: sorted(keys) for what, keys in problems.items() if keys}
    if found:
        listed = "; ".join(f"{what}: {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else "")
                           for what, keys in found.items())
        raise ValueError(f"{location}: the checkpoint does not fit its {type(model).__name__} "
                         f"({listed}); it was saved from another architecture or is damaged")
    heads = sorted({k.split(".")[0] for k in report.get("unexpected_keys", [])} - own)
    if heads:
        print(f"{location}: pretraining heads not used by the backbone: {', '.join(heads)}")


def random_twin(spec: str) -> str:
    """The random-weight preset with ``spec``'s architecture: the control a probe compares a
    pretrained backbone with (the gap is what pretraining added)."""
    if spec in PRESETS:
        return spec
    if spec == "tiny":
        return "random:tiny"
    config = backbone_config(spec)
    shape = lambda c: (c.model_type, c.hidden_size, c.num_hidden_layers, c.feat_extract_norm)
    for name, preset in PRESETS.items():
        if shape(preset()) == shape(config):
            return name
    raise ValueError(f"{spec}: no random preset has its architecture ({config.model_type}, "
                     f"width {config.hidden_size}, {config.num_hidden_layers} layers); choose "
                     f"the control yourself among {sorted(PRESETS)}")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def checkpoint_location(spec: str) -> str:
    """``spec`` checked as a local folder or a Hub id, with an error that says which it was
    taken for: a path that does not exist is named as such rather than sent to the Hub, and a
    Hub id that is neither cached nor reachable fails at once with an offline hint."""
    if spec == "tiny":
        return str(BUNDLED_BACKBONE)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{spec} has no config.json; save a backbone there with "
                                    "model.save_pretrained(folder), or pass a Hub id")
        return str(path)
    if not HUB_ID.match(spec) or spec.startswith((".", "~")):
        raise FileNotFoundError(f"{spec}: no such folder (and not a Hub id such as "
                                "facebook/wav2vec2-base); check the path")
    if hub_cached(spec) or hub_reachable():
        return spec
    raise FileNotFoundError(f"{spec}: not a local folder, not in the Hugging Face cache, and "
                            "the Hub cannot be reached (offline?). If you meant a folder, check "
                            "the path; if a Hub id, connect once to download it")


def hub_cached(spec: str) -> bool:
    return isinstance(try_to_load_from_cache(spec, "config.json"), str)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers within ``timeout`` seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def backbone_config(spec: str = "tiny") -> PretrainedConfig:
    """The architecture ``load_backbone(spec)`` would build, without building it."""
    if spec == "tiny" or spec == "random:tiny":
        return bundled_architecture()
    if spec in PRESETS:
        return PRESETS[spec]()
    if spec.startswith("random:"):
        raise ValueError(f"unknown preset {spec!r}; choose one of {sorted(PRESETS)}")
    location = checkpoint_location(spec)
    return family_of(checkpoint_model_type(location)).config_class.from_pretrained(location)


def checkpoint_model_type(location: str | Path) -> str | None:
    """The ``model_type`` a checkpoint's config.json declares."""
    return PretrainedConfig.get_config_dict(str(location))[0].get("model_type")


# ------------------------------------------------- running the transformer, family by family
def encoder_input(backbone: PreTrainedModel, input_values: torch.Tensor,
                  attention_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What enters transformer layer 0, and the frames that hold audio (None: no mask):
    CNN -> projection -> padding zeroed -> + positional conv -> (post-LN models) layer norm.
    The same steps as the families' own forward, in eval mode (no SpecAugment)."""
    features = backbone.feature_extractor(input_values).transpose(1, 2)
    frames = None
    if attention_mask is not None:
        frames = backbone._get_feature_vector_attention_mask(features.shape[1], attention_mask)
    hidden = backbone.feature_projection(features)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # HuBERT returns one tensor
    if frames is not None:
        hidden = hidden.masked_fill(~frames.unsqueeze(-1), 0.0)
    encoder = backbone.encoder
    hidden = hidden + encoder.pos_conv_embed(hidden)
    if not backbone.config.do_stable_layer_norm:
        hidden = encoder.layer_norm(hidden)  # post-LN ("base") normalises before layer 0
    return hidden, frames


class PositionBias(nn.Module):
    """WavLM's relative position bias for a sequence length: made by layer 0's embedding of
    bucketed distances and handed to every later layer (each gates it by its input). A model
    split at layer k > 0 recomputes it here from the length alone, exactly as layer 0 would.
    """

    def __init__(self, first_attention: nn.Module):
        super().__init__()
        self.embedding = first_attention.rel_attn_embed  # shared with layer 0, not copied
        self.bucket = first_attention._relative_positions_bucket  # a pure function of distances
        self.num_heads = first_attention.num_heads

    def forward(self, batch_size: int, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=self.embedding.weight.device)
        values = self.embedding(self.bucket(positions[None, :] - positions[:, None]))
        return values.permute(2, 0, 1).unsqueeze(0).repeat(batch_size, 1, 1, 1).view(
            batch_size * self.num_heads, length, length)


def position_bias(backbone: PreTrainedModel) -> PositionBias | None:
    """The module that gives a split WavLM's upper layers their position bias (else None)."""
    return PositionBias(backbone.encoder.layers[0].attention) if \
        backbone.config.model_type == "wavlm" else None


def each_layer(layers: Iterable[nn.Module], config: PretrainedConfig, hidden: torch.Tensor,
               frames: torch.Tensor | None, bias: PositionBias | None = None
               ) -> Iterator[torch.Tensor]:
    """The hidden states after each of ``layers`` in turn, with the mask (and WavLM's position
    bias) each family's layers take: Wav2Vec2 and HuBERT a 4-D attention mask, WavLM the frame
    mask and the bias. A generator, so that a caller wanting only the top state keeps no other."""
    if bias is None:
        mask = None if frames is None else create_bidirectional_mask(
            config=config, inputs_embeds=hidden, attention_mask=frames)
        for layer in layers:
            hidden = layer(hidden, attention_mask=mask)
            yield hidden
        return
    positions = bias(hidden.shape[0], hidden.shape[1])
    for layer in layers:
        hidden, positions = layer(hidden, attention_mask=frames, position_bias=positions)
        yield hidden


def run_layers(layers: Iterable[nn.Module], config: PretrainedConfig, hidden: torch.Tensor,
               frames: torch.Tensor | None, bias: PositionBias | None = None) -> torch.Tensor:
    """Hidden states through ``layers`` (see ``each_layer``): the top layer's output."""
    for hidden in each_layer(layers, config, hidden, frames, bias):
        pass
    return hidden


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, or of those that will be trained."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def blocks(backbone: PreTrainedModel) -> dict[str, torch.nn.Module]:
    """The backbone's stages in the order audio flows through them."""
    named = {"CNN feature encoder": backbone.feature_extractor,
             "feature projection": backbone.feature_projection,
             "positional conv": backbone.encoder.pos_conv_embed}
    named.update({f"layer {i}": layer for i, layer in enumerate(backbone.encoder.layers)})
    return named


def anatomy(backbone: PreTrainedModel, seconds: float = 3.0) -> pd.DataFrame:
    """Parameters and forward GFLOPs of each stage for one clip of ``seconds``."""
    names = {module: name for name, module in backbone.named_modules()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone.eval()(torch.randn(1, int(seconds * SAMPLE_RATE)))
    counts = {key.removeprefix(type(backbone).__name__ + "."): sum(ops.values())
              for key, ops in counter.get_flop_counts().items()}
    rows = [{"block": block, "parameters": sum(p.numel() for p in module.parameters()),
             "gflops": counts.get(names[module], 0) / 1e9}
            for block, module in blocks(backbone).items()]
    return pd.DataFrame(rows).set_index("block")
