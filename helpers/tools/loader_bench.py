"""``bench --loader-only``: does the input pipeline keep up with the model?

It measures the audio seconds per second the loader delivers (0, 1, 2 and, with more cores, 4
worker processes) on the bundled corpus and on a longer one made by tiling it (at least 2 h),
next to the audio seconds per second a training step consumes; the data-wait share of a real
CPU epoch; and what duration-budgeted batches do to label spread and padding, against random
batches and the fixed length buckets used before. Writes ``loader.md`` and ``loader.jsonl``.
"""

from __future__ import annotations

import os
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..bundled.pretrain import LengthBucketSampler
from ..config import RunConfig, TimingConfig
from ..constants import SAMPLE_RATE
from ..corpora import load_data
from ..dataset import SpeechDataset, collate, waveform_store
from ..device import cpu_count, cpu_name
from ..files import write_records, write_text
from ..loaders import (DurationBatchSampler, label_spread, make_loader, padding_share,
                       random_batches)
from ..run import run
from ..step_timing import time_method
from ..store import Store, build_store, keyed_store

TILES = 5  # 5 x the bundled 0.62 h: 3.1 h of audio, 2.1 h of it training clips


def tiled(manifest: pd.DataFrame, store: Store, root: Path,
          tiles: int) -> tuple[pd.DataFrame, Store]:
    """A corpus ``tiles`` times as long: every clip repeated under a new name, in a store of
    its own (so the loader reads ``tiles`` times the bytes, not the same pages again)."""
    copies = [manifest.assign(path=manifest["path"] + f"#copy{k}") for k in range(tiles)]
    big = pd.concat(copies, ignore_index=True)
    position = {p: i for i, p in enumerate(store.meta["paths"])}
    items = [position[p.split("#copy")[0]] for p in big["path"]]
    rows = sum(store.lengths[i] for i in items)
    key = f"{store.key}-tiled{tiles}"
    tiled_store = keyed_store(root, f"waveforms-tiled{tiles}", key, lambda path: build_store(
        path, key, (store.item(i) for i in items), rows, None, str(store.data.dtype),
        {"paths": big["path"].tolist()}, desc="tiling", total=len(items)))
    return big, tiled_store


def loader_rate(dataset: SpeechDataset, workers: int, max_batch_seconds: float,
                epochs: int = 2) -> float:
    """Audio seconds per second the loader delivers, in the last of ``epochs`` epochs (the
    first pays for starting the worker processes)."""
    sampler = DurationBatchSampler(dataset.durations(), max_batch_seconds, seed=0)
    loader = make_loader(dataset, sampler, partial(collate, attention_mask=False), "cpu", workers)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start, audio = time.perf_counter(), 0
        for batch in loader:
            audio += int(batch["lengths"].sum())
        seconds = time.perf_counter() - start
    return audio / SAMPLE_RATE / seconds


