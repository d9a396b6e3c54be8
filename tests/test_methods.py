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


# what each adapter method trains, by parameter name: (module names adapted, adapter tensors)
ADAPTERS = {
    "lora-ffn(4)": (("intermediate_dense", "output_dense"), ("lora_A", "lora_B")),
    "lora-all(4)": (("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense",
                     "output_dense"), ("lora_A", "lora_B")),
    "dora(4)": (("q_proj", "k_proj", "v_proj", "out_proj"),
                ("lora_A", "lora_B", "lora_magnitude_vector")),
    "ia3": (("k_proj", "v_proj", "output_dense"), ("ia3_l",)),
}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_method_trains_exactly_its_adapters_and_the_head(name):
    modules, tensors = ADAPTERS[name]
    prepared = prepare(name, "random:tiny")
    layers = prepared.regressor.backbone.config.num_hidden_layers
    trainable = trainable_names(prepared.model)
    adapters = {n for n in trainable if "modules_to_save" not in n}
    expected = {(layer, module, tensor) for layer in range(layers) for module in modules
                for tensor in tensors}
    found = {(int(n.split("encoder.layers.")[1].split(".")[0]),
              next(m for m in modules if f".{m}." in n), next(t for t in tensors if t in n))
             for n in adapters}
    assert found == expected and len(adapters) == len(expected)
    assert {n for n in trainable - adapters} and all("head" in n for n in trainable - adapters)


@pytest.mark.parametrize("name", ["dora(4)", "lora-ffn(4)"])
def test_merged_adapters_give_the_unmerged_output(name):
    prepared = prepare(name, "random:tiny")
    model = prepared.model
    with torch.no_grad():  # stand-in for training: move every adapter off its initial value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    audio = torch.randn(2, 8000)
    model.eval()
    with torch.no_grad():
        unmerged = model(audio)
        merged = model.merge_and_unload().eval()(audio)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lora(16)", "lora-all(8)", "dora(4)", "ia3"])
def test_attention_adapters_are_refused_on_wavlm(name):
    """WavLM's attention hands its projection weights to torch's multi-head attention
    function, so a peft wrapper around q/k/v/out_proj would never run: refused by name."""
    from helpers.backbone import backbone_config
    from helpers.methods import check_fits

    config = backbone_config("random:wavlm-base-plus")
    with pytest.raises(ValueError, match=r"on a wavlm backbone: .*choose lora-ffn\(r\)"):
        check_fits(parse_method(name), config)
    check_fits(parse_method("lora-ffn(16)"), config)  # the feed-forward layers are modules
