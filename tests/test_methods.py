"""The method registry: each method trains exactly what it claims, and a new one is an entry
plus a surgery function."""

import pytest
import torch

from helpers.backbone import count_parameters
from helpers.methods import KINDS, parse_method, prepare, timing_grid, training_grid


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_bitfit_trains_exactly_the_transformers_biases_and_the_head():
    prepared = prepare("bitfit", "random:tiny")
    backbone = prepared.regressor.backbone
    biases = {f"backbone.encoder.{name}" for name, _ in backbone.encoder.named_parameters()
              if name.endswith(".bias")}
    head = {f"head.{name}" for name, _ in prepared.regressor.head.named_parameters()}
    assert trainable_names(prepared.model) == biases | head
    expected = sum(p.numel() for n, p in prepared.model.named_parameters() if n in biases | head)
    assert count_parameters(prepared.model, trainable_only=True) == expected
    assert not backbone.feature_extractor._requires_grad  # no backward pass through the CNN


def test_every_kind_parses_and_sits_in_the_grids():
    for kind in KINDS.values():
        names = kind.training_grid + kind.timing_grid
        assert names, kind.name
        assert all(parse_method(name).kind == kind.name for name in names)
    assert "bitfit" in training_grid() and "bitfit" in timing_grid()
    assert len(set(training_grid())) == len(training_grid())


@pytest.mark.parametrize("name, says", [
    ("bitfit+cnn", r"\+cnn \(train the CNN feature encoder too\) is only possible with full"),
    ("partial(3)+cnn", r"\+cnn .* is only possible with full; partial does not take it"),
    ("bitfit(2)", "unknown method 'bitfit\\(2\\)'")])
def test_what_a_kind_does_not_take_is_refused_by_name(name, says):
    with pytest.raises(ValueError, match=says):
        parse_method(name)
