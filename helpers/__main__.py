"""Command line of the series: ``python -m helpers --help``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from .bundled.recipe import RECIPE
from .config import LEARNING_RATES, SAMPLE_DIR, RunConfig

RESULTS_DIR = Path("results")


def bench_command(args: argparse.Namespace) -> None:
    """Run the grid, each run in its own process; write JSON lines, a summary and a figure.

    Training first chooses each method's learning rate on dev: one run per rate in --lrs
    (seed 0), best dev CCC wins; mixed-precision variants take their fp32 method's rate. Then
    every method trains with --seeds seeds at its rate (the seed-0 search run is reused).
    """
    from .bench import bench

    bench(args)


def one(args: argparse.Namespace) -> None:
    """Run one method and print its record as the last line (used by bench, per process)."""
    from .config import RunConfig
    from .experiments import run, time_method

    kwargs = json.loads(args.kwargs)
    if args.task == "time":
        record = time_method(**kwargs)
    else:
        record = run(RunConfig.from_dict(kwargs["config"]))
    print(json.dumps(record.to_dict()))


def train_command(args: argparse.Namespace) -> None:
    """Train one method, in this process or in each of the processes a launcher started
    (``torchrun --nproc_per_node N -m helpers train ...``); rank 0 writes the result."""
    from dataclasses import fields

    from .config import RunConfig
    from .distributed import context
    from .experiments import run

    config = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})
    result = run(config)
    if context().is_main:
        out = Path(args.out or Path(config.results_root) / "runs" /
                   f"train-{result.fingerprint[:16]}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict()))
        print(f"{result.method} in {result.world_size} process(es): test CCC "
              f"{result.test_ccc_mean:.3f}, {result.seconds_per_epoch:.1f} s/epoch, data wait "
              f"{result.data_wait_share:.1%}; result in {out}")


def add_config_options(command: argparse.ArgumentParser) -> None:
    """One option per RunConfig setting, with RunConfig's default (``--num-epochs 6``)."""
    from dataclasses import fields

    for field in fields(RunConfig):
        option = f"--{field.name.replace('_', '-')}"
        if isinstance(field.default, bool):
            command.add_argument(option, action=argparse.BooleanOptionalAction,
                                 default=field.default)
            continue
        kind = next(k for k in (int, float, str) if k.__name__ in str(field.type))
        parse = (lambda text, kind=kind: None if text.lower() == "none" else kind(text)) \
            if field.default is None else kind
        command.add_argument(option, default=field.default, type=parse,
                             metavar=kind.__name__.upper())


def make_sample_command(args: argparse.Namespace) -> None:
    """Regenerate the bundled corpus (audio, labels.csv, DATASHEET.md)."""
    import shutil

    from .bundled.corpus import make_sample
    from .bundled.datasheet import write_datasheet

    shutil.rmtree(Path(args.out) / "audio", ignore_errors=True)
    manifest = make_sample(args.out, seed=args.seed, clips_per_speaker=args.clips_per_speaker)
    write_datasheet(args.out, seed=args.seed)
    print(f"{len(manifest)} clips written to {args.out}")


def pretrain_command(args: argparse.Namespace) -> None:
    """Synthesise the pretraining speech (once), pretrain the bundled tiny backbone, probe it
    layer by layer against random weights, and write its model card."""
    import pandas as pd

    from .bundled.pretrain import make_pretraining_speech, pretrain, probe_and_describe

    speech = Path(args.speech_dir)
    if not (speech / "transcripts.csv").is_file():
        make_pretraining_speech(speech, num_clips=args.clips, seed=args.seed + 1234)
    summary = pretrain(speech, args.out, num_steps=args.steps, batch_size=args.batch_size,
                       lr=args.lr, prosody_weight=args.prosody_weight, width=args.width,
                       seed=args.seed)
    print(f"backbone saved to {args.out} after {summary['steps']} steps "
          f"(final CTC loss {summary['curve'][-1][1]:.3f}); probing its layers")
    probes = probe_and_describe(args.out, seed=args.seed)
    print(pd.concat(probes, axis=1).to_string())


