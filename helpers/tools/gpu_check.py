"""``python -m helpers gpu-check``: one command that proves the GPU path on any CUDA machine.

In about 8 minutes it times training steps of random wav2vec2-base and -large at two batch
sizes (fp32, +tf32, +bf16, +fp16, +compile) with each method's share of the attainable peak,
the parameter-efficient methods on wav2vec2-base and the HuBERT and WavLM families at 32 clips,
trains three methods briefly on the bundled corpus on the GPU while sampling its utilisation
(and the data-wait share of each epoch), runs one training under ``torchrun`` (one process,
NCCL), and executes every notebook in SMOKE mode on CUDA. It writes ``results/gpu/<device>/``:
``gpu-check.jsonl`` and ``summary.md``, ready for the README. A step that cannot run (a package
missing, a failure) is reported and the others go on. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from ..config import RunConfig, TimingConfig
from ..files import append_record, write_text
from ..paths import PROJECT_ROOT
from ..run import run
from ..step_timing import time_method
from .run_notebooks import execute, series

# step -> the packages it needs beyond torch, transformers and peft
NEEDS = {"timing": [], "bundled": ["soundfile", "pandas"], "torchrun": ["soundfile", "pandas"],
         "notebooks": ["soundfile", "pandas", "nbclient", "nbformat", "ipykernel", "matplotlib",
                       "seaborn", "ipywidgets", "tabulate"]}
STUDY = ["full+bf16", "partial(3)+bf16", "cached(3)+bf16"]
TIMING = [  # (backbone, batch sizes, methods), in order of importance (a run cut short
    # by a time limit keeps what came first): each method timed at each batch size
    ("random:wav2vec2-base", (8, 32), ["full", "full+tf32", "full+fp16", *STUDY]),
    ("random:hubert-base", (32,), [*STUDY, "lora(16)+bf16"]),
    ("random:wavlm-base-plus", (32,), [*STUDY, "lora-ffn(16)+bf16"]),
    ("random:wav2vec2-base", (32,), ["lora(16)+bf16", "lora-ffn(16)+bf16", "lora-all(16)+bf16",
                                     "dora(16)+bf16", "ia3+bf16", "bitfit+bf16",
                                     "adapter(64)+bf16", "weighted-sum+bf16",
                                     "prune(9)+partial(3)+bf16", "prune(9)+cached(3)+bf16"]),
    ("random:wav2vec2-large", (32,), STUDY),
    ("random:hubert-large", (32,), STUDY),
    ("random:wavlm-large", (32,), STUDY),
    ("random:wav2vec2-base", (32,), ["full+bf16+compile", "partial(3)+bf16+compile",
                                     "cached(3)+bf16+compile"]),
]
INFERENCE = [  # (backbone, batch size, phase, methods): the finetuned model's forward pass
    ("random:wav2vec2-base", 32, "inference", ["full+bf16", "lora(16)+bf16", "dora(16)+bf16",
                                               "weighted-sum+bf16", "prune(9)+partial(3)+bf16"]),
    ("random:wav2vec2-base", 32, "merged", ["lora(16)+bf16", "dora(16)+bf16"]),
    ("random:wavlm-base-plus", 32, "inference", ["full+bf16"]),
]
CLIP_SECONDS = 6.0
BUNDLED_METHODS = ["full+bf16", "partial(3)+bf16", "cached(3)+bf16"]


def missing(packages: list[str]) -> list[str]:
    return [name for name in packages if importlib.util.find_spec(name) is None]


def device_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def pinned(names: list[str]) -> str:
    """``pip install`` arguments for ``names`` at the versions requirements.txt pins."""
    pins = {}
    requirements = PROJECT_ROOT / "requirements.txt"
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            if "==" in line:
                name, version = line.split("==")
                pins[name.strip().lower()] = version.strip()
    return " ".join(f"{n}=={pins[n]}" if n in pins else n for n in names)


class Utilisation:
    """Samples the GPU's utilisation (nvidia-smi, twice a second) while a block runs."""

    def __init__(self):
        self.gpu = f"GPU-{torch.cuda.get_device_properties(0).uuid}"  # the one torch uses
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits", "-i", self.gpu],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def __enter__(self) -> "Utilisation":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=6)

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def timing_configs() -> list[TimingConfig]:
    """Every timing gpu-check takes, in order: the training steps, then the inference."""
    common = dict(device="cuda", clip_seconds=CLIP_SECONDS, num_steps=10, warmup=3)
    configs = [TimingConfig(method=method, backbone=backbone, batch_size=batch_size, **common)
               for backbone, batch_sizes, methods in TIMING for batch_size in batch_sizes
               for method in methods]
    return configs + [TimingConfig(method=method, backbone=backbone, batch_size=batch_size,
                                   phase=phase, **common)
                      for backbone, batch_size, phase, methods in INFERENCE
                      for method in methods]


def timing_step(record) -> list[dict]:
    """Time each configuration; one that fails is recorded with its error and the rest go on."""
    rows = []
    for config in timing_configs():
        try:
            rows.append(record({"step": "timing", **time_method(config).to_dict()}))
        except Exception as error:  # e.g. out of memory: say which, keep the others
            print(f"gpu-check: timing {config.method} on {config.backbone} failed: "
                  f"{type(error).__name__}: {error}", flush=True)
            record({"step": "timing-failed", "method": config.method,
                    "backbone": config.backbone, "error": f"{type(error).__name__}: {error}"})
        torch.cuda.empty_cache()
    return rows


