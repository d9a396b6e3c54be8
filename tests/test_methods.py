"""The method registry: each method trains exactly what it claims, and a new one is an entry
plus a surgery function."""

import pytest
import torch
from conftest import assert_gradients_close

from helpers.backbone import count_parameters, load_backbone
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


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
@pytest.mark.parametrize("variant", ["base", "large"])
def test_a_pruned_backbone_gives_the_first_k_layers_hidden_states(family, variant):
    from conftest import small_config
    from helpers.backbone import build_backbone
    from helpers.surgery import prune_layers

    torch.manual_seed(0)
    whole = build_backbone(small_config(variant, layers=4, family=family)).eval()
    audio = torch.randn(2, 8000)
    with torch.no_grad():
        states = whole(audio, output_hidden_states=True).hidden_states
        pruned = prune_layers(whole, 2)(audio).last_hidden_state
    expected = whole.encoder.layer_norm(states[2]) if variant == "large" else states[2]
    assert whole.config.num_hidden_layers == 2 and len(whole.encoder.layers) == 2
    torch.testing.assert_close(pruned, expected, rtol=1e-5, atol=1e-5)


def test_a_pruned_model_saves_and_reloads_as_a_smaller_backbone(tmp_path):
    from helpers.backbone import load_backbone

    prepared = prepare("prune(4)+partial(2)", "random:tiny")
    backbone = prepared.regressor.backbone.eval()
    backbone.save_pretrained(tmp_path)
    reloaded = load_backbone(str(tmp_path)).eval()
    assert reloaded.config.num_hidden_layers == 4 and len(reloaded.encoder.layers) == 4
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(audio).last_hidden_state,
                                   backbone(audio).last_hidden_state)


def test_a_pruned_cached_step_equals_the_pruned_partial_step():
    """prune(k)+cached(n) trains on the fp16 states of the pruned prefix: the same step as
    prune(k)+partial(n) on audio, up to the fp16 storage."""
    from helpers.metrics import ccc_loss

    torch.manual_seed(5)
    audio, labels = torch.randn(3, 8000), torch.rand(3, 3)
    losses, grads = {}, {}
    for name in ("prune(4)+partial(2)", "prune(4)+cached(2)"):
        prepared = prepare(name, "random:tiny")
        split = prepared.split.train()
        hidden = split.prefix(audio)
        if name.endswith("cached(2)"):
            hidden = hidden.to(torch.float16).float()  # as the cache stores it
        torch.manual_seed(0)  # the same dropout masks
        frames = torch.full((3,), hidden.shape[1])
        loss = ccc_loss(split.suffix(hidden, frames), labels)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = {n: p.grad for n, p in split.suffix.named_parameters() if p.grad is not None}
    assert len(prepare("prune(4)+cached(2)", "random:tiny").regressor.backbone.encoder.layers) == 4
    assert losses["prune(4)+cached(2)"] == pytest.approx(losses["prune(4)+partial(2)"], abs=1e-3)
    assert_gradients_close(grads["prune(4)+cached(2)"], grads["prune(4)+partial(2)"],
                           relative=2e-2)


@pytest.mark.parametrize("name, says", [
    ("prune(4)+partial(6)", r"the pruned backbone keeps 4 transformer layers, so at most "
                            r"partial\(4\)"),
    ("prune(7)+full", r"the backbone has 6 transformer layers, so at most prune\(6\)"),
    ("prune(2)+weighted-partial(3)", r"keeps 2 transformer layers, so at most "
                                     r"weighted-partial\(2\)")])
def test_a_pruning_that_does_not_fit_is_refused_by_name(name, says):
    with pytest.raises(ValueError, match=says):
        prepare(name, "random:tiny")


@pytest.mark.parametrize("name", ["full", "partial(2)", "cached(2)", "lora(4)", "dora(4)", "ia3",
                                  "bitfit", "weighted-sum", "prune(4)+partial(2)"])
def test_attentive_pooling_trains_with_the_head_in_every_method(name):
    plain = prepare(name, "random:tiny")
    attentive = prepare(name, "random:tiny", pooling="attentive")
    pooling = {n for n in trainable_names(attentive.model) if "pooling" in n}
    assert len(pooling) == 4 and not any("pooling" in n for n in trainable_names(plain.model))
    width = load_backbone("random:tiny").config.hidden_size
    score = width * 128 + 128 + 128 + 1  # width -> 128 -> 1 frame scores
    head_growth = width * 256  # mean and std: twice the width into the head's 256 units
    assert (count_parameters(attentive.model, trainable_only=True)
            - count_parameters(plain.model, trainable_only=True) == score + head_growth)


def test_attentive_pooling_ignores_padded_frames():
    from helpers.model import AttentiveStatisticsPooling

    torch.manual_seed(0)
    pooling = AttentiveStatisticsPooling(8)
    hidden = torch.randn(1, 5, 8)
    padded = torch.cat([hidden, 100 * torch.randn(1, 3, 8)], 1)
    frames = torch.tensor([[True] * 5 + [False] * 3])
    alone = pooling(hidden, torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(pooling(padded, frames), alone)
    assert alone.shape == (1, 16)


def test_fresh_adapters_leave_the_backbone_output_unchanged_and_train_alone():
    plain, adapted = prepare("full", "random:tiny"), prepare("adapter(8)", "random:tiny")
    audio = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(adapted.model.eval()(audio), plain.model.eval()(audio))
    trainable = trainable_names(adapted.model)
    layers = adapted.regressor.backbone.config.num_hidden_layers
    adapters = {n for n in trainable if ".adapter." in n}
    assert len(adapters) == layers * 4  # down and up, weight and bias, in every layer
    assert all(n.startswith("head.") for n in trainable - adapters)
    width = adapted.regressor.backbone.config.hidden_size
    head = sum(p.numel() for n, p in adapted.model.named_parameters() if n.startswith("head."))
    assert count_parameters(adapted.model, True) - head == layers * (2 * width * 8 + 8 + width)


@pytest.mark.parametrize("name", ["adapter(8)", "weighted-partial(2)"])
def test_trained_parameters_save_and_reload_into_a_model_of_the_same_method(tmp_path, name):
    from helpers.surgery import load_trained, save_trained

    trained = prepare(name, "random:tiny").model
    with torch.no_grad():  # stand-in for training: move every trained parameter
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    path = save_trained(trained, tmp_path / "adapters.safetensors")
    reloaded = load_trained(prepare(name, "random:tiny").model, path)
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(audio), trained.eval()(audio))
    with pytest.raises(ValueError, match="saved for another method or backbone"):
        load_trained(prepare("bitfit", "random:tiny").model, path)