def check_rerun_command(args: argparse.Namespace) -> None:
    """Compare a from-scratch rerun of the pretraining recipe (its output folder) with the
    reported backbone; the table goes into the reported backbone's model card."""
    from .bundled.pretrain import RERUN_TOLERANCE, rerun_check

    table = rerun_check(args.reported, args.rerun)
    print(table.to_string())
    if not table["within tolerance"].all():
        raise SystemExit(f"the rerun differs from the reported figures by more than "
                         f"{RERUN_TOLERANCE}")


def gpu_check_command(args: argparse.Namespace) -> None:
    """Time, train and execute the notebooks on a CUDA GPU; write results/gpu/<device>/."""
    from .gpu_check import gpu_check

    status = gpu_check(args)
    if status:
        raise SystemExit(status)


def main_job(args: argparse.Namespace) -> None:
    """Execute the whole series headless, in order, into results/notebooks/ (or, with
    --in-place, back into notebooks/ for committing), figures included; then write the
    trade-off figure and table."""
    from .notebook import NOTEBOOK_DIR, execute, reference_results, series
    from .plots import tradeoff_figure
    from .tables import summary_table
    from .timing import stopwatch

    out = NOTEBOOK_DIR if args.in_place else RESULTS_DIR / "notebooks"
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures in the output
           **({"SMOKE": "1"} if args.smoke else {})}
    with stopwatch("the whole series"):
        for notebook in series():
            with stopwatch(f"  {notebook.relative_to(NOTEBOOK_DIR)}"):
                execute(notebook, out / notebook.relative_to(NOTEBOOK_DIR), env=env)
    summary = summary_table(reference_results("bench"))
    figure, table = RESULTS_DIR / "tradeoffs.png", RESULTS_DIR / "tradeoffs.md"
    tradeoff_figure(summary, path=figure)
    table.write_text(summary.to_markdown() + "\n")
    print(f"\nexecuted notebooks: {out}/\ntrade-off figure: {figure}\ntrade-off table: {table}")


