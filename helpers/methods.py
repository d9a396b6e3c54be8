"""The method registry: the one place that knows what each finetuning method and option means.

Methods are short strings, so that a results table, a command line and a notebook parameter
all speak the same language: ``full``, ``full+cnn``, ``partial(3)``, ``lora(16)``,
``cached(3)``, ``weighted-sum``, the methods past the study (``lora-ffn(16)``, ``dora(16)``,
``ia3``, ``bitfit``, ``adapter(32)``, ``weighted-partial(3)``: the top 3 layers train and the
head reads a learned mix of every layer), any of them on a pruned backbone
(``prune(9)+partial(3)``: only the first 9 transformer layers are kept, then the top 3 of those
train), and any with ``+bf16``, ``+fp16`` or ``+auto`` for
mixed precision, ``+tf32`` to let fp32 matrix products use TF32 tensor cores (a GPU option:
plain ``fp32`` is true fp32), and ``+compile`` to run the part that trains through
``torch.compile``.

``KINDS`` maps each method kind to what defines it: the surgery function that prepares the
model (``surgery.py``), whether it trains on audio or on a layer cache, what its number means,
which kind-specific options it takes, where the bench runs it, and how it is drawn. ``OPTIONS``
does the same for the ``+option`` suffixes. ``parse_method`` turns a string into a ``Method``
once; everything downstream reads the parsed method's fields, never its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from transformers import PretrainedConfig

from .backbone import family_of, load_backbone
from .config import RunConfig
from .model import EmotionRegressor
from .surgery import (SplitRegressor, add_adapters, add_dora, add_ia3, add_lora,
                      add_lora_everywhere, add_lora_feed_forward, prune_layers, train_all_layers,
                      train_biases, train_top_layers, weighted_sum, weighted_top_layers)


@dataclass(frozen=True)
class MethodKind:
    """What defines one kind of method (one registry entry)."""

    name: str
    surgery: Callable[[EmotionRegressor, "Method"], nn.Module]  # leaves trainable what trains
    summary: str                     # what trains, in a few words (tables, --help)
    colour: str                      # the family's colour, the same in every figure
    number: str | None = None        # what the number in ``kind(n)`` counts, if it takes one
    counts_layers: bool = False      # the number is a count of top layers (checked against L)
    trains_on_cache: bool = False    # trains on the frozen prefix's cached states, not audio
    layer_sweep: bool = False        # a point of the "how many layers to train" sweep
    kind_options: tuple[str, ...] = ()  # options only this kind takes (e.g. ``cnn``)
    adapts_attention: bool = False   # wraps the attention projections (not every family can)
    training_grid: tuple[str, ...] = ()  # what ``make bench`` trains (fp32)
    training_bf16: tuple[str, ...] = ()  # ... and again with ``+bf16``
    timing_grid: tuple[str, ...] = ()    # what the timing grid times (fp32)
    timing_variants: dict[str, tuple[str, ...]] = field(default_factory=dict)  # option -> names


@dataclass(frozen=True)
class Option:
    """One ``+option``: which field of ``Method`` it sets, and to what."""

    name: str
    attribute: str   # precision | tf32 | compile | train_cnn
    value: object
    summary: str


KINDS = {kind.name: kind for kind in [
    MethodKind("full", train_all_layers, "every transformer layer + head", "tab:blue",
               layer_sweep=True, kind_options=("cnn",), training_grid=("full",),
               training_bf16=("full",), timing_grid=("full", "full+cnn"),
               timing_variants={"bf16": ("full",), "compile": ("full",)}),
    MethodKind("partial", train_top_layers, "the top n layers + head", "tab:green",
               number="layers trained", counts_layers=True, layer_sweep=True,
               training_grid=(*(f"partial({n})" for n in range(1, 6)), "prune(4)+partial(3)"),
               training_bf16=("partial(3)",), timing_grid=("partial(3)", "prune(9)+partial(3)"),
               timing_variants={"bf16": ("partial(3)",), "compile": ("partial(3)",)}),
    MethodKind("lora", add_lora, "low-rank adapters on attention + head", "tab:purple",
               number="rank", adapts_attention=True, training_grid=("lora(16)",),
               timing_grid=("lora(16)",), timing_variants={"bf16": ("lora(16)",)}),
    MethodKind("lora-ffn", add_lora_feed_forward, "low-rank adapters on the feed-forward "
               "layers + head", "mediumpurple", number="rank", training_grid=("lora-ffn(16)",),
               timing_grid=("lora-ffn(16)",)),
    MethodKind("lora-all", add_lora_everywhere, "low-rank adapters on attention and "
               "feed-forward + head", "indigo", number="rank", adapts_attention=True,
               training_grid=("lora-all(16)",), timing_grid=("lora-all(16)",)),
    MethodKind("dora", add_dora, "weight-decomposed low-rank adapters on attention + head",
               "tab:pink", number="rank", adapts_attention=True, training_grid=("dora(16)",),
               timing_grid=("dora(16)",)),
    MethodKind("ia3", add_ia3, "learned rescaling of keys, values and feed-forward + head",
               "tab:cyan", adapts_attention=True, training_grid=("ia3",),
               timing_grid=("ia3",)),
    MethodKind("cached", train_top_layers, "the top n layers on stored prefix outputs",
               "tab:orange", number="layers trained", counts_layers=True,
               trains_on_cache=True, training_grid=("cached(3)", "prune(4)+cached(3)"),
               training_bf16=("cached(3)",), timing_grid=("cached(3)", "prune(9)+cached(3)"),
               timing_variants={"bf16": ("cached(3)",), "compile": ("cached(3)",)}),
    MethodKind("adapter", add_adapters, "bottleneck adapters after each feed-forward + head",
               "tab:gray", number="bottleneck width", training_grid=("adapter(32)",),
               timing_grid=("adapter(64)",)),
    MethodKind("weighted-sum", weighted_sum, "a learned mix of frozen layers + head",
               "tab:brown", training_grid=("weighted-sum",), timing_grid=("weighted-sum",)),
    MethodKind("weighted-partial", weighted_top_layers, "the top n layers + a learned mix of "
               "every layer + head", "sienna", number="layers trained", counts_layers=True,
               training_grid=("weighted-partial(3)",), timing_grid=("weighted-partial(3)",)),
    MethodKind("bitfit", train_biases, "the transformer's biases + head", "tab:olive",
               training_grid=("bitfit",), timing_grid=("bitfit",)),
]}

OPTIONS = {option.name: option for option in [
    Option("cnn", "train_cnn", True, "train the CNN feature encoder too"),
    Option("bf16", "precision", "bf16", "bf16 autocast"),
    Option("fp16", "precision", "fp16", "fp16 autocast with a gradient scaler"),
    Option("auto", "precision", "auto", "bf16 where supported, else fp16 (fp32 on the CPU)"),
    Option("tf32", "tf32", True, "let fp32 matrix products use TF32 tensor cores (CUDA)"),
    Option("compile", "compile", True, "torch.compile the part that trains"),
]}
KIND_OPTIONS = {option: [kind.name for kind in KINDS.values() if option in kind.kind_options]
                for option in OPTIONS if any(option in k.kind_options for k in KINDS.values())}
PATTERN = re.compile(rf"^(?:prune\((?P<keep>\d+)\)(?:\+|$))?"
                     rf"(?P<kind>{'|'.join(map(re.escape, KINDS))})?(?:\((?P<number>\d+)\))?"
                     rf"(?P<options>(?:\+(?:{'|'.join(OPTIONS)}))*)$")
EXAMPLES = ("full, full+cnn, partial(3), lora(16), lora-ffn(16), dora(16), ia3, bitfit, "
            "adapter(32), cached(3), weighted-sum, weighted-partial(3), partial(3)+bf16, "
            "prune(9)+partial(3)")


@dataclass(frozen=True)
class Method:
    """A parsed finetuning method: what trains, how, and in which precision."""

    kind: str = "full"
    number: int | None = None    # layers trained (partial, cached), rank, or adapter width
    keep_layers: int | None = None  # prune(k): only the first k transformer layers are kept
    train_cnn: bool = False
    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False

    @property
    def spec(self) -> MethodKind:
        """This method's registry entry."""
        return KINDS[self.kind]

    @property
    def name(self) -> str:
        text = self.kind + (f"({self.number})" if self.number is not None else "")
        if self.keep_layers is not None:
            text = f"prune({self.keep_layers})+{text}"
        chosen = [option.name for option in OPTIONS.values()
                  if getattr(self, option.attribute) == option.value]
        return "+".join([text, *chosen])

    @property
    def mixed_precision(self) -> bool:
        """Whether it runs in a 16-bit autocast (drawn hollow beside its fp32 twin)."""
        return self.precision != "fp32"

    @property
    def needs_native_bf16(self) -> bool:
        """bf16 asked for by name: pointless where bf16 is emulated (about 10x slower)."""
        return self.precision == OPTIONS["bf16"].value

    @property
    def base(self) -> "Method":
        """The fp32 method this is a variant of (``partial(3)+bf16`` -> ``partial(3)``): a
        variant trains at the learning rate chosen for its base method."""
        return Method(self.kind, self.number, self.keep_layers, self.train_cnn)


