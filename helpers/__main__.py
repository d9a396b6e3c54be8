"""Command line of the series: ``python -m helpers --help``.

The options of ``train`` and ``bench`` are generated from the settings dataclasses
(``RunConfig``, ``TimingConfig``, ``BenchGrid`` in ``config.py``) with transformers'
``HfArgumentParser``: the same names, defaults and help texts as the code. This module imports
nothing heavy at the top, so ``--help`` answers at once; each command imports what it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from transformers import HfArgumentParser

from .bundled.recipe import RECIPE
from .config import BenchGrid, RunConfig, TimingConfig
from .paths import NOTEBOOK_DIR, SAMPLE_DIR, default_results_root

SETTINGS = {"train": (RunConfig,), "bench": (RunConfig, TimingConfig, BenchGrid)}


class SettingsParser(HfArgumentParser):
    """``HfArgumentParser`` over several dataclasses that share some settings (``bench`` takes
    ``RunConfig`` and ``TimingConfig``, which both have a backbone and a device): a shared
    setting is one option, with the first dataclass's default."""

    def _add_dataclass_arguments(self, dtype) -> None:
        taken = {action.dest for action in self._actions}
        hints = {f.name: f for f in dataclasses.fields(dtype)}
        shared = [name for name in hints if name in taken]
        if shared:
            dtype_ = dtype
            dtype = dataclasses.make_dataclass(
                dtype_.__name__, [(f.name, f.type, f) for f in dataclasses.fields(dtype_)
                                  if f.name not in taken])
            dtype.__module__ = dtype_.__module__
        super()._add_dataclass_arguments(dtype)
        self._tidy_help()

    def _tidy_help(self) -> None:
        """A ``--no-X`` switch says that it switches X off (the generated one repeats X's
        help), and a help that names its own default is not followed by a second one."""
        for action in self._actions:
            if not action.help or action.help is argparse.SUPPRESS:
                continue
            if action.option_strings[0].startswith("--no_") and "opposite" not in action.help:
                action.help = f"the opposite of --{action.dest} ({action.help})%(default).0s"
            if "(default" in action.help and "%(default)" not in action.help:
                action.help += "%(default).0s"  # empty, but keeps the formatter's default out


def settings_from(args: argparse.Namespace, dtype):
    """The ``dtype`` dataclass built from the parsed options (shared ones included)."""
    return dtype(**{f.name: getattr(args, f.name) for f in dataclasses.fields(dtype)})


def bench_command(args: argparse.Namespace) -> None:
    """Run the grid, each run in its own process; write JSON lines, a summary and a figure
    under the results root.

    Training first chooses each method's learning rate on dev: one run per rate in --lrs
    (seed 0), best dev CCC wins; mixed-precision variants take their fp32 method's rate. Then
    every method trains with --seeds seeds at its rate (the seed-0 search run is reused).
    """
    from .tools.bench import bench  # (torch) imported when the command runs: --help stays fast
    from .tools.dry_run import plan_bench, report

    if args.dry_run:
        return report("bench", plan_bench(*args.settings))
    bench(*args.settings)


def one(args: argparse.Namespace) -> None:
    """Run one method and print its record as the last line (used by bench, per process)."""
    from .run import run  # (torch) imported when the command runs: --help stays fast
    from .step_timing import time_method

    config = json.loads(args.kwargs)["config"]
    record = (time_method(TimingConfig.from_dict(config)) if args.task == "time"
              else run(RunConfig.from_dict(config)))
    print(json.dumps(record.to_dict()))


def train_command(args: argparse.Namespace) -> None:
    """Train one method, in this process or in each of the processes a launcher started
    (``torchrun --nproc_per_node N -m helpers train ...``); rank 0 writes the result."""
    from .distributed import context, peers_watched  # (torch) imported when the command runs
    from .files import check_output_file, write_json
    from .run import run

    config, = args.settings
    if args.dry_run:
        from .tools.dry_run import plan_train, report  # imported only for a dry run

        return report("train", plan_train(config, args.out))
    if args.out:
        check_output_file(args.out)  # before training, not after it
    with peers_watched():
        result = run(config)
    if context().is_main:
        out = Path(args.out or Path(config.results_root) / "runs" /
                   f"train-{result.fingerprint[:16]}.json")
        write_json(out, result.to_dict())
        print(f"{result.method} in {result.world_size} process(es): test CCC "
              f"{result.test_ccc_mean:.3f}, {result.seconds_per_epoch:.1f} s/epoch, data wait "
              f"{result.data_wait_share:.1%}; result in {out}")