def learning_rates(text: str) -> list[float]:
    """``"1e-4,5e-4"`` -> [0.0001, 0.0005]: the --lrs option (argparse reports a bad one)."""
    rates = [float(rate) for rate in text.split(",")]
    if not all(0 < rate < float("inf") for rate in rates):
        raise ValueError(text)
    return rates


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` above 0 (argparse names the option if not)."""
    def parse(text: str):
        value = kind(text)
        if not 0 < value < float("inf"):
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebook series (the main job)",
                              description=main_job.__doc__)
    run.add_argument("--smoke", action="store_true", help="small settings (as the tests)")
    run.add_argument("--in-place", action="store_true", help="write the executed notebooks "
                     "back into notebooks/ (to commit their outputs)")
    run.set_defaults(function=main_job)
    sub = commands.add_parser("bench", help="train/measure the methods, write results/",
                              description=bench_command.__doc__)
    defaults = RunConfig()
    sub.add_argument("--data", default=defaults.data, help="bundled, msp:/path, "
                     "iemocap:/path or a manifest CSV")
    sub.add_argument("--backbone", default=defaults.backbone, help="tiny, a Hub id, a "
                     "folder, or random:wav2vec2-base / random:wav2vec2-large")
    sub.add_argument("--methods", help="comma-separated, e.g. full,partial(3),cached(3)")
    sub.add_argument("--timing-only", action="store_true",
                     help="time a few training steps per method instead of training")
    sub.add_argument("--loader-only", action="store_true",
                     help="measure the input pipeline against the model (loader.md)")
    sub.add_argument("--seeds", type=positive(int), default=3)
    sub.add_argument("--repeats", type=positive(int), default=3,
                     help="with --timing-only: rounds over the grid (median per method)")
    sub.add_argument("--epochs", type=positive(int), default=defaults.num_epochs)
    sub.add_argument("--batch-seconds", type=positive(float),
                     default=defaults.max_batch_seconds,
                     help="audio per training batch, padding included (max_batch_seconds)")
    sub.add_argument("--batch-size", type=positive(int), default=2,
                     help="with --timing-only: clips per timed step")
    sub.add_argument("--clip-seconds", type=positive(float), default=3.0,
                     help="with --timing-only: length of each clip")
    sub.add_argument("--lrs", type=learning_rates, default=",".join(map(str, LEARNING_RATES)),
                     help="peak learning rates (AdamW) to choose from on dev, per method; "
                     "give one to train every method at it without a search")
    sub.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    sub.add_argument("--jobs", type=positive(int), default=1, help="runs at once, sharing "
                     "the CPU cores (timings are then per share; use 1 for timing)")
    sub.add_argument("--results-root", default=defaults.results_root,
                     help="where waveform stores and layer caches go (under cache/)")
    sub.add_argument("--verify-audio", action="store_true", help="key the waveform store and "
                     "results by a hash of every audio file (slower; catches files rewritten "
                     "with their size and time restored)")
    sub.add_argument("--out-dir", default=str(RESULTS_DIR))
    sub.add_argument("--resume", action="store_true", help="keep the finished runs with the "
                     "same fingerprint (an interrupted bench goes on)")
    sub.set_defaults(function=bench_command)
    trainer = commands.add_parser("train", help="train one method (also under torchrun)",
                                  description=train_command.__doc__)
    add_config_options(trainer)
    trainer.add_argument("--out", help="where rank 0 writes the result (JSON)")
    trainer.set_defaults(function=train_command)
    check = commands.add_parser("gpu-check", help="prove the GPU path on a CUDA machine "
                                "(about 8 minutes)", description=gpu_check_command.__doc__)
    check.add_argument("--out-dir", default=str(RESULTS_DIR / "gpu"))
    check.add_argument("--steps", default="timing,bundled,torchrun,notebooks",
                       type=lambda text: text.split(","),
                       help="which steps to run (comma-separated)")
    check.set_defaults(function=gpu_check_command)
    single = commands.add_parser("one", help="one run in this process (used by bench)",
                                 description=one.__doc__)
    single.add_argument("task", choices=["run", "time"])
    single.add_argument("kwargs", help="keyword arguments as JSON")
    single.set_defaults(function=one)
    sample = commands.add_parser("make-sample", help="regenerate the bundled corpus "
                                 "(needs espeak-ng)", description=make_sample_command.__doc__)
    sample.add_argument("--out", default=str(SAMPLE_DIR))
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--clips-per-speaker", type=int, default=72)
    sample.set_defaults(function=make_sample_command)
    backbone = commands.add_parser("pretrain-backbone", help="pretrain the bundled tiny "
                                   "backbone (needs espeak-ng)",
                                   description=pretrain_command.__doc__)
    backbone.add_argument("--out", default=str(SAMPLE_DIR / "backbone"))
    backbone.add_argument("--speech-dir", default="build/pretraining_speech")
    backbone.add_argument("--clips", type=int, default=4000)
    for option, value in RECIPE.items():  # the bundled backbone's recipe is the default
        backbone.add_argument(f"--{option.replace('_', '-')}", type=type(value), default=value)
    backbone.set_defaults(function=pretrain_command)
    rerun = commands.add_parser("check-rerun", help="compare a rerun of pretrain-backbone "
                                "with the bundled backbone",
                                description=check_rerun_command.__doc__)
    rerun.add_argument("rerun", help="the rerun's --out folder")
    rerun.add_argument("--reported", default=str(SAMPLE_DIR / "backbone"))
    rerun.set_defaults(function=check_rerun_command)
    return root


def main(argv: list[str] | None = None) -> None:
    """Parse, run, and turn a user's mistake into one line that says what to do (set
    ``HELPERS_TRACEBACK=1`` for the traceback)."""
    from .experiments import RunFailed
    from .store import DiskSpaceError, StaleStoreError
    from .train import CheckpointError, TrainingFailed

    args = parser().parse_args(argv)
    try:
        args.function(args)
    except (ValueError, FileNotFoundError, DiskSpaceError, StaleStoreError, CheckpointError,
            TrainingFailed, RunFailed) as error:
        if os.environ.get("HELPERS_TRACEBACK"):
            raise
        sys.exit(f"python -m helpers {args.command}: error: {error}")


if __name__ == "__main__":
    main()