def model_rates(batch_seconds: float, clip_seconds: float) -> list[dict]:
    """Audio seconds per second one training step consumes, for a few methods and backbones
    (training crops of ``clip_seconds``, as many as the batch budget holds)."""
    rows = []
    for method, backbone in [("full", "tiny"), ("partial(3)", "tiny"),
                             ("full", "random:wav2vec2-base")]:
        timed = time_method(TimingConfig(method=method, backbone=backbone, device="cpu",
                                         batch_size=int(batch_seconds // clip_seconds),
                                         clip_seconds=clip_seconds,
                                         num_steps=3, warmup=1))
        rows.append({"consumer": f"{method} on {backbone}",
                     "audio_seconds_per_second": timed.audio_seconds_per_second,
                     "seconds_per_step": timed.seconds_per_step})
    return rows


def batching_quality(dataset: SpeechDataset, max_batch_seconds: float,
                     epochs: int = 5) -> pd.DataFrame:
    """Label spread within batches, padding, and how much batch composition changes between
    epochs: duration-budgeted batches against random batches of the same sizes and against
    the fixed length buckets used before (batches of 8 clips of similar length)."""
    labels, durations = dataset.labels.numpy(), dataset.durations()
    sampler = DurationBatchSampler(durations, max_batch_seconds, seed=0)
    buckets = LengthBucketSampler(dataset.num_samples(), 8, seed=0)
    plans = {"duration budget (now)": [], "random, same sizes": [],
             "length buckets of 8 (before)": []}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        buckets.set_epoch(epoch)
        plan = sampler.plan()
        plans["duration budget (now)"].append(plan)
        plans["random, same sizes"].append(random_batches(len(durations),
                                                          [len(b) for b in plan], epoch))
        plans["length buckets of 8 (before)"].append(list(buckets))
    rows = []
    for name, epoch_plans in plans.items():
        first, second = ({frozenset(b) for b in p} for p in epoch_plans[:2])
        rows.append({"batching": name,
                     "label spread (sd within batch)": np.mean(
                         [label_spread(p, labels) for p in epoch_plans]),
                     "padding share": np.mean([padding_share(p, durations)
                                               for p in epoch_plans]),
                     "batches repeated next epoch": len(first & second) / len(first),
                     "clips per batch": np.mean([len(b) for p in epoch_plans for b in p])})
    return pd.DataFrame(rows).set_index("batching")


def loader_bench(settings: RunConfig, out_dir: Path) -> None:
    """Measure the loader against the model and write ``loader.md`` and ``loader.jsonl``."""
    root = Path(settings.results_root) / "cache"
    budget = settings.max_batch_seconds
    manifest = load_data(settings.data)
    store = waveform_store(manifest, root)
    corpora = {"bundled": (manifest, store), f"tiled x{TILES}": tiled(manifest, store, root,
                                                                      TILES)}
    workers = [0, 1, 2] + ([4] if cpu_count() >= 4 else [])
    loader_rows = []
    for name, (rows, corpus_store) in corpora.items():
        dataset = SpeechDataset(rows, "train", settings.max_clip_seconds, train=True,
                                store=corpus_store)
        hours = rows["duration"].sum() / 3600
        train_hours = rows.loc[rows["split"] == "train", "duration"].sum() / 3600
        for count in workers:
            rate = loader_rate(dataset, count, budget)
            print(f"loader, {name} ({hours:.2f} h, {train_hours:.2f} h of it training clips), "
                  f"{count} workers: {rate:,.0f} audio s/s", flush=True)
            loader_rows.append({"corpus": name, "corpus hours": round(hours, 2),
                                "training hours": round(train_hours, 2), "workers": count,
                                "audio_seconds_per_second": rate})
    consumers = model_rates(budget, settings.max_clip_seconds)
    epoch = run(settings.with_(method="partial(3)", num_epochs=2, progress=False))
    quality = batching_quality(SpeechDataset(manifest, "train", settings.max_clip_seconds,
                                             train=True), budget)
    write_loader_report(out_dir, pd.DataFrame(loader_rows), pd.DataFrame(consumers), epoch,
                        quality, environment_line())


def write_loader_report(out_dir: Path, loaders: pd.DataFrame, consumers: pd.DataFrame,
                        epoch, quality: pd.DataFrame, machine: str) -> None:
    """The markdown report (and the raw rows as JSON lines)."""
    slowest = loaders["audio_seconds_per_second"].min()
    hungriest = consumers["audio_seconds_per_second"].max()
    wait = epoch.data_wait_share
    text = [
        "# Does the loader keep up? (`python -m helpers bench --loader-only`)", "",
        f"Machine: {machine}.", "",
        "## Audio seconds per second the loader delivers (training crops of at most 4 s)", "",
        loaders.round({"audio_seconds_per_second": 0}).to_markdown(index=False), "",
        "## Audio seconds per second a training step consumes (CPU, 4 s clips)", "",
        consumers.round(3).to_markdown(index=False), "",
        f"The slowest loader setting delivers {slowest:,.0f} audio s/s, "
        f"{slowest / hungriest:,.0f}x what the hungriest training step here consumes "
        f"({hungriest:,.1f} audio s/s).", "",
        "## Where a CPU epoch's time goes (partial(3), bundled backbone and corpus, 2 epochs)",
        "", f"Waiting for data: {wait:.2%} of the epoch time (epoch seconds "
        f"{[round(c + w, 1) for c, w in zip(epoch.compute_seconds, epoch.data_wait_seconds)]}, "
        f"of which waiting {epoch.data_wait_seconds}).", "",
        "## Batches by duration vs random batches vs length buckets (train split, 5 epochs)",
        "", quality.round(3).to_markdown(), "",
        "Label spread is the standard deviation of the labels (0-1 scale) within a batch, "
        "averaged over batches and the three dimensions; a batch-level CCC loss needs it. "
        "Padding share is the share of the padded batch that is zeros.", ""]
    write_text(out_dir / "loader.md", "\n".join(text))
    records = (loaders.assign(kind="loader").to_dict("records") +
               consumers.assign(kind="consumer").to_dict("records") +
               [{"kind": "epoch", "data_wait_share": wait, "machine": machine}])
    write_records(records, out_dir / "loader.jsonl")
    print("\n".join(text))


def environment_line() -> str:
    """The machine a benchmark ran on, for the header of its results file."""
    return (f"{cpu_name()}, {cpu_count()} cores; torch {torch.__version__}; python "
            f"{platform.python_version()}; OMP threads {os.environ.get('OMP_NUM_THREADS', '-')}")