def make_sample_command(args: argparse.Namespace) -> None:
    """Regenerate the bundled corpus (audio, labels.csv, DATASHEET.md)."""
    from .bundled.corpus import make_sample  # (torch) imported when the command runs
    from .bundled.datasheet import write_datasheet
    from .tools.dry_run import plan_sample, report

    if args.dry_run:
        return report("make-sample", plan_sample(args.out, args.clips_per_speaker))

    shutil.rmtree(Path(args.out) / "audio", ignore_errors=True)
    manifest = make_sample(args.out, seed=args.seed, clips_per_speaker=args.clips_per_speaker)
    write_datasheet(args.out, seed=args.seed)
    print(f"{len(manifest)} clips written to {args.out}")


def pretrain_command(args: argparse.Namespace) -> None:
    """Synthesise the pretraining speech (once), pretrain the bundled tiny backbone, probe it
    layer by layer against random weights, and write its model card."""
    import pandas as pd  # imported when the command runs: --help stays fast
    from .bundled.pretrain import make_pretraining_speech, pretrain, probe_and_describe

    if args.dry_run:
        from .tools.dry_run import plan_pretrain, report  # imported only for a dry run

        return report("pretrain-backbone", plan_pretrain(args))
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
    from .bundled.pretrain import RERUN_TOLERANCE, rerun_check  # imported when it runs

    table = rerun_check(args.reported, args.rerun)
    print(table.to_string())
    if not table["within tolerance"].all():
        raise SystemExit(f"the rerun differs from the reported figures by more than "
                         f"{RERUN_TOLERANCE}")


def gpu_check_command(args: argparse.Namespace) -> None:
    """Time, train and execute the notebooks on a CUDA GPU; write <results root>/gpu/<device>/."""
    from .tools.dry_run import plan_gpu_check, report  # (torch) imported when the command runs
    from .tools.gpu_check import gpu_check

    if args.dry_run:
        return report("gpu-check", plan_gpu_check(args.results_root, args.steps))

    status = gpu_check(Path(args.results_root) / "gpu", args.steps)
    if status:
        raise SystemExit(status)


def main_job(args: argparse.Namespace) -> None:
    """Execute the whole series headless, in order, into <results root>/notebooks/ (or, with
    --in-place, back into notebooks/ for committing), figures included; then write the
    trade-off figure and table."""
    from .files import write_text  # (torch) imported when the command runs
    from .notebook import reference_results
    from .plots import tradeoff_figure
    from .tables import summary_table
    from .timing import stopwatch
    from .tools.dry_run import plan_series, report
    from .tools.run_notebooks import execute, series

    if args.dry_run:
        return report("run", plan_series(args.results_root, args.in_place, args.smoke))
    results = Path(args.results_root)
    out = NOTEBOOK_DIR if args.in_place else results / "notebooks"
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures in the output
           "RESULTS_DIR": str(results.resolve()), **({"SMOKE": "1"} if args.smoke else {})}
    with stopwatch("the whole series"):
        for notebook in series():
            with stopwatch(f"  {notebook.relative_to(NOTEBOOK_DIR)}"):
                execute(notebook, out / notebook.relative_to(NOTEBOOK_DIR), timeout=900,
                        env=env, attempts=2)
    summary = summary_table(reference_results("bench"))
    figure, table = results / "tradeoffs.png", results / "tradeoffs.md"
    tradeoff_figure(summary, path=figure)
    write_text(table, summary.to_markdown() + "\n")
    print(f"\nexecuted notebooks: {out}/\ntrade-off figure: {figure}\ntrade-off table: {table}")


def add_dry_run(command: argparse.ArgumentParser) -> None:
    """``--dry-run`` for the commands that take long: check the arguments, print the plan."""
    command.add_argument("--dry-run", action="store_true", help="check the arguments and "
                         "print what would run, without running it")


