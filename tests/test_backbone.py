import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import HubertModel, Wav2Vec2Model, WavLMModel

from conftest import small_config
from helpers.backbone import (FAMILIES, attention_kernel, build_backbone, count_parameters,
                              load_backbone)

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


# the published checkpoints' sizes (millions): wav2vec2-base 94.4, -large 315.4, hubert-base
# 94.4, -large 315.4 (the same shapes), wavlm-base-plus 94.4, -large 315.5 (+ position bias)
@pytest.mark.parametrize("spec, low, high, model_class", [
    ("random:wav2vec2-base", 94e6, 95e6, Wav2Vec2Model),
    ("random:wav2vec2-large", 315e6, 317e6, Wav2Vec2Model),
    ("random:hubert-base", 94e6, 95e6, HubertModel),
    ("random:hubert-large", 315e6, 317e6, HubertModel),
    ("random:wavlm-base-plus", 94e6, 95e6, WavLMModel),
    ("random:wavlm-large", 315e6, 317e6, WavLMModel)])
def test_random_presets_have_the_published_sizes(spec, low, high, model_class):
    with torch.device("meta"):  # the same modules, without allocating or drawing the weights
        backbone = load_backbone(spec)
    assert type(backbone) is model_class
    assert low <= count_parameters(backbone) <= high


@pytest.mark.parametrize("spec", ["random:wav2vec2-large", "random:hubert-large",
                                  "random:wavlm-large"])
def test_large_presets_are_the_layer_norm_variant(spec):
    with torch.device("meta"):
        config = load_backbone(spec).config
    assert config.feat_extract_norm == "layer" and config.do_stable_layer_norm


def test_each_family_states_the_attention_kernel_it_runs():
    assert attention_kernel("wav2vec2", "sdpa") == "sdpa"
    assert attention_kernel("hubert", "eager") == "eager"
    assert attention_kernel("wavlm", "sdpa") == "mha"  # transformers has no fused WavLM path
    with pytest.raises(ValueError, match="choose one of"):
        attention_kernel("wav2vec2", "flash")


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("variant", ["base", "large"])
def test_load_backbone_round_trips_a_saved_folder_of_each_family(tmp_path, variant, family):
    torch.manual_seed(0)
    original = build_backbone(small_config(variant, family=family)).eval()
    original.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path)).eval()
    assert type(loaded) is type(original)  # never another family's class
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        expected = original(audio).last_hidden_state
        torch.testing.assert_close(loaded(audio).last_hidden_state, expected, rtol=0, atol=1e-6)


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    build_backbone(small_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "whisper"}))
    with pytest.raises(ValueError, match="'whisper' checkpoint.*wav2vec2, hubert, wavlm"):
        load_backbone(str(tmp_path))


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_load_with_missing_or_unexpected_weights_stops(tmp_path, change):
    build_backbone(small_config(family="wavlm")).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    if change == "drop":  # e.g. WavLM's position bias, lost on the way
        weights = {k: v for k, v in weights.items() if "rel_attn_embed" not in k}
    else:  # a weight the architecture does not have, e.g. from another family
        weights["encoder.layers.1.attention.rel_attn_embed.weight"] = torch.zeros(320, 2)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    what = "missing" if change == "drop" else "unexpected"
    with pytest.raises(ValueError, match=f"does not fit its WavLMModel \\({what}: .*rel_attn"):
        load_backbone(str(tmp_path))


def test_pretraining_heads_of_a_checkpoint_are_let_go(tmp_path, capsys):
    build_backbone(small_config()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["quantizer.weight_proj.weight"] = torch.zeros(4, 4)  # as wav2vec2-base ships it
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    load_backbone(str(tmp_path))
    assert "pretraining heads not used by the backbone: quantizer" in capsys.readouterr().out


def test_a_folder_without_config_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(str(tmp_path))


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        load_backbone("random:wav2vec2-huge")


def test_tiny_backbone_loads_offline():
    backbone = load_backbone("tiny")
    assert count_parameters(backbone) < 10e6


def test_the_random_twin_has_the_architecture_of_the_backbone(tmp_path, small_backbone_dir):
    from helpers.backbone import base_config, random_twin

    assert random_twin("tiny") == "random:tiny"
    assert random_twin("random:wav2vec2-large") == "random:wav2vec2-large"
    base = tmp_path / "base"  # e.g. a downloaded base; random_twin reads its config.json
    base_config().save_pretrained(base)
    assert random_twin(str(base)) == "random:wav2vec2-base"
    with pytest.raises(ValueError, match="no random preset has its architecture"):
        random_twin(small_backbone_dir)
