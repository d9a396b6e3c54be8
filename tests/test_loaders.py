"""Batches by duration, loader workers, and a training step that does not wait for the device."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import Wav2Vec2Model

from conftest import ToneDataset, small_config
from helpers.checkpoints import seed_everything
from helpers.dataset import SpeechDataset, collate
from helpers.loaders import (DurationBatchSampler, label_spread, make_loader, padding_share,
                             random_batches)
from helpers.manifests import sample_manifest
from helpers.metrics import ccc_loss
from helpers.model import EmotionRegressor
from helpers.surgery import freeze_feature_encoder
from helpers.train import make_optimizer, make_scaler, train_step

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def test_batches_respect_the_budget_cover_the_epoch_and_change_between_epochs():
    durations = np.random.default_rng(0).uniform(0.5, 4.0, 200)
    sampler = DurationBatchSampler(durations, max_batch_seconds=12.0, seed=0)
    plans = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = [[index for index, _ in batch] for batch in sampler]
        assert all(len(b) * durations[b].max() <= 12.0 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(200))  # each clip once
        assert all(e == epoch for batch in sampler for _, e in batch)
        plans.append({frozenset(b) for b in batches})
    assert len(plans[0] & plans[1]) < 0.1 * len(plans[0])  # compositions change
    again = DurationBatchSampler(durations, max_batch_seconds=12.0, seed=0, epoch=1)
    assert {frozenset(b) for b in again.plan()} == plans[1]  # and repeat for a seed and epoch


def test_evaluation_batches_are_sorted_and_fixed():
    durations = [3.0, 1.0, 2.0, 1.5]
    sampler = DurationBatchSampler(durations, 4.0, shuffle=False)
    assert sampler.plan() == [[1, 3], [2], [0]]
    sampler.set_epoch(5)
    assert sampler.plan() == [[1, 3], [2], [0]]


def test_a_budget_below_the_longest_clip_is_refused():
    with pytest.raises(ValueError, match="max_batch_seconds=2 is shorter than the longest"):
        DurationBatchSampler([1.0, 3.0], max_batch_seconds=2.0)


def test_ranks_take_disjoint_shares_of_the_same_plan():
    durations = np.random.default_rng(1).uniform(0.5, 4.0, 101)
    shares = [DurationBatchSampler(durations, 8.0, seed=3, num_replicas=2, rank=r)
              for r in (0, 1)]
    for epoch in range(4):
        for share in shares:
            share.set_epoch(epoch)
        seen = [[i for batch in share for i, _ in batch] for share in shares]
        assert sorted(seen[0] + seen[1]) == list(range(101))  # every clip exactly once
        assert len(shares[0]) == len(shares[1])  # DDP ranks step in lockstep
        assert all(len(b) * durations[b].max() <= 8.0 for s in shares for b in s.shares())


def test_label_spread_within_batches_is_close_to_random_batching():
    """Clip length predicts arousal in the bundled corpus (r = -0.62 in train): batches of
    similar length carry less spread. Duration-budgeted batches from a random order do not."""
    train = SpeechDataset(sample_manifest(), "train", train=True)
    labels, durations = train.labels.numpy(), train.durations()
    sampler = DurationBatchSampler(durations, 32.0, seed=0)
    ours, random = [], []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        plan = sampler.plan()
        ours.append(label_spread(plan, labels))
        random.append(label_spread(random_batches(len(labels), [len(b) for b in plan], epoch),
                                   labels))
    assert np.mean(ours) == pytest.approx(np.mean(random), rel=0.05)
    by_length = np.argsort(durations)  # the opposite extreme: batches of similar length
    similar = [by_length[i:i + 8].tolist() for i in range(0, len(by_length), 8)]
    assert label_spread(similar, labels) < 0.95 * np.mean(random)
    assert padding_share(similar, durations) < padding_share(sampler.plan(), durations)


def test_crops_differ_between_epochs_with_persistent_workers(manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    dataset = SpeechDataset(manifest, "train", max_seconds=0.2, train=True, seed=0)
    sampler = DurationBatchSampler(dataset.durations(), 1.0, shuffle=True, seed=0)
    loader = make_loader(dataset, sampler, partial(collate, attention_mask=False), "cpu",
                         num_workers=1)
    assert loader.persistent_workers
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)  # the dataset copy in the worker is never told
        crops = {}
        for batch in loader:
            for row, length in zip(batch["input_values"], batch["lengths"]):
                crops[tuple(row[:3].round(decimals=4).tolist())] = True  # where it starts
        epochs.append(set(crops))
    assert epochs[0] != epochs[1] != epochs[2]
    direct = [dataset[(i, 1)]["input_values"] for i in range(len(dataset))]
    assert {tuple(w[:3].round(decimals=4).tolist()) for w in direct} == epochs[1]


def reference_step(model, batch, optimizer, max_grad_norm=1.0):
    """The training step as it was before the step stopped syncing (fp32)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    predictions = model(**{k: v for k, v in batch.items() if k != "labels"})
    loss = ccc_loss(predictions.float(), batch["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if bool(torch.isfinite(loss) and torch.isfinite(grad_norm)):
        optimizer.step()
    return loss.item()


def tone_model():
    torch.manual_seed(0)
    return freeze_feature_encoder(EmotionRegressor(Wav2Vec2Model(small_config()), head_dim=16))


def test_the_step_equals_the_step_before_it_stopped_syncing():
    data = ToneDataset(8)
    batch = collate([data[i] for i in range(8)], attention_mask=False)
    old, new = tone_model(), tone_model()
    old_optimizer, new_optimizer = make_optimizer(old, 1e-3, 0.01), make_optimizer(new, 1e-3, 0.01)
    scaler = make_scaler("fp32", torch.device("cpu"))
    for _ in range(3):  # the same dropout and SpecAugment masks (SpecAugment draws from NumPy)
        seed_everything(1)
        old_loss = reference_step(old, batch, old_optimizer)
        seed_everything(1)
        new_loss, skipped, _ = train_step(new, batch, new_optimizer, scaler, "fp32",
                                       torch.device("cpu"))
        assert float(new_loss) == old_loss and not bool(skipped)
    for (name, a), b in zip(old.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_non_finite_step_is_skipped_and_counted_without_touching_the_weights():
    data = ToneDataset(8)
    batch = collate([data[i] for i in range(8)], attention_mask=False)
    batch["labels"][0, 0] = float("nan")
    model = tone_model()
    optimizer = make_optimizer(model, 1e-3, 0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, skipped, _ = train_step(model, batch, optimizer, make_scaler("fp32", torch.device("cpu")),
                               "fp32", torch.device("cpu"))
    assert bool(skipped) and not torch.isfinite(loss)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
