"""One home for a run's settings (``RunConfig``) and the fingerprints that key its results.

Every default of a run lives here and nowhere else: the command line, ``bench``, ``run()`` and
the notebooks all build a ``RunConfig``. A result is saved under the fingerprint of the
settings that change it, the data it was made on, the backbone's files and the code, so a
result is reused only for exactly the inputs that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
SAMPLE_DIR = PROJECT_ROOT / "data_sample"
LEARNING_RATES = (1e-4, 2e-4, 5e-4, 1e-3)  # the bench chooses each method's rate among these

# settings that change how a run goes, not what it computes: left out of its fingerprint
NOT_IN_FINGERPRINT = ("num_workers", "log_every", "progress", "results_root",
                      "checkpoint_dir", "resume")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one training run, each with its one default."""

    method: str = "full"              # full, partial(3), lora(16), cached(3)+bf16, ... (methods.py)
    backbone: str = "tiny"            # tiny, a Hub id, a folder, random:wav2vec2-base|large
    data: str = "bundled"             # bundled, msp:/path, iemocap:/path or a manifest CSV
    device: str = "auto"              # auto: CUDA when available, else the CPU
    attention: str = "sdpa"           # sdpa (fused kernel) or eager (for checks)
    num_epochs: int = 6
    lr: float = 5e-4                  # peak AdamW learning rate (warm-up, then linear decay)
    max_batch_seconds: float = 32.0   # audio per batch, padding included (8 clips of 4 s)
    max_clip_seconds: float = 4.0     # training crops a random window this long
    seed: int = 0
    verify_audio: bool = False        # key stores by a hash of each audio file, not size+time
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1         # share of the steps spent warming the rate up
    max_grad_norm: float = 1.0
    patience: int | None = None       # epochs without a better dev CCC before stopping
    timing_skip_epochs: int = 1       # first epochs left out of the median seconds per epoch
    num_workers: int | None = None    # loader processes; None: chosen for the device
    log_every: int = 50               # steps between reading the loss back from the device
    progress: bool = True
    results_root: str = "results"     # results, caches and waveform stores go under it
    checkpoint_dir: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)!r} must be {rule}" for name, rule, ok in [
            ("num_epochs", "at least 1", self.num_epochs >= 1),
            ("lr", "a positive finite number", 0 < self.lr < float("inf")),
            ("max_batch_seconds", "positive", self.max_batch_seconds > 0),
            ("max_clip_seconds", "positive", self.max_clip_seconds > 0),
            ("seed", "0 or more", self.seed >= 0),
            ("num_workers", "None or 0 or more", self.num_workers is None or
             self.num_workers >= 0),
            ("log_every", "at least 1", self.log_every >= 1),
            ("patience", "None or at least 1", self.patience is None or self.patience >= 1),
        ] if not ok]
        if problems:
            raise ValueError("RunConfig: " + "; ".join(problems))

    def resolved(self) -> "RunConfig":
        """The same settings with ``device="auto"`` replaced by the device it picks."""
        return replace(self, device=resolve_device(self.device))

    def with_(self, **changes) -> "RunConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"RunConfig has no settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def fingerprint(self, data: str, backbone: str | None = None,
                    world_size: int = 1) -> str:
        """The key of a result of this run on data with fingerprint ``data`` (in
        ``world_size`` processes: the global batch is that many times the batch)."""
        from .timing import device_name

        resolved = self.resolved()
        settings = {k: v for k, v in resolved.to_dict().items() if k not in NOT_IN_FINGERPRINT}
        return digest(json.dumps({"settings": settings, "data": data, "code": code_version(),
                                  "backbone": backbone or backbone_fingerprint(self.backbone),
                                  "world_size": world_size,  # timings are of this hardware
                                  "hardware": device_name(resolved.device)}, sort_keys=True))


def timing_fingerprint(**settings) -> str:
    """The key of a timing record (``time_method``): its settings and the code."""
    return digest(json.dumps({**settings, "code": code_version()}, sort_keys=True))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; a CUDA device that is not
    there is refused with what to do."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no usable CUDA GPU (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         "visible GPU(s), numbered from 0")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
    return device


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def code_version() -> str:
    """A hash of the helpers' source: a result made by other code is not reused."""
    sources = sorted(p for p in PACKAGE_DIR.rglob("*.py") if "bundled" not in p.parts)
    return digest(b"".join(p.read_bytes() for p in sources))[:16]


def file_stamp(path: str | Path, content: bool = False) -> list:
    """A file's identity: size and modification time, or (``content=True``) a hash of its
    bytes, which also catches a file rewritten with its size and time restored."""
    path = Path(path)
    if content:
        return [str(path), digest(path.read_bytes())]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def backbone_fingerprint(spec: str) -> str:
    """A Hub id or preset is its name; a local folder (``tiny`` included) is its files."""
    from .backbone import BUNDLED_BACKBONE

    folder = BUNDLED_BACKBONE if spec == "tiny" else Path(spec)
    if not folder.is_dir():
        return spec
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    return digest(json.dumps([file_stamp(p)[1:] + [p.name] for p in files]))


def cpu_count() -> int:
    """Cores this process may use (its affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