def parse_method(text: str | Method) -> Method:
    """``"partial(3)+bf16"`` -> Method("partial", 3, precision="bf16"); a Method passes."""
    if isinstance(text, Method):
        return text
    match = PATTERN.match(text.strip())
    if match and not match["kind"] and (match["number"] or not match["keep"]
                                        or text.strip().endswith("+")):
        match = None  # only prune(k) may stand without a kind (it means prune(k)+full)
    kind_name = match and (match["kind"] or "full")
    if not match or bool(match["number"]) != bool(KINDS[kind_name].number):
        raise ValueError(f"unknown method {text!r}; examples: {EXAMPLES}")
    kind, options = KINDS[kind_name], match["options"].split("+")[1:]
    attributes = [OPTIONS[o].attribute for o in options]
    if len(set(attributes)) < len(attributes):
        raise ValueError(f"method {text!r} repeats an option or names two precisions")
    for name in set(options) & KIND_OPTIONS.keys() - set(kind.kind_options):
        raise ValueError(f"method {text!r}: +{name} ({OPTIONS[name].summary}) is only "
                         f"possible with {', '.join(KIND_OPTIONS[name])}; {kind.name} does "
                         "not take it")
    number = int(match["number"]) if match["number"] else None
    keep = int(match["keep"]) if match["keep"] else None
    if number == 0 or keep == 0:
        what = kind.number if number == 0 else "layers kept"
        raise ValueError(f"method {text!r}: the number ({what}) must be at least 1")
    return Method(kind.name, number, keep,
                  **{OPTIONS[o].attribute: OPTIONS[o].value for o in options})


