"""The bundled backbone: plain transformers can load it offline, and its recorded probe
figures are what the probe measures."""

import inspect

import numpy as np
import pytest
from transformers import Wav2Vec2Model

from helpers.backbone import count_parameters, load_backbone, tiny_config
from helpers.bundled.pretrain import best_layer_figures, pretrain, read_recipe
from helpers.manifests import sample_manifest
from helpers.paths import BUNDLED_BACKBONE
from helpers.probes import layer_probe, load_probes

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def test_plain_transformers_loads_it_offline():
    model = Wav2Vec2Model.from_pretrained(BUNDLED_BACKBONE)
    assert count_parameters(model) == count_parameters(load_backbone("tiny"))
    assert (BUNDLED_BACKBONE / "model.safetensors").stat().st_size <= 25 * 2**20
    assert model.config.feat_extract_norm == "group"  # base-like, as the model card says


def test_random_tiny_is_the_bundled_architecture_with_fresh_weights():
    pretrained, random_weights = load_backbone("tiny"), load_backbone("random:tiny")
    assert count_parameters(random_weights) == count_parameters(pretrained)
    assert random_weights.config.hidden_size == pretrained.config.hidden_size
    first = lambda model: next(model.encoder.layers[0].parameters())
    assert not first(random_weights).equal(first(pretrained))


@pytest.mark.recorded
def test_probe_measured_now_matches_the_recorded_one():
    """Every clip of the bundled corpus through the backbone, then a ridge probe per layer
    (about a minute and a half on 2 cores: ``make check-recorded``, which CI runs after
    ``make test``)."""
    recorded = load_probes(BUNDLED_BACKBONE)
    measured = layer_probe(load_backbone("tiny"), sample_manifest())
    expected = recorded["pretrained"]
    for dimension in ("arousal", "valence", "dominance", "mean"):
        assert measured[dimension].tolist() == pytest.approx(
            expected[dimension].tolist(), abs=0.01), dimension


def test_recorded_probe_meets_the_targets_the_model_card_claims():
    """Best layer against random weights: +0.20 CCC averaged over the three dimensions and
    +0.40 on valence (the test above ties these recorded figures to the weights)."""
    figures = best_layer_figures(load_probes(BUNDLED_BACKBONE))
    assert figures["gain mean"] >= 0.20 and figures["gain valence"] >= 0.40


def test_the_bare_command_is_the_recipe_that_made_it():
    """``python -m helpers pretrain-backbone`` with no options, and ``pretrain()`` with no
    keywords, rerun the bundled recipe."""
    from helpers.__main__ import parser

    args = parser().parse_args(["pretrain-backbone"])
    recorded = read_recipe(BUNDLED_BACKBONE)
    assert recorded == {
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "prosody_weight": args.prosody_weight, "width": args.width}
    defaults = {name: parameter.default
                for name, parameter in inspect.signature(pretrain).parameters.items()}
    assert recorded == {option: defaults["num_steps" if option == "steps" else option]
                        for option in recorded}
    assert tiny_config().hidden_size == recorded["width"]


def test_max_pooling_takes_the_largest_value_over_time_and_others_are_refused():
    from helpers.probes import pooled_hidden_states

    clips = sample_manifest().head(2)
    backbone = load_backbone("tiny")
    mean, largest = (pooled_hidden_states(backbone, clips, pooling=p) for p in ("mean", "max"))
    assert largest.shape == mean.shape and (largest >= mean).all() and (largest > mean).any()
    with pytest.raises(ValueError, match="pooling='median'"):
        pooled_hidden_states(backbone, clips, pooling="median")


def test_ridge_probe_scores_the_predictions_ridge_predictions_returns():
    from helpers.metrics import ccc
    from helpers.probes import common_labels, ridge_predictions, ridge_probe

    manifest = sample_manifest()
    features = np.random.default_rng(0).normal(size=(len(manifest), 4))
    features[:, 0] += manifest["arousal"].to_numpy()  # one informative feature
    predictions = ridge_predictions(features, manifest)
    assert len(predictions) == (manifest["split"] == "test").sum()
    truth = common_labels(manifest.loc[predictions.index])
    assert ridge_probe(features, manifest)["arousal"] == pytest.approx(
        ccc(predictions["arousal"].to_numpy(), truth[:, 0]))
