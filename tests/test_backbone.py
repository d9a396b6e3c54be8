import pytest
import torch
from transformers import Wav2Vec2Model

from conftest import small_config
from helpers.backbone import count_parameters, load_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


@pytest.mark.parametrize("spec, low, high", [("random:wav2vec2-base", 94e6, 95e6),
                                             ("random:wav2vec2-large", 315e6, 317e6)])
def test_random_presets_have_the_published_sizes(spec, low, high):
    with torch.device("meta"):  # the same modules, without allocating or drawing the weights
        backbone = load_backbone(spec)
    assert low <= count_parameters(backbone) <= high


def test_large_preset_is_the_layer_norm_variant():
    with torch.device("meta"):
        config = load_backbone("random:wav2vec2-large").config
    assert config.feat_extract_norm == "layer" and config.do_stable_layer_norm


@pytest.mark.parametrize("variant", ["base", "large"])
def test_load_backbone_round_trips_a_saved_folder(tmp_path, variant):
    torch.manual_seed(0)
    original = Wav2Vec2Model(small_config(variant)).eval()
    original.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path)).eval()
    audio = torch.randn(1, 8000)
    with torch.no_grad():
        expected = original(audio).last_hidden_state
        assert torch.equal(loaded(audio).last_hidden_state, expected)


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
