"""Finetuning methods as short strings, so that a results table, a command line and a notebook
parameter all speak the same language:

``full``, ``full+cnn``, ``partial(3)``, ``lora(16)``, ``cached(3)``, ``weighted-sum``,
and any of them with ``+bf16``, ``+fp16`` or ``+auto`` for mixed precision, ``+tf32`` to let
fp32 matrix products use TF32 tensor cores (a GPU option: plain ``fp32`` is true fp32), and
``+compile`` to run the part that trains through ``torch.compile``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

METHOD_PATTERN = re.compile(r"^(?P<kind>full|partial|lora|cached|weighted-sum)"
                            r"(?:\((?P<number>\d+)\))?"
                            r"(?P<options>(?:\+(?:cnn|bf16|fp16|auto|tf32|compile))*)$")
PRECISION_OPTIONS = ("bf16", "fp16", "auto")
EXAMPLES = "full, full+cnn, partial(3), lora(16), cached(3), weighted-sum, partial(3)+bf16"


@dataclass(frozen=True)
class Method:
    """A finetuning method: what trains, how, and in which precision."""

    kind: str = "full"           # full | partial | lora | cached | weighted-sum
    number: int | None = None    # layers trained (partial, cached) or LoRA rank
    train_cnn: bool = False
    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        text = self.kind + (f"({self.number})" if self.number is not None else "")
        return text + ("+cnn" if self.train_cnn else "") + \
            (f"+{self.precision}" if self.precision != "fp32" else "") + \
            ("+tf32" if self.tf32 else "") + ("+compile" if self.compile else "")


def parse_method(text: str) -> Method:
    """``"partial(3)+bf16"`` -> Method("partial", 3, precision="bf16")."""
    match = METHOD_PATTERN.match(text.strip())
    needs_number = match and match["kind"] in ("partial", "lora", "cached")
    if not match or bool(match["number"]) != bool(needs_number):
        raise ValueError(f"unknown method {text!r}; examples: {EXAMPLES}")
    options = match["options"].split("+")[1:]
    precisions = [o for o in options if o in PRECISION_OPTIONS]
    if len(precisions) > 1 or len(set(options)) < len(options):
        raise ValueError(f"method {text!r} repeats an option or names two precisions")
    if "cnn" in options and match["kind"] != "full":
        raise ValueError(f"method {text!r}: +cnn (training the CNN feature encoder) is only "
                         f"possible with full finetuning; {match['kind']} keeps the CNN frozen")
    number = int(match["number"]) if match["number"] else None
    if number == 0:
        raise ValueError(f"method {text!r}: the number must be at least 1 "
                         "(layers trained, or the LoRA rank)")
    return Method(match["kind"], number, "cnn" in options, precisions[0] if precisions else "fp32",
                  "tf32" in options, "compile" in options)


def check_fits(method: Method, num_layers: int) -> None:
    """Refuse a partial/cached method that would train more layers than the backbone has."""
    if method.kind in ("partial", "cached") and method.number > num_layers:
        raise ValueError(f"method {method.name}: the backbone has {num_layers} transformer "
                         f"layers, so at most {method.kind}({num_layers})")


def base_method(name: str) -> str:
    """The fp32 method a mixed-precision variant belongs to: ``partial(3)+bf16`` ->
    ``partial(3)``. Mixed precision is meant as a drop-in change to the same recipe, so a
    variant trains at the learning rate chosen for its base method."""
    method = parse_method(name)
    return Method(method.kind, method.number, method.train_cnn).name
