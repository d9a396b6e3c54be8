"""The set-up every notebook shares: one call that seeds, reports the versions and the device,
loads the data (shrunk in SMOKE mode) and builds the notebook's ``RunConfig``; and the saved
results notebooks reuse ("load the saved result if it exists, else compute it").
"""

from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd
import torch
import transformers

from .backbone import load_backbone
from .checkpoints import seed_everything
from .config import NOTEBOOK_SETTINGS, SMOKE_CLIPS, SMOKE_SETTINGS, RunConfig
from .corpora import load_data
from .device import device_name, resolve_device
from .files import read_records, saved_or_computed
from .fingerprints import backbone_fingerprint
from .manifests import data_fingerprint
from .paths import REFERENCE_DIR, shown
from .probes import layer_probe, prosodic_table
from .results import Result
from .run import run_or_load
from .tables import chosen_learning_rates


def setup_notebook(backbone: str, data: str, device: str | None, seed: int,
          smoke: bool = False) -> tuple[pd.DataFrame, RunConfig]:
    """Set a notebook up from its parameters cell: seed everything, print the versions, the
    device and the clips per split, and return the manifest (``SMOKE_CLIPS`` per split in
    SMOKE mode) and the notebook's ``RunConfig`` (the series' budget: ``NOTEBOOK_SETTINGS``,
    or ``SMOKE_SETTINGS``). Progress bars of model loading are switched off: saved in a
    notebook they would read 0%."""
    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(device or "auto")
    seed_everything(seed)
    print(f"python {platform.python_version()} | torch {torch.__version__} | "
          f"transformers {transformers.__version__}\ndevice: {device} ({device_name(device)}) "
          f"| seed {seed}{' | SMOKE mode' if smoke else ''}")
    manifest = load_data(data)
    if smoke:
        manifest = smoke_subset(manifest, per_split=SMOKE_CLIPS, seed=seed)
    counts = manifest.groupby("split").size()
    print("clips per split: " + ", ".join(f"{split} {count}" for split, count in counts.items()))
    settings = RunConfig(backbone=backbone, data=data, device=device, seed=seed,
                         **(SMOKE_SETTINGS if smoke else NOTEBOOK_SETTINGS))
    return manifest, settings


def smoke_subset(manifest: pd.DataFrame, per_split: int, seed: int = 0) -> pd.DataFrame:
    """At most ``per_split`` clips of each split (for quick test runs of the notebooks)."""
    parts = [rows.sample(min(per_split, len(rows)), random_state=seed)
             for _, rows in manifest.groupby("split")]
    return pd.concat(parts).reset_index(drop=True)


def saved_dir() -> Path:
    """Where notebooks save what they compute, under the results root."""
    return Path(RunConfig().results_root) / "saved"


def saved(name: str, compute, **inputs):
    """The saved value of ``name`` for exactly these ``inputs`` and this code, else
    ``compute()``'s, saved for next time (see ``files.saved_or_computed``). Pass as ``inputs``
    everything the value depends on (``data=data_fingerprint(manifest)``, the backbone,
    settings): a change in any of them computes afresh."""
    return saved_or_computed(saved_dir(), name, compute, **inputs)


def saved_prosodic_features(manifest: pd.DataFrame) -> pd.DataFrame:
    """``prosodic_table`` of ``manifest``, saved once and shared by every notebook that uses it."""
    return pd.DataFrame(saved(
        "prosodic_table", lambda: prosodic_table(manifest).to_dict(orient="list"),
        data=data_fingerprint(manifest)), index=manifest.index)