def base_method(name: str) -> str:
    """The name of the fp32 method a variant belongs to (see ``Method.base``)."""
    return parse_method(name).base.name


def check_fits(method: Method, config: PretrainedConfig) -> None:
    """Refuse a method that the backbone (``config``) cannot take: more layers than it has, or
    adapters on attention projections its family never calls as modules."""
    num_layers = config.num_hidden_layers
    if method.keep_layers is not None and method.keep_layers > num_layers:
        raise ValueError(f"method {method.name}: the backbone has {num_layers} transformer "
                         f"layers, so at most prune({num_layers})")
    kept = method.keep_layers or num_layers
    if method.spec.counts_layers and method.number > kept:
        has = "the pruned backbone keeps" if method.keep_layers else "the backbone has"
        raise ValueError(f"method {method.name}: {has} {kept} transformer layers, so at "
                         f"most {method.kind}({kept})")
    if method.spec.adapts_attention and not family_of(config.model_type).adapts_attention:
        raise ValueError(
            f"method {method.name} on a {config.model_type} backbone: its attention reads the "
            "projection weights directly (torch's multi-head attention function), so adapters "
            "there would never run; choose lora-ffn(r), bitfit, partial(n) or full")


def fitting(methods: list[str], config: PretrainedConfig) -> list[str]:
    """The methods a backbone (``config``) can take, saying which are left out and why."""
    kept = []
    for name in methods:
        try:
            check_fits(parse_method(name), config)
            kept.append(name)
        except ValueError as refusal:
            print(f"left out: {refusal}")
    return kept


def layers_trained(method: Method, num_layers: int) -> int | None:
    """Where ``method`` sits in the layer sweep (full: every layer), else None."""
    if not method.spec.layer_sweep or method != Method(method.kind, method.number):
        return None
    return method.number if method.spec.counts_layers else num_layers


def training_grid() -> list[str]:
    """What ``make bench`` trains: every kind's fp32 methods, then their bf16 twins."""
    plain = [name for kind in KINDS.values() for name in kind.training_grid]
    return plain + [f"{name}+bf16" for kind in KINDS.values() for name in kind.training_bf16]


def timing_grid() -> list[str]:
    """What the timing grid times: every kind's fp32 methods, then each option's variants."""
    names = [name for kind in KINDS.values() for name in kind.timing_grid]
    for option in ("bf16", "compile"):
        names += [f"{name}+{option}" for kind in KINDS.values()
                  for name in kind.timing_variants.get(option, ())]
    return names


def colour(method: Method | str) -> str:
    """The colour of a method's family (``partial(3)+bf16`` -> partial's)."""
    return parse_method(method).spec.colour


@dataclass
class Prepared:
    """A model ready for ``fit``; for split methods, the split (whose prefix a cache stores)."""

    model: nn.Module
    regressor: EmotionRegressor
    split: SplitRegressor | None = None


def prepare(method: Method | str, backbone: str = RunConfig.backbone, seed: int = RunConfig.seed,
            attention: str = RunConfig.attention, pooling: str = RunConfig.pooling) -> Prepared:
    """Build the regressor and let the method's surgery leave exactly what it trains
    trainable; a method that trains on a cache trains the split's suffix."""
    method = parse_method(method)
    torch.manual_seed(seed)
    regressor = EmotionRegressor(load_backbone(backbone, seed=seed, attention=attention),
                                 pooling=pooling)
    check_fits(method, regressor.backbone.config)
    if method.keep_layers is not None:
        prune_layers(regressor.backbone, method.keep_layers)
    model = method.spec.surgery(regressor, method)
    split = model if isinstance(model, SplitRegressor) else None
    return Prepared(split.suffix if method.spec.trains_on_cache else model, regressor, split)
