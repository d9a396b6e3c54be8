"""Model surgery: the split reproduces the model, and exactly the intended parameters train."""

import pytest
import torch
from conftest import small_config
from helpers.backbone import build_backbone
from helpers.dataset import collate_for
from helpers.metrics import ccc_loss
from helpers.model import EmotionRegressor
from helpers.surgery import (freeze_feature_encoder, split_at_layer, train_last_layers,
                             weighted_split)

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest

LAYERS = 3
# every family in both encoder variants: "wavlm-large" is a pre-LN, masked WavLM
VARIANTS = [f"{family}-{size}" for family in ("wav2vec2", "hubert", "wavlm")
            for size in ("base", "large")]


def config(variant: str):
    family, size = variant.split("-")
    return small_config(size, layers=LAYERS, family=family)


def regressor(variant: str, seed: int = 0) -> EmotionRegressor:
    torch.manual_seed(seed)
    return EmotionRegressor(build_backbone(config(variant)), head_dim=8)


def padded_batch(variant: str) -> dict:
    torch.manual_seed(1)
    items = [{"input_values": torch.randn(n), "labels": torch.rand(3)} for n in (6400, 4000, 5000)]
    return collate_for(config(variant))(items)


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [0, 1, LAYERS])
def test_split_reproduces_the_unsplit_model(variant, k):
    batch = padded_batch(variant)
    model = regressor(variant).eval()
    with torch.no_grad():
        expected = model(**inputs(batch))
    split = split_at_layer(model, k).eval()
    with torch.no_grad():
        actual = split(**inputs(batch))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_changes_only_an_unmasked_models_prediction(variant):
    """Large-style (layer-norm) models get a mask, so padding must not leak into their output.
    Base-style (group-norm) models get none: their first CNN layer normalises over the whole
    padded sequence and attention sees the padded frames, so a clip padded in a batch is
    predicted differently from the same clip alone (why the cache test compares them on clips
    of equal length)."""
    model = regressor(variant).eval()
    batch = padded_batch(variant)
    large = variant.endswith("large")
    assert ("attention_mask" in batch) == large
    short = {"input_values": batch["input_values"][1:2, :4000], "lengths": batch["lengths"][1:2]}
    if large:
        short["attention_mask"] = batch["attention_mask"][1:2, :4000]
    split = split_at_layer(model, 1).eval()
    with torch.no_grad():
        alone, padded = split(**short), split(**inputs(batch))[1:2]
    if large:
        torch.testing.assert_close(alone, padded, rtol=1e-4, atol=1e-5)
    else:
        assert not torch.allclose(alone, padded, rtol=1e-4, atol=1e-5), "padding had no effect"


def one_step_gradients(model, batch) -> dict[str, torch.Tensor | None]:
    model.train()
    ccc_loss(model(**inputs(batch)), batch["labels"]).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [0, 1])
def test_a_weighted_split_mixes_the_states_transformers_gives(variant, n):
    """weighted-sum (n = 0) and weighted-partial(n) mix the states of transformers'
    ``output_hidden_states`` by their weights, the top one as ``last_hidden_state`` (a pre-LN
    model's final norm applied: transformers 5 records it before)."""
    batch = padded_batch(variant)
    model = regressor(variant).eval()
    weighted = weighted_split(model, n).eval()
    with torch.no_grad():
        weighted.layer_logits.copy_(torch.randn(LAYERS + 1))
        output = model.backbone(batch["input_values"], attention_mask=batch.get(
            "attention_mask"), output_hidden_states=True)
        states = [*output.hidden_states[:-1], output.last_hidden_state]
        hidden = torch.einsum("l,lbtd->btd", weighted.layer_weights(), torch.stack(states))
        expected = model.pool_and_predict(hidden, model.frame_lengths(batch["lengths"], hidden))
        torch.testing.assert_close(weighted(**inputs(batch)), expected, rtol=1e-5, atol=1e-6)


SPLITS = {"partial": lambda model, n: split_at_layer(model, LAYERS - n),
          "weighted-partial": weighted_split}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n", [1, LAYERS])
@pytest.mark.parametrize("kind", list(SPLITS))
def test_partial_training_sends_gradients_exactly_where_intended(variant, n, kind):
    model = SPLITS[kind](regressor(variant), n)
    grads = one_step_gradients(model, padded_batch(variant))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert ("layer_logits" in trainable) == (kind == "weighted-partial")
    for name, grad in grads.items():
        if name in trainable:
            assert grad is not None and grad.abs().sum() > 0, f"{name} received no gradient"
        else:
            assert grad is None, f"frozen {name} received a gradient"
    top = f"encoder.layers.{LAYERS - 1}."
    assert any(top in name for name in trainable) and any("head" in name for name in trainable)
    assert not any(f"encoder.layers.{LAYERS - n - 1}." in name for name in trainable)
    assert model.model.backbone.config.layerdrop == 0.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_finetuning_trains_all_but_the_cnn(variant):
    model = freeze_feature_encoder(regressor(variant))
    grads = one_step_gradients(model, padded_batch(variant))
    for name, grad in grads.items():
        if "feature_extractor" in name:
            assert grad is None, name
        elif "masked_spec_embed" not in name:  # used only where SpecAugment masked frames
            assert grad is not None, name


def test_train_last_layers_refuses_impossible_counts():
    with pytest.raises(ValueError, match="transformer layers"):
        train_last_layers(regressor("wav2vec2-base"), LAYERS + 1)
    with pytest.raises(ValueError, match="between 0 and"):
        split_at_layer(regressor("wav2vec2-base"), -1)
