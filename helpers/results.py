"""What a run measured, as typed records, and how their columns are named and shown.

``Result`` is one training run, ``TimingResult`` one timed training step; both carry the
fingerprint of everything that produced them. ``COLUMNS`` gives every column its display name
(with the unit) once; tables and plots read it through ``label`` and ``readable``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import pandas as pd


@dataclass(kw_only=True)
class Record:
    """What every record shares: what ran, where, how big it is, and what produced it."""

    method: str
    kind: str
    layers_or_rank: int | None
    backbone: str
    family: str = "wav2vec2"          # the backbone's family (records before families: wav2vec2)
    device: str
    precision: str
    tf32: bool
    attention: str                    # the kernel that ran (WavLM: mha, its own)
    pooling: str = "mean"             # how frames became one vector (records before: mean)
    seed: int
    trainable_params: int
    total_params: int
    fingerprint: str
    code_version: str
    torch: str
    python: str
    peak_rss_mib: float | None = None
    peak_allocated_mib: float | None = None
    peak_reserved_mib: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Record":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(kw_only=True)
class Result(Record):
    """One training run: its settings, where the time went, and its scores."""

    mode: str = "train"
    data: str
    config: dict
    lr: float
    num_epochs: int
    max_batch_seconds: float
    world_size: int = 1               # processes; the global batch is world_size x the budget
    seconds_per_epoch: float
    samples_per_second: float
    audio_seconds_per_second: float
    data_wait_seconds: list[float]
    compute_seconds: list[float]
    data_wait_share: float
    train_clips_per_epoch: list[int] = field(default_factory=list)  # all ranks together
    best_epoch: int
    skipped_steps: int
    train_loss: list[float]
    dev_ccc: list[float]
    test_ccc_arousal: float
    test_ccc_valence: float
    test_ccc_dominance: float
    test_ccc_mean: float
    test_predictions: list[list[float]] = field(default_factory=list)
    test_targets: list[list[float]] = field(default_factory=list)
    cache_build_seconds: float | None = None
    cache_bytes: int | None = None


@dataclass(kw_only=True)
class TimingResult(Record):
    """One training step timed on random audio: speed, memory and arithmetic, no training."""

    mode: str = "timing"
    phase: str = "train"              # train step, inference, or inference with merged adapters
    batch_size: int
    clip_seconds: float
    seconds_per_step: float
    step_times: list[float]
    audio_seconds_per_second: float
    flops_per_step: int
    achieved_flops_per_second: float
    attainable_flops_per_second: float
    peak_share: float
    first_losses: list[float] = field(default_factory=list)  # training steps only
    cache_seconds_per_batch: float | None = None
    weights_mib: float | None = None  # the model as it runs (fp32 weights, pruned or merged)
    trained_mib: float | None = None  # what the method changed: all to ship beside the backbone
    operator_seconds: dict[str, float] | None = None  # with --profile: the costliest operators


# what the bench's tables read from each kind of record (``mode``)
TABLE_FIELDS = {
    "train": ("method", "seed", "lr", "trainable_params", "seconds_per_epoch",
              "dev_ccc", "test_ccc_mean", "test_ccc_arousal", "test_ccc_valence",
              "test_ccc_dominance"),
    "timing": ("method", "trainable_params", "seconds_per_step")}


def missing_fields(record: dict) -> list[str]:
    """The fields the bench's tables read that ``record`` lacks (a hand-edited or foreign
    line in a results file)."""
    return [name for name in TABLE_FIELDS.get(record.get("mode", "train"), ())
            if record.get(name) is None]


# column -> display name (unit): the one place tables and figures take their labels from
COLUMNS = {
    "method": "method", "lr": "lr", "seconds_per_epoch": "s/epoch",
    "seconds_per_step": "s/step", "samples_per_second": "clips/s",
    "audio_seconds_per_second": "audio s/s", "data_wait_share": "data wait (share)",
    "peak_rss_mib": "peak RSS (MiB)", "peak_allocated_mib": "peak allocated (MiB)",
    "peak_reserved_mib": "peak reserved (MiB)", "trainable_params": "trainable (M)",
    "cache_build_seconds": "cache build (s)", "cache_bytes": "cache (MiB)",
    "ccc_mean": "CCC (mean)", "ccc_sd": "CCC sd", "ccc": "CCC (mean ± sd)", "seeds": "seeds",
    "ccc_arousal": "arousal", "ccc_valence": "valence", "ccc_dominance": "dominance",
    "test_ccc_mean": "test CCC", "test_ccc_arousal": "test CCC arousal",
    "test_ccc_valence": "test CCC valence", "test_ccc_dominance": "test CCC dominance",
    "time_reduction": "time saved",
    "gflops_per_step": "GFLOP/step", "flop_predicted_reduction": "FLOPs predict",
    "time_over_flop_ratio": "time / FLOP-predicted time",
    "achieved_tflops": "achieved TFLOP/s", "peak_share": "share of peak",
    "weights_mib": "weights (MiB)", "trained_mib": "trained weights (MiB)", "phase": "phase",
}
SCALE = {"trainable_params": 1e-6, "cache_bytes": 2**-20}  # shown in M and MiB


def memory_column(table: pd.DataFrame) -> str | None:
    """The memory figure a table holds: the CUDA allocator's peak, else the CPU's peak RSS."""
    return next((c for c in ("peak_allocated_mib", "peak_rss_mib")
                 if c in table and table[c].notna().any()), None)


def label(column: str) -> str:
    """The display name of a column (the column itself when it has none)."""
    return COLUMNS.get(column, column)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with display names and units, ready to print."""
    table = table.copy()
    for column, factor in SCALE.items():
        if column in table:
            table[column] = (table[column] * factor).round(2)
    if {"ccc_mean", "ccc_sd"} <= set(table.columns):
        spread = table["ccc_sd"].map(lambda sd: "" if pd.isna(sd) else f" ± {sd:.3f}")
        table.insert(table.columns.get_loc("ccc_mean"), "ccc",
                     table["ccc_mean"].map("{:.3f}".format) + spread)
        table = table.drop(columns=["ccc_mean", "ccc_sd"])
    table.index.name = label(table.index.name) if table.index.name else None
    return table.rename(columns=label)

