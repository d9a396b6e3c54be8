"""Getting a Wav2Vec2: the bundled tiny one, a Hub checkpoint, a local folder, or a random preset.

``load_backbone`` takes one string so that a notebook's parameters cell can switch backbones:

=============================  ==========================================================
``"tiny"``                     the bundled backbone in ``data_sample/backbone/``
``"facebook/wav2vec2-base"``   any Hub id (needs internet the first time)
``"path/to/folder"``           a folder written by ``save_pretrained``
``"random:wav2vec2-base"``     the published architecture with random weights: exact speed
``"random:wav2vec2-large"``    and memory figures without downloading anything
=============================  ==========================================================
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path

import pandas as pd
import torch
from huggingface_hub import try_to_load_from_cache
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .constants import SAMPLE_RATE
from .paths import BUNDLED_BACKBONE


def base_config() -> Wav2Vec2Config:
    """facebook/wav2vec2-base: 12 post-LN layers of width 768, group-norm CNN (~94.4 M)."""
    return Wav2Vec2Config()  # the library defaults are exactly the base architecture


def large_config() -> Wav2Vec2Config:
    """facebook/wav2vec2-large-lv60 / large-robust: 24 pre-LN layers of width 1024 (~315 M)."""
    return Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True)


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


PRESETS = {"random:wav2vec2-base": base_config, "random:wav2vec2-large": large_config,
           "random:tiny": bundled_architecture}


ATTENTIONS = ("sdpa", "eager")


def load_backbone(spec: str = "tiny", seed: int = 0, attention: str = "sdpa") -> Wav2Vec2Model:
    """A Wav2Vec2Model for ``spec`` (see the module docstring); random presets use ``seed``.

    ``attention`` picks the attention kernel: ``sdpa`` (PyTorch's fused
    scaled-dot-product attention, the fast path) or ``eager`` (plain matrix products, kept
    for checks: the two agree to rounding).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r}: choose one of {ATTENTIONS}")
    if spec == "tiny":
        if (BUNDLED_BACKBONE / "config.json").is_file():
            return Wav2Vec2Model.from_pretrained(BUNDLED_BACKBONE, attn_implementation=attention)
        warnings.warn(f"{BUNDLED_BACKBONE} not found: using the tiny architecture with random "
                      "weights, so its frozen layers hold no useful features yet.")
        spec = "random:tiny"
    if spec in PRESETS:
        torch.manual_seed(seed)
        config = PRESETS[spec]()
        config._attn_implementation = attention
        return Wav2Vec2Model(config)
    if spec.startswith("random:"):
        raise ValueError(f"unknown preset {spec!r}; choose one of {sorted(PRESETS)}")
    return Wav2Vec2Model.from_pretrained(checkpoint_location(spec), attn_implementation=attention)


def random_twin(spec: str) -> str:
    """The random-weight preset with ``spec``'s architecture: the control a probe compares a
    pretrained backbone with (the gap is what pretraining added)."""
    if spec in PRESETS:
        return spec
    if spec == "tiny":
        return "random:tiny"
    config = Wav2Vec2Config.from_pretrained(checkpoint_location(spec))
    shape = lambda c: (c.hidden_size, c.num_hidden_layers, c.feat_extract_norm)
    for name, preset in PRESETS.items():
        if shape(preset()) == shape(config):
            return name
    raise ValueError(f"{spec}: no random preset has its architecture (width "
                     f"{config.hidden_size}, {config.num_hidden_layers} layers); choose the "
                     f"control yourself among {sorted(PRESETS)}")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def checkpoint_location(spec: str) -> str:
    """``spec`` checked as a local folder or a Hub id, with an error that says which it was
    taken for: a path that does not exist is named as such rather than sent to the Hub, and a
    Hub id that is neither cached nor reachable fails at once with an offline hint."""
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


def backbone_config(spec: str = "tiny") -> Wav2Vec2Config:
    """The architecture ``load_backbone(spec)`` would build, without building it."""
    if spec == "tiny" or spec == "random:tiny":
        return bundled_architecture()
    if spec in PRESETS:
        return PRESETS[spec]()
    if spec.startswith("random:"):
        raise ValueError(f"unknown preset {spec!r}; choose one of {sorted(PRESETS)}")
    return Wav2Vec2Config.from_pretrained(checkpoint_location(spec))


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, or of those that will be trained."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def blocks(backbone: Wav2Vec2Model) -> dict[str, torch.nn.Module]:
    """The backbone's stages in the order audio flows through them."""
    named = {"CNN feature encoder": backbone.feature_extractor,
             "feature projection": backbone.feature_projection,
             "positional conv": backbone.encoder.pos_conv_embed}
    named.update({f"layer {i}": layer for i, layer in enumerate(backbone.encoder.layers)})
    return named


def anatomy(backbone: Wav2Vec2Model, seconds: float = 3.0) -> pd.DataFrame:
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
