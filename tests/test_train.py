from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import Wav2Vec2Model

from conftest import ToneDataset, small_config
from helpers.checkpoints import CheckpointError
from helpers.config import RunConfig
from helpers.dataset import collate
from helpers.device import resolve_precision
from helpers.loaders import DurationBatchSampler
from helpers.model import EmotionRegressor
from helpers.surgery import freeze_feature_encoder
from helpers.train import evaluate, fit, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def tone_model(seed: int = 0) -> EmotionRegressor:
    torch.manual_seed(seed)
    return freeze_feature_encoder(EmotionRegressor(Wav2Vec2Model(small_config()), head_dim=16))


def tone_loaders(size: int = 32):
    def make(seed: int, shuffle: bool) -> DataLoader:
        sampler = DurationBatchSampler([0.4] * size, max_batch_seconds=3.2, shuffle=shuffle,
                                       seed=seed)  # 8 clips of 0.4 s
        return DataLoader(ToneDataset(size, seed=seed), batch_sampler=sampler,
                          collate_fn=partial(collate, attention_mask=False))
    return make(0, True), make(1, False)


def test_fit_lowers_the_loss_on_a_learnable_problem():
    model = tone_model()
    train_loader, dev_loader = tone_loaders()
    config = RunConfig(device="cpu", num_epochs=12, lr=3e-3, warmup_ratio=0.0, patience=None,
                         progress=False)
    result = fit(model, train_loader, dev_loader, config)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[result.best_epoch]["dev_mean"] == max(
        r["dev_mean"] for r in result.history)
    assert evaluate(model, dev_loader, "cpu")["ccc"]["mean"] == pytest.approx(result.best_dev_ccc)


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    config = dict(num_epochs=2, lr=1e-3, patience=None, progress=False)
    reference = tone_model()
    fit(reference, *tone_loaders(16), RunConfig(device="cpu", **config))

    def crash_after_first_epoch(record):
        if record["epoch"] == 0:
            raise KeyboardInterrupt

    interrupted = tone_model()
    run = RunConfig(device="cpu", **config, checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, *tone_loaders(16), run, on_epoch_end=crash_after_first_epoch)
    resumed = tone_model()  # a fresh process would rebuild the model from scratch
    result = fit(resumed, *tone_loaders(16), run)
    assert [r["epoch"] for r in result.history] == [0, 1]
    for (name, expected), actual in zip(reference.state_dict().items(),
                                        resumed.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_checkpoint_holds_only_trainable_weights_and_loads_safely(tmp_path):
    model = tone_model()
    fit(model, *tone_loaders(8), RunConfig(device="cpu", num_epochs=1, progress=False,
                                              checkpoint_dir=str(tmp_path)))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state["trainable"]) == trainable
    assert not any(name.startswith("backbone.feature_extractor") for name in trainable)


def test_a_checkpoint_from_another_model_is_refused(tmp_path):
    fit(tone_model(), *tone_loaders(8), RunConfig(device="cpu", num_epochs=1, progress=False,
                                                     checkpoint_dir=str(tmp_path)))
    other = tone_model()
    other.backbone.encoder.requires_grad_(False)
    with pytest.raises(RuntimeError, match="does not match"):
        fit(other, *tone_loaders(8), RunConfig(device="cpu", num_epochs=1, progress=False,
                                                  checkpoint_dir=str(tmp_path), resume=True))


def test_bf16_autocast_trains_on_cpu():
    model = tone_model()
    result = fit(model, *tone_loaders(16), RunConfig(device="cpu", num_epochs=1,
                                                     progress=False), precision="bf16")
    assert result.skipped_steps == 0 and torch.isfinite(torch.tensor(result.best_dev_ccc))


def test_auto_precision_is_fp32_on_cpu_and_unknown_precision_is_refused():
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_the_optimizer_holds_exactly_the_trainable_parameters():
    model = tone_model()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = make_optimizer(model, 1e-4, 0.01)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, 1e-4, 0.01)


def test_resuming_with_other_settings_is_refused_by_name(tmp_path):
    fit(tone_model(), *tone_loaders(8), RunConfig(device="cpu", num_epochs=2, progress=False,
                                                   checkpoint_dir=str(tmp_path), lr=1e-3),
        on_epoch_end=lambda record: None)
    with pytest.raises(CheckpointError, match="lr: 0.001 then, 0.0005 now"):
        fit(tone_model(), *tone_loaders(8), RunConfig(device="cpu", num_epochs=2,
                                                       progress=False, lr=5e-4, resume=True,
                                                       checkpoint_dir=str(tmp_path)))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_checkpoint_is_named(tmp_path, content):
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="last.pt: not a readable checkpoint"):
        fit(tone_model(), *tone_loaders(8), RunConfig(device="cpu", num_epochs=1,
                                                       progress=False, resume=True,
                                                       checkpoint_dir=str(tmp_path)))


def test_resuming_on_data_or_a_backbone_with_other_contents_is_refused(tmp_path):
    """The same settings, but the data's labels edited (or the backbone folder's weights
    replaced): the inputs' content fingerprint differs, so the checkpoint is not resumed."""
    settings = RunConfig(device="cpu", num_epochs=1, progress=False, checkpoint_dir=str(tmp_path))
    fit(tone_model(), *tone_loaders(8), settings, inputs="labels as they were")
    with pytest.raises(RuntimeError, match=r"data and backbone \(content fingerprint\): "
                                           r"'labels as they were' then, 'labels edited' now"):
        fit(tone_model(), *tone_loaders(8), settings.with_(resume=True), inputs="labels edited")