def saved_layer_probe(spec: str, manifest: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    """``layer_probe`` of backbone ``spec`` on ``manifest``, saved once and shared by every
    notebook that probes the same weights, data and pooling."""
    return pd.DataFrame(saved(
        "layer_probe", lambda: layer_probe(load_backbone(spec), manifest, pooling)
        .to_dict(orient="list"), backbone=spec, weights=backbone_fingerprint(spec),
        data=data_fingerprint(manifest), pooling=pooling))


def train(method: str, settings: RunConfig, manifest: pd.DataFrame,
          lr: float | None = None) -> Result:
    """Train ``method`` with the notebook's ``settings`` on ``manifest``, at ``lr`` or else at
    the learning rate the bench chose for it on dev; or load the saved result of exactly this
    run (see ``run_or_load``)."""
    config = settings.with_(method=method, progress=False,
                            lr=lr or bench_learning_rate(method, settings.backbone))
    return run_or_load(config, manifest)


def reference_results(stem: str, quiet: bool = False) -> pd.DataFrame:
    """A results table from ``make bench``: this machine's run if there is one, else the
    reference copy shipped in ``results/reference/`` (says which, unless ``quiet``)."""
    local = Path(RunConfig().results_root) / f"{stem}.jsonl"
    path = local if local.is_file() else REFERENCE_DIR / f"{stem}.jsonl"
    if not quiet:
        print(f"results from {shown(path)}")
    return pd.DataFrame(read_records(path))


def relative_paths(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its audio paths shown relative to the project (no machine's folders)."""
    return table.assign(path=table["path"].map(shown))


def bench_learning_rate(method: str, backbone: str = "tiny",
                        default: float = RunConfig.lr) -> float:
    """The peak learning rate ``make bench`` chose for ``method`` on dev with ``backbone``, or
    ``default`` (the series' default rate) for a method the bench did not run on it. A backbone
    the bench never trained is refused with the rates to try: a rate chosen for the bundled
    5 M model is no guide for a 95 M pretrained one."""
    bench = reference_results("bench", quiet=True)
    trained = bench[bench["backbone"] == backbone]
    if trained.empty:
        raise ValueError(
            f"LR = None takes the rate the bench chose on dev, and the bench never trained "
            f"{backbone}. Set LR in the parameters cell: for a pretrained base or large model "
            "start from 5e-5 for full finetuning and 2e-4 for partial, LoRA, cached and the "
            "adapter methods (docs/gpu.md); or let the bench choose on dev: python -m helpers "
            f"bench --backbone {backbone} --methods \"{method}\" --lrs 2e-5,5e-5,1e-4,2e-4")
    chosen = chosen_learning_rates(trained, [method])
    if method not in chosen:
        print(f"the bench did not run {method}: lr {default:g}")
    return chosen.get(method, default)


GPU_REFERENCE = "gpu-h200-2026-12-04"  # gpu-check on one H200 (see its README)


def gpu_timings() -> pd.DataFrame:
    """Timings measured on a GPU: this machine's ``make gpu-check`` if it ran, else the
    reference run shipped in ``results/reference/``; says which card, when and on which code
    version they were measured."""
    local = sorted(Path(RunConfig().results_root).glob("gpu/*/gpu-check.jsonl"))
    paths = local[-1:] or sorted((REFERENCE_DIR / GPU_REFERENCE).glob("*.jsonl"))
    table = pd.DataFrame([r for path in paths for r in read_records(path)])
    table = table[table["step"] == "timing"].assign(phase=lambda t: t["phase"].fillna("train"))
    dated = f", {GPU_REFERENCE[-10:]}" if not local else ""
    print(f"GPU timings from {shown(paths[0].parent)}: {table['device'].iloc[0]}{dated}, code "
          f"version {', '.join(table['code_version'].unique())}, torch {table['torch'].iloc[0]}")
    return table


def measured_steps() -> pd.DataFrame:
    """Every timed training step on record: the CPU timing grids shipped in
    ``results/reference/`` and this machine's, and the GPU's (``gpu_timings``)."""
    local = Path(RunConfig().results_root)
    paths = [*REFERENCE_DIR.glob("timing-*.jsonl"), *REFERENCE_DIR.glob("cpu-*/timing-*.jsonl"),
             *local.glob("timing-*.jsonl")]
    cpu = pd.DataFrame([r for path in paths for r in read_records(path)])
    return pd.concat([cpu, gpu_timings()], ignore_index=True)
