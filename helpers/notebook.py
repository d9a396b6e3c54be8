"""Small conveniences shared by every notebook: the environment report, choosing the data,
shrinking it for smoke tests, and "load the saved result if it exists, else compute it".
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from .config import RunConfig, backbone_fingerprint, code_version, digest, resolve_device
from .data import PROJECT_ROOT, data_fingerprint
from .data import load_data  # noqa: F401  (notebooks import it from here)
from .experiments import run_or_load, shown
from .results import Result
from .tables import chosen_learning_rates
from .timing import device_name
from .train import seed_everything

REFERENCE_DIR = PROJECT_ROOT / "results" / "reference"


def results_dir() -> Path:
    """Where notebooks save what they measure (``RESULTS_DIR`` overrides ``results/``)."""
    folder = Path(os.environ.get("RESULTS_DIR", PROJECT_ROOT / "results"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def setup(seed: int = 0, device: str | None = None) -> str:
    """Seed everything, print versions and the device; returns the device to use. Progress
    bars of model loading are switched off: saved in a notebook they would read 0%."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    device = resolve_device(device or "auto")
    seed_everything(seed)
    hardware = device_name(device)
    print(f"python {platform.python_version()} | torch {torch.__version__} | "
          f"transformers {transformers.__version__}\ndevice: {device} ({hardware}) | seed {seed}")
    return device


def smoke_subset(manifest: pd.DataFrame, per_split: int, seed: int = 0) -> pd.DataFrame:
    """At most ``per_split`` clips of each split (for quick test runs of the notebooks)."""
    parts = [rows.sample(min(per_split, len(rows)), random_state=seed)
             for _, rows in manifest.groupby("split")]
    return pd.concat(parts).reset_index(drop=True)


def saved_or_computed(name: str, compute: Callable[[], object], **inputs):
    """Load the saved value of ``name`` for exactly these ``inputs`` (with the helpers' code
    version) if a previous run saved one; else compute, save and return it.

    Pass as ``inputs`` everything the value depends on (``data=data_fingerprint(manifest)``,
    the backbone, settings): a change in any of them computes afresh. Delete the file to
    measure again.
    """
    key = digest(json.dumps({**inputs, "code": code_version()}, sort_keys=True, default=str))
    path = results_dir() / "saved" / f"{name}-{key[:16]}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"loaded the saved {name} (delete {shown(path)} to recompute)")
            return saved["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "inputs": inputs, "value": value}, default=float))
    return value


def saved_prosodic_features(manifest: pd.DataFrame) -> pd.DataFrame:
    """``prosodic_table`` of ``manifest``, saved once and shared by every notebook that uses it
    (see ``saved_or_computed``)."""
    from .bundled.baselines import prosodic_table

    return pd.DataFrame(saved_or_computed(
        "prosodic_table", lambda: prosodic_table(manifest).to_dict(orient="list"),
        data=data_fingerprint(manifest)), index=manifest.index)


def saved_layer_probe(spec: str, manifest: pd.DataFrame, pooling: str = "mean") -> pd.DataFrame:
    """``layer_probe`` of backbone ``spec`` on ``manifest``, saved once and shared by every
    notebook that probes the same weights, data and pooling (see ``saved_or_computed``)."""
    from .backbone import load_backbone
    from .bundled.baselines import layer_probe

    return pd.DataFrame(saved_or_computed(
        "layer_probe", lambda: layer_probe(load_backbone(spec), manifest, pooling)
        .to_dict(orient="list"), backbone=spec, weights=backbone_fingerprint(spec),
        data=data_fingerprint(manifest), pooling=pooling))


def train(method: str, settings: RunConfig, manifest: pd.DataFrame,
          lr: float | None = None) -> Result:
    """Train ``method`` with the notebook's ``settings`` on ``manifest``, at ``lr`` or else at
    the learning rate the bench chose for it on dev; or load the saved result of exactly this
    run (see ``run_or_load``)."""
    config = settings.with_(method=method, lr=lr or bench_learning_rate(method), progress=False)
    return run_or_load(config, manifest)


def reference_results(stem: str, quiet: bool = False) -> pd.DataFrame:
    """A results table from ``make bench``: this machine's run if there is one, else the
    reference copy shipped in ``results/reference/`` (says which, unless ``quiet``)."""
    local = results_dir() / f"{stem}.jsonl"
    path = local if local.is_file() else REFERENCE_DIR / f"{stem}.jsonl"
    if not quiet:
        print(f"results from {shown(path)}")
    return pd.read_json(path, lines=True)


def relative_paths(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its audio paths shown relative to the project (no machine's folders)."""
    return table.assign(path=table["path"].map(lambda p: shown(Path(p))))


def bench_learning_rate(method: str, default: float = 5e-4) -> float:
    """The peak learning rate ``make bench`` chose for ``method`` on dev, or ``default`` for
    a method the bench did not run."""
    chosen = chosen_learning_rates(reference_results("bench", quiet=True), [method])
    if method not in chosen:
        print(f"the bench did not run {method}: lr {default:g}")
    return chosen.get(method, default)


NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def series() -> list[Path]:
    """The notebooks in reading order (numbered ones first, then the appendices, then the
    exercise solutions)."""
    return (sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb")) + sorted(NOTEBOOK_DIR.glob("appendix*.ipynb"))
            + sorted(NOTEBOOK_DIR.glob("solutions/*.ipynb")))


def execute(source: Path, target: Path | None = None, timeout: int = 1200,
            env: dict[str, str] | None = None):
    """Run a notebook top to bottom in a fresh kernel (a failing cell raises) and write the
    executed copy to ``target``. ``env`` is added to the kernel's environment."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    notebook.metadata.pop("widgets", None)  # widget state of an earlier run would linger
    previous = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       # the kernel's own log would fill the log of every run: start-up
                       # warnings, and the "KeyboardInterrupt caught" line when the shutdown's
                       # interrupt lands in a message handler (a failing cell still raises)
                       extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                       resources={"metadata": {"path": str(source.parent)}}).execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
    return notebook
