"""LoRA through peft: where adapters go, what trains, and the save -> reload -> merge trip."""

import pytest
import torch
from peft import PeftModel
from transformers import Wav2Vec2Model

from conftest import small_config
from helpers.dataset import collate_for
from helpers.metrics import ccc_loss
from helpers.model import EmotionRegressor
from helpers.surgery import apply_lora

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def regressor(variant: str) -> EmotionRegressor:
    torch.manual_seed(0)
    return EmotionRegressor(Wav2Vec2Model(small_config(variant, layers=3)), head_dim=8)


def batch(variant: str) -> dict:
    torch.manual_seed(1)
    items = [{"input_values": torch.randn(n), "labels": torch.rand(3)} for n in (4000, 3000)]
    return collate_for(small_config(variant))(items)


def inputs(b: dict) -> dict:
    return {k: v for k, v in b.items() if k != "labels"}


def test_adapters_go_where_asked():
    model = apply_lora(regressor("base"), r=4, layers=1, feed_forward=True)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and all("encoder.layers.2." in n for n in adapted)
    assert any(n.endswith("q_proj") for n in adapted)
    assert any(n.endswith("intermediate_dense") for n in adapted)
    only_attention = apply_lora(regressor("base"), r=4)
    names = {n for n, _ in only_attention.named_parameters() if ".lora_A" in n}
    assert len(names) == 3 * 4 and not any("dense" in n for n in names)


@pytest.mark.parametrize("variant", ["base", "large"])
def test_only_adapters_and_head_train(variant):
    model = apply_lora(regressor(variant), r=4)
    data = batch(variant)
    model.train()
    ccc_loss(model(**inputs(data)), data["labels"]).backward()
    for name, parameter in model.named_parameters():
        trains = "lora_" in name or "modules_to_save" in name
        assert parameter.requires_grad == trains, name
        if trains and "lora_A" not in name:  # lora_A gets no gradient while lora_B is zero
            assert parameter.grad is not None, name


@pytest.mark.parametrize("variant", ["base", "large"])
def test_save_reload_merge_round_trip(tmp_path, variant):
    model = apply_lora(regressor(variant), r=4)
    with torch.no_grad():  # stand-in for training: move adapters and head off their init
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()
    data = inputs(batch(variant))
    with torch.no_grad():
        expected = model(**data)
    model.save_pretrained(tmp_path)

    reloaded = PeftModel.from_pretrained(regressor(variant), tmp_path).eval()
    trained_head = model.base_model.model.head.modules_to_save["default"][1].weight
    reloaded_head = reloaded.base_model.model.head.modules_to_save["default"][1].weight
    assert torch.equal(trained_head, reloaded_head)
    merged = reloaded.merge_and_unload().eval()
    assert isinstance(merged, EmotionRegressor)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**data), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(merged(**data), expected, rtol=1e-4, atol=1e-5)


def test_attention_adapters_on_wavlm_are_refused_where_they_are_made():
    """A notebook that calls apply_lora directly meets the same refusal as a method name."""
    from helpers.backbone import build_backbone
    from helpers.surgery import apply_ia3

    def wavlm():
        return EmotionRegressor(build_backbone(small_config(family="wavlm")), head_dim=8)
    with pytest.raises(ValueError, match="wavlm backbone's attention would never run"):
        apply_lora(wavlm(), r=4)
    with pytest.raises(ValueError, match="would never run"):
        apply_ia3(wavlm())
    adapted = apply_lora(wavlm(), r=4, on_attention=False, feed_forward=True)
    assert any("intermediate_dense.lora_A" in n for n, _ in adapted.named_parameters())
