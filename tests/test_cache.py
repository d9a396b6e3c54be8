"""The caching trick: a cached step equals a live partial step; stale caches are never served."""

import pandas as pd
import pytest
import torch
from conftest import assert_gradients_close, small_config
from helpers.backbone import build_backbone
from helpers.cache import CachedDataset, build_cache, cache_key, collate_cached, get_cache
from helpers.dataset import SpeechDataset, collate_for
from helpers.loaders import to_device
from helpers.metrics import ccc_loss
from helpers.model import EmotionRegressor
from helpers.store import StaleStoreError
from helpers.surgery import split_at_layer

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest

K = 1


def split_model(variant: str, family: str = "wav2vec2"):
    torch.manual_seed(0)
    model = EmotionRegressor(build_backbone(small_config(variant, layers=3, family=family)),
                             head_dim=8)
    return split_at_layer(model, K)


def step(split, module, inputs: dict, labels: torch.Tensor) -> tuple[float, dict]:
    """Loss of one training step of ``module`` (part of ``split``) and the gradients, named
    as in ``split``; dropout masks are fixed by the seed."""
    split.train()
    split.zero_grad()
    torch.manual_seed(123)
    loss = ccc_loss(module(**inputs), labels)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in split.named_parameters()
                         if p.grad is not None}


# Base-style models take no attention mask, so padding changes their live outputs; the cache
# holds unpadded states. Their step is compared on equal-length clips, large-style (masked)
# models on clips of different lengths.
# Every family: WavLM's upper layers get their position bias recomputed from the length.
@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
@pytest.mark.parametrize("variant, max_seconds", [("base", 0.5), ("large", None)])
def test_a_cached_step_equals_a_partial_step(tmp_path, manifest_rows, variant, max_seconds,
                                             family):
    manifest = pd.DataFrame(manifest_rows)
    dataset = SpeechDataset(manifest, "train", max_seconds=max_seconds)
    batch_items = [dataset[i] for i in range(len(dataset))]
    live_batch = collate_for(small_config(variant, family=family))(batch_items)

    live = split_model(variant, family)
    live_loss, live_grads = step(live, live, {k: v for k, v in live_batch.items() if k != "labels"},
                                 live_batch["labels"])

    cached_model = split_model(variant, family)
    cache = CachedDataset(build_cache(cached_model.prefix, dataset, tmp_path / "c", "cpu",
                                         progress=False))
    cached_batch = collate_cached([cache[i] for i in range(len(cache))])
    assert cached_batch["hidden"].dtype == torch.float16  # cast where it is used
    cached_loss, cached_grads = step(cached_model, cached_model.suffix,
                                     to_device(cached_batch, torch.device("cpu")),
                                     cached_batch["labels"])

    assert cached_loss == pytest.approx(live_loss, abs=1e-4)
    assert_gradients_close(cached_grads, live_grads, relative=1e-2)


def test_cache_is_rebuilt_when_any_input_changes(tmp_path, manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    model = split_model("base")
    dataset = SpeechDataset(manifest, "train")
    first = get_cache(model.prefix, dataset, tmp_path, "cpu")
    assert len(first) == 2 and first[0]["hidden"].dtype == torch.float16
    key = cache_key(model.prefix, dataset)
    assert get_cache(model.prefix, dataset, tmp_path, "cpu").store.key == key  # reused

    changed_labels = manifest.assign(arousal=manifest["arousal"] + 0.5)
    assert cache_key(model.prefix, SpeechDataset(changed_labels, "train")) != key
    assert cache_key(model.prefix, SpeechDataset(manifest, "train", max_seconds=0.2)) != key
    assert cache_key(split_model("base").prefix.__class__(model.model.backbone, 2),
                     dataset) != key
    with torch.no_grad():
        model.model.backbone.encoder.layers[0].attention.q_proj.weight[0, 0] += 1.0
    assert cache_key(model.prefix, dataset) != key
    with pytest.raises(StaleStoreError, match="other inputs"):
        CachedDataset(next(tmp_path.glob("layer1-*")), expected_key=cache_key(model.prefix,
                                                                             dataset))


def test_training_the_suffix_keeps_the_cache_valid(tmp_path, manifest_rows):
    model = split_model("base")
    dataset = SpeechDataset(pd.DataFrame(manifest_rows), "train")
    key = cache_key(model.prefix, dataset)
    with torch.no_grad():
        model.model.backbone.encoder.layers[2].feed_forward.output_dense.weight.add_(1.0)
        model.model.head[1].weight.add_(1.0)
    assert cache_key(model.prefix, dataset) == key


def test_an_interrupted_build_leaves_nothing_that_is_served(tmp_path, manifest_rows, monkeypatch):
    root = tmp_path / "caches"
    model = split_model("base")
    dataset = SpeechDataset(pd.DataFrame(manifest_rows), "train")
    calls = {"n": 0}
    real_getitem = SpeechDataset.__getitem__

    def crash_on_second_clip(self, key):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_getitem(self, key)

    monkeypatch.setattr(SpeechDataset, "__getitem__", crash_on_second_clip)
    with pytest.raises(KeyboardInterrupt):
        get_cache(model.prefix, dataset, root, "cpu")
    monkeypatch.setattr(SpeechDataset, "__getitem__", real_getitem)
    assert list(root.iterdir()) == []  # neither a store nor the partial build is left
    with pytest.raises(FileNotFoundError, match="not a complete store"):
        CachedDataset(root / "layer1-anything")
    assert len(get_cache(model.prefix, dataset, root, "cpu")) == 2  # rebuilt on the next run


def test_random_crops_cannot_be_cached(tmp_path, manifest_rows):
    model = split_model("base")
    with pytest.raises(ValueError, match="train=False"):
        build_cache(model.prefix, SpeechDataset(pd.DataFrame(manifest_rows), "train", train=True),
                    tmp_path / "c", "cpu")