def add_results_root(command: argparse.ArgumentParser) -> None:
    """The one results-root option of the commands not generated from ``RunConfig``."""
    command.add_argument("--results-root", default=default_results_root(),
                         help=next(f.metadata["help"] for f in dataclasses.fields(RunConfig)
                                   if f.name == "results_root"))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m helpers", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", required=True, parser_class=SettingsParser)
    run = commands.add_parser("run", help="execute the notebook series (the main job)",
                              description=main_job.__doc__)
    run.add_argument("--smoke", action="store_true", help="small settings (as the tests)")
    run.add_argument("--in-place", action="store_true", help="write the executed notebooks "
                     "back into notebooks/ (to commit their outputs)")
    add_results_root(run)
    add_dry_run(run)
    run.set_defaults(function=main_job)
    sub = commands.add_parser("bench", help="train/measure the methods, write results/",
                              description=bench_command.__doc__,
                              dataclass_types=SETTINGS["bench"])
    add_dry_run(sub)
    sub.set_defaults(function=bench_command)
    trainer = commands.add_parser("train", help="train one method (also under torchrun)",
                                  description=train_command.__doc__,
                                  dataclass_types=SETTINGS["train"])
    trainer.add_argument("--out", help="where rank 0 writes the result (JSON)")
    add_dry_run(trainer)
    trainer.set_defaults(function=train_command)
    check = commands.add_parser("gpu-check", help="prove the GPU path on a CUDA machine "
                                "(about 8 minutes)", description=gpu_check_command.__doc__)
    add_results_root(check)
    check.add_argument("--steps", default="timing,bundled,torchrun,notebooks",
                       type=lambda text: text.split(","),
                       help="which steps to run (comma-separated)")
    add_dry_run(check)
    check.set_defaults(function=gpu_check_command)
    single = commands.add_parser("one", help="one run in this process (used by bench)",
                                 description=one.__doc__)
    single.add_argument("task", choices=["run", "time"])
    single.add_argument("kwargs", help='{"config": <RunConfig or TimingConfig as JSON>}')
    single.set_defaults(function=one)
    sample = commands.add_parser("make-sample", help="regenerate the bundled corpus "
                                 "(needs espeak-ng)", description=make_sample_command.__doc__)
    sample.add_argument("--out", default=str(SAMPLE_DIR))
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--clips-per-speaker", type=int, default=72)
    add_dry_run(sample)
    sample.set_defaults(function=make_sample_command)
    backbone = commands.add_parser("pretrain-backbone", help="pretrain the bundled tiny "
                                   "backbone (needs espeak-ng)",
                                   description=pretrain_command.__doc__)
    backbone.add_argument("--out", default=str(SAMPLE_DIR / "backbone"))
    backbone.add_argument("--speech-dir", default="build/pretraining_speech")
    backbone.add_argument("--clips", type=int, default=4000)
    for option, value in RECIPE.items():  # the bundled backbone's recipe is the default
        backbone.add_argument(f"--{option.replace('_', '-')}", type=type(value), default=value)
    add_dry_run(backbone)
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
    args = parser().parse_args(argv)
    try:
        # every setting is checked before anything runs (a dataclass refuses a bad value)
        args.settings = [settings_from(args, dtype) for dtype in SETTINGS.get(args.command, ())]
        args.function(args)
    except KeyboardInterrupt:
        hint = {"train": "; a run started with --checkpoint-dir goes on exactly where its last "
                         "finished epoch left it with the same command and --resume"}
        sys.exit(f"python -m helpers {args.command}: stopped by Ctrl-C"
                 f"{hint.get(args.command, '')}")
    except Exception as error:
        if os.environ.get("HELPERS_TRACEBACK") or not is_users_mistake(error):
            raise
        sys.exit(f"python -m helpers {args.command}: error: {error}")


def is_users_mistake(error: Exception) -> bool:
    """Errors whose message says what to do (settings, files, disk space, stale stores,
    checkpoints, failed runs), as opposed to bugs, which keep their traceback."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        return True
    from .checkpoints import CheckpointError  # (torch) imported only once an error happened
    from .distributed import PeerLost
    from .files import DiskSpaceError, OutputPathError
    from .store import StaleStoreError
    from .tools.bench import GridInterrupted
    from .tools.processes import RunFailed
    from .train import TrainingFailed

    return isinstance(error, (DiskSpaceError, StaleStoreError, CheckpointError, TrainingFailed,
                              RunFailed, OutputPathError, GridInterrupted, PeerLost))


if __name__ == "__main__":
    main()
