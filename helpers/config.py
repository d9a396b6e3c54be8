"""One home for every setting: ``RunConfig`` (a training run), ``TimingConfig`` (a timed
training step) and ``BenchGrid`` (what ``bench`` sweeps).

Each default is written here once; the command line is generated from these dataclasses (same
names: ``--num-epochs``, ``--max-batch-seconds``), and ``bench``, ``run()`` and the notebooks
build them. Each field's ``help`` is what ``--help`` shows. Imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .paths import default_results_root

POOLING_NAMES = ("mean", "attentive")
PHASES = ("train", "inference", "merged")  # what a timing measures  # model.POOLINGS builds them
LEARNING_RATES = (1e-4, 2e-4, 5e-4, 1e-3)  # the bench chooses each method's rate among these
# the notebooks' budget: 2 epochs of the bundled corpus (SMOKE mode: 1 epoch of 1 s crops)
NOTEBOOK_SETTINGS = {"num_epochs": 2}
SMOKE_SETTINGS = {"num_epochs": 1, "max_batch_seconds": 16.0, "max_clip_seconds": 1.0}
SMOKE_CLIPS = 4  # clips per split in SMOKE mode

# settings that change how a run goes, not what it computes: left out of its fingerprint
NOT_IN_FINGERPRINT = ("num_workers", "log_every", "progress", "results_root",
                      "checkpoint_dir", "resume")


def setting(default=None, help: str = "", **kwargs):
    """A dataclass field with its ``--help`` text (read by the generated command line)."""
    if "default_factory" in kwargs:
        return field(metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


class Settings:
    """What every settings dataclass can do: copy with changes, go to and from a dict."""

    def with_(self, **changes):
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def check(self, rules: list[tuple[str, str, bool]]) -> None:
        """Refuse the settings whose rule does not hold, each named with what it must be."""
        problems = [f"{name}={getattr(self, name)!r} must be {rule}" for name, rule, ok in rules
                    if not ok]
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


@dataclass(frozen=True)
class RunConfig(Settings):
    """Every setting of one training run, each with its one default."""

    method: str = setting("full", "full, full+cnn, partial(3), lora(16), cached(3), "
                          "weighted-sum, lora-ffn(16), dora(16), ia3, bitfit, adapter(32), "
                          "prune(9)+partial(3); +bf16/+fp16/+auto/+tf32/+compile (see "
                          "methods.py)")
    backbone: str = setting("tiny", "tiny (bundled), a Hub id, a folder, or a preset such as "
                            "random:wav2vec2-base")
    data: str = setting("bundled", "bundled, msp:/path, iemocap:/path or a manifest CSV")
    device: str = setting("auto", "auto (CUDA when available, else the CPU), cpu, cuda, cuda:N")
    attention: str = setting("sdpa", "sdpa (fused kernel) or eager (for checks); WavLM runs "
                             "its own")
    pooling: str = setting("mean", "how frames become one vector: mean, or attentive "
                           "(attentive statistics pooling, trained with the head)")
    num_epochs: int = setting(6, "passes over the training clips")
    lr: float = setting(5e-4, "peak AdamW learning rate (warm-up, then linear decay)")
    max_batch_seconds: float = setting(32.0, "audio per batch, padding included (8 clips of "
                                       "4 s)")
    max_clip_seconds: float = setting(4.0, "training crops a random window this long; "
                                      "evaluation the centre window")
    seed: int = setting(0, "seed of the weights' initialisation, crops and batch order")
    verify_audio: bool = setting(False, "key stores and results by a hash of every audio file "
                                 "(slower; catches files rewritten with size and time kept)")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    warmup_ratio: float = setting(0.1, "share of the steps spent warming the rate up")
    max_grad_norm: float = setting(1.0, "gradients are clipped to this norm")
    patience: int | None = setting(None, "epochs without a better dev CCC before stopping "
                                   "(default: never stop early)")
    timing_skip_epochs: int = setting(1, "first epochs left out of the median seconds per "
                                      "epoch")
    num_workers: int | None = setting(None, "loader processes (default: chosen for the device)")
    log_every: int = setting(50, "steps between reading the loss back from the device")
    progress: bool = setting(True, "show progress bars")
    results_root: str = setting(help="results, caches and waveform stores go under it "
                                "(default: $RESULTS_DIR, else results/)",
                                default_factory=default_results_root)
    checkpoint_dir: str | None = setting(None, "write a checkpoint there after every epoch")
    resume: bool = setting(False, "go on from the checkpoint (train) or keep the finished runs "
                           "of the same fingerprint (bench)")

    def __post_init__(self) -> None:
        self.check([
            ("num_epochs", "at least 1", self.num_epochs >= 1),
            ("pooling", f"one of {POOLING_NAMES}", self.pooling in POOLING_NAMES),
            ("lr", "a positive finite number", finite(self.lr) and self.lr > 0),
            ("max_batch_seconds", "positive", self.max_batch_seconds > 0),
            ("max_clip_seconds", "at least 0.1 (the shortest clip the CNN takes)",
             self.max_clip_seconds >= 0.1),
            ("seed", "0 or more", self.seed >= 0),
            ("weight_decay", "0 or more", self.weight_decay >= 0),
            ("warmup_ratio", "in [0, 1)", 0 <= self.warmup_ratio < 1),
            ("max_grad_norm", "positive (it bounds the length of every update)",
             finite(self.max_grad_norm) and self.max_grad_norm > 0),
            ("timing_skip_epochs", "0 or more", self.timing_skip_epochs >= 0),
            ("num_workers", "None or 0 or more", self.num_workers is None or
             self.num_workers >= 0),
            ("log_every", "at least 1", self.log_every >= 1),
            ("patience", "None or at least 1", self.patience is None or self.patience >= 1),
        ])


@dataclass(frozen=True)
class TimingConfig(Settings):
    """Every setting of a timed training step (``time_method``): speed, memory and FLOPs on a
    batch of random audio, no convergence."""

    method: str = setting("full", "the method whose training step (or inference) is timed")
    phase: str = setting("train", "train: one training step; inference: the finetuned model's "
                         "forward pass (eval, no gradients; a cached method runs its prefix "
                         "live); merged: the same with adapters merged into the weights")
    backbone: str = setting("random:wav2vec2-base", "random weights are enough for timing")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    attention: str = setting("sdpa", "sdpa or eager")
    pooling: str = setting("mean", "mean or attentive")
    batch_size: int = setting(2, "clips per timed step")
    clip_seconds: float = setting(3.0, "length of each clip")
    num_steps: int = setting(5, "timed steps (the median is reported)")
    warmup: int = setting(2, "untimed steps first (allocator growth, kernel selection)")
    seed: int = setting(0, "seed of the weights and the random batch")
    profile: bool = setting(False, "then run 2 more steps under torch.profiler and record the "
                            "costliest operators' own seconds per step (where the time goes)")

    def __post_init__(self) -> None:
        self.check([("batch_size", "at least 1", self.batch_size >= 1),
                    ("phase", f"one of {PHASES}", self.phase in PHASES),
                    ("pooling", f"one of {POOLING_NAMES}", self.pooling in POOLING_NAMES),
                    ("clip_seconds", "positive", self.clip_seconds > 0),
                    ("num_steps", "at least 1", self.num_steps >= 1),
                    ("warmup", "0 or more", self.warmup >= 0),
                    ("seed", "0 or more", self.seed >= 0)])


@dataclass(frozen=True)
class BenchGrid(Settings):
    """What ``bench`` sweeps: methods, learning rates, seeds, rounds, and runs at once."""

    methods: str = setting("", "comma-separated, e.g. full,partial(3),cached(3) (default: the "
                           "series' grid)")
    lrs: str = setting(",".join(f"{rate:g}" for rate in LEARNING_RATES),
                       "peak learning rates to choose from on dev, per method; give one to "
                       "train every method at it without a search")
    seeds: int = setting(3, "seeds per method at its chosen learning rate")
    repeats: int = setting(3, "with --timing-only: rounds over the grid (median per method)")
    jobs: int = setting(1, "runs at once, sharing the CPU cores (timings are then per share; "
                        "use 1 for timing)")
    timing_only: bool = setting(False, "time a few training steps per method instead of "
                                "training")
    loader_only: bool = setting(False, "measure the input pipeline against the model")

    def __post_init__(self) -> None:
        self.check([("seeds", "at least 1", self.seeds >= 1),
                    ("repeats", "at least 1", self.repeats >= 1),
                    ("jobs", "at least 1", self.jobs >= 1),
                    ("lrs", "comma-separated positive numbers", lr_list_ok(self.lrs))])

    @property
    def learning_rates(self) -> list[float]:
        return [float(rate) for rate in self.lrs.split(",")]

    @property
    def method_names(self) -> list[str]:
        return [name.strip() for name in self.methods.split(",") if name.strip()]


def lr_list_ok(text: str) -> bool:
    try:
        return all(finite(float(rate)) and float(rate) > 0 for rate in text.split(","))
    except ValueError:
        return False