def bundled_step(record, out: Path) -> list[dict]:
    rows = []
    for method in BUNDLED_METHODS:
        config = RunConfig(method=method, device="cuda", num_epochs=2,
                           results_root=str(out / "work"), progress=False)
        with Utilisation() as gpu:
            result = run(config)
        rows.append(record({"step": "bundled", **result.to_dict(),
                            "gpu_utilisation_mean": gpu.mean}))
    return rows


def torchrun_step(record, out: Path) -> list[dict]:
    """partial(3), one epoch, under torchrun with one process (NCCL)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "1", "-m", "helpers", "train", "--method", "partial(3)+bf16",
               "--device", "cuda", "--num-epochs", "1", "--results-root", str(out / "work"),
               "--no-progress", "--out", str(out / "torchrun.json")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if finished.returncode != 0:
        raise RuntimeError(f"torchrun exited {finished.returncode}: "
                           f"{finished.stderr.strip().splitlines()[-1:]}")
    result = json.loads((out / "torchrun.json").read_text())
    return [record({"step": "torchrun", **result})]


def notebooks_step(record, out: Path) -> list[dict]:
    rows = []
    for notebook in series():
        start = time.perf_counter()
        execute(notebook, timeout=600, env={"SMOKE": "1", "DEVICE": "cuda",
                                            "RESULTS_DIR": str(out / "work"),
                                            "MPLBACKEND": "Agg"})
        rows.append(record({"step": "notebooks", "notebook": notebook.stem,
                            "seconds": time.perf_counter() - start}))
    return rows


def gpu_check(out_dir: Path, chosen: list[str]) -> int:
    """Run every ``chosen`` step that can run here; return the exit status (1 if a step
    failed)."""
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}); nothing to check. "
              "Run `make gpu-check` on a machine with an NVIDIA GPU.")
        return 0
    name = torch.cuda.get_device_name(0)
    out = Path(out_dir) / device_slug(name)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu-check.jsonl"
    log.unlink(missing_ok=True)

    def record(row: dict) -> dict:
        append_record(row, log)
        return row

    steps = {"timing": lambda: timing_step(record),
             "bundled": lambda: bundled_step(record, out),
             "torchrun": lambda: torchrun_step(record, out),
             "notebooks": lambda: notebooks_step(record, out)}
    outcomes, rows = {}, []
    for step, function in steps.items():
        if step not in chosen:
            continue
        absent = missing(NEEDS[step])
        if absent:
            outcomes[step] = (f"skipped: missing {', '.join(absent)} (add them with "
                              f"`pip install {pinned(absent)}`)")
            print(f"gpu-check: {step} {outcomes[step]}")
            continue
        start = time.perf_counter()
        try:
            rows += function()
            outcomes[step] = f"ok ({time.perf_counter() - start:.0f} s)"
        except Exception as error:  # report and go on with the next step
            outcomes[step] = f"FAILED: {type(error).__name__}: {error}"
        print(f"gpu-check: {step} {outcomes[step]}", flush=True)
    write_text(out / "summary.md", summary_markdown(name, rows, outcomes))
    print(f"gpu-check: results in {out}/")
    return 1 if any(o.startswith("FAILED") for o in outcomes.values()) else 0


def summary_markdown(device: str, rows: list[dict], outcomes: dict[str, str]) -> str:
    """The README-ready summary: per backbone and batch size, each method's time per step,
    the time it saves against full fp32 and full+bf16, and its share of the attainable peak;
    then the bundled-corpus runs and the steps' outcomes."""
    lines = [f"# gpu-check on {device} (torch {torch.__version__})", ""]
    timing = pd.DataFrame([r for r in rows if r.get("step") == "timing"])
    if len(timing):
        timing["phase"] = timing["phase"].fillna("train") if "phase" in timing else "train"
    for (backbone, batch, phase), group in (
            timing.groupby(["backbone", "batch_size", "phase"], sort=False)
            if len(timing) else []):
        table = group.set_index("method")
        seconds = table["seconds_per_step"]
        shown = pd.DataFrame({
            "attention": table.get("attention", pd.Series(dtype=str)),
            "ms/step": (seconds * 1e3).round(1),
            "audio s/s": table["audio_seconds_per_second"].round(0),
            "less time than full": (1 - seconds / seconds.get("full", float("nan"))).round(3),
            "less time than full+bf16": (1 - seconds / seconds.get("full+bf16",
                                                                   float("nan"))).round(3),
            "TFLOP/s": (table["achieved_flops_per_second"] / 1e12).round(1),
            "share of peak": table["peak_share"].round(3),
            "peak allocated (MiB)": table["peak_allocated_mib"].round(0),
            "weights (MiB)": table.get("weights_mib", pd.Series(dtype=float)).round(0)})
        title = "training step" if phase == "train" else f"{phase} forward pass"
        lines += [f"## {backbone}, {batch} x {CLIP_SECONDS:g} s, {title}", "",
                  shown.to_markdown(), ""]
    bundled = [r for r in rows if r.get("step") in ("bundled", "torchrun")]
    if bundled:
        table = pd.DataFrame([{"step": r["step"], "method": r["method"],
                               "s/epoch": round(r["seconds_per_epoch"], 2),
                               "data wait (share)": round(r["data_wait_share"], 3),
                               "GPU utilisation (%)": r.get("gpu_utilisation_mean"),
                               "test CCC": round(r["test_ccc_mean"], 3)} for r in bundled])
        lines += ["## Bundled corpus on the GPU (2 epochs)", "", table.to_markdown(index=False),
                  ""]
    lines += ["## Steps", ""] + [f"- {step}: {outcome}" for step, outcome in outcomes.items()]
    return "\n".join(lines) + "\n"
