"""Command line of the series: ``python -m helpers --help``."""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .data import SAMPLE_DIR, load_manifest, sample_manifest
from .experiments import LEARNING_RATES
from .bundled.pretrain import RECIPE

RESULTS_DIR = Path("results")
TRAINING_GRID = ["full", "partial(1)", "partial(2)", "partial(3)", "partial(4)", "partial(5)",
                 "lora(16)", "cached(3)", "weighted-sum", "full+bf16", "partial(3)+bf16",
                 "cached(3)+bf16"]
TIMING_GRID = ["full", "full+cnn", "partial(3)", "lora(16)", "cached(3)", "weighted-sum",
               "full+bf16", "partial(3)+bf16", "lora(16)+bf16", "cached(3)+bf16"]


def bench(args: argparse.Namespace) -> None:
    """Run the grid, each run in its own process; write JSON lines, a summary and a figure.

    Training first chooses each method's learning rate on dev: one run per rate in --lrs
    (seed 0), best dev CCC wins; mixed-precision variants take their fp32 method's rate. Then
    every method trains with --seeds seeds at its rate (the seed-0 search run is reused).
    """
    import pandas as pd

    from .experiments import (chosen_learning_rates, lr_search_table, methods_to_search,
                              summary_table)
    from .plots import tradeoff_figure
    from .train import bf16_is_fast

    timing = args.timing_only
    methods = args.methods.split(",") if args.methods else (TIMING_GRID if timing else
                                                             TRAINING_GRID)
    if not args.methods and not bf16_is_fast(args.device):
        print(f"bf16 is emulated on this {args.device} (no native bf16): skipping +bf16 methods")
        methods = [m for m in methods if "+bf16" not in m]
    stem = f"timing-{args.backbone.replace(':', '-').replace('/', '-')}" if timing else "bench"
    out_dir = Path(args.out_dir)
    runner = GridRunner(args, out_dir / f"{stem}.jsonl")
    if timing:
        # the whole grid `repeats` times over (the summary takes each method's median), so a
        # slow spell on a shared machine cannot fall on one method alone
        records = runner.run([(m, round_, None) for round_ in range(args.repeats)
                              for m in methods])
    else:
        rates = args.lrs
        search = [(m, 0, rate) for rate in rates for m in methods_to_search(methods)]
        searched = runner.run(search if len(rates) > 1 else [])
        chosen = dict.fromkeys(methods, rates[0])
        if searched:
            chosen = chosen_learning_rates(pd.DataFrame(searched), methods)
            table = lr_search_table(pd.DataFrame(searched))
            (out_dir / f"{stem}-lr-search.md").write_text(table.to_markdown() + "\n")
            print(f"best dev CCC per learning rate (seed 0):\n{table.to_string()}\n")
        finals = runner.run([(m, seed, chosen[m]) for seed in range(args.seeds)
                             for m in methods])
        records = searched + [r for r in finals if r not in searched]
    runner.rewrite(records)
    summary = summary_table(pd.DataFrame(records))
    (out_dir / f"{stem}-summary.md").write_text(summary.to_markdown() + "\n")
    print(summary.to_string())
    if not timing:
        tradeoff_figure(summary, path=out_dir / "tradeoffs.png")
    print(f"\nresults in {runner.path} and {stem}-summary.md")


class GridRunner:
    """Runs bench jobs ``(method, seed or round, lr)``, each in its own process, ``--jobs``
    at a time, appending each record to ``path`` as it finishes. With ``--resume`` a job
    already recorded there with the same settings is not run again."""

    def __init__(self, args: argparse.Namespace, path: Path):
        self.args, self.path = args, path
        self.threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
        self.done = {}
        if args.resume:
            self.done = {self.key(r): r for r in self.read() if self.same_settings(r)}
            print(f"resuming: {len(self.done)} runs already in {path}")
        else:
            path.unlink(missing_ok=True)

    def read(self) -> list[dict]:
        return ([json.loads(line) for line in self.path.read_text().splitlines() if line]
                if self.path.is_file() else [])

    def key(self, record: dict) -> tuple:
        index = record["round"] if self.args.timing_only else record["seed"]
        return record["method"], index, record.get("lr")

    def same_settings(self, record: dict) -> bool:
        settings = {"backbone": self.args.backbone} if self.args.timing_only else {
            "backbone": self.args.backbone, "num_epochs": self.args.epochs,
            "batch_size": self.args.batch_size}
        return all(record.get(name) == value for name, value in settings.items())

    def run(self, jobs: list[tuple]) -> list[dict]:
        """The records of ``jobs``, in order: recorded ones as they were, the rest run now."""
        from .experiments import append_result

        missing = [job for job in jobs if job not in self.done]
        with ThreadPoolExecutor(self.args.jobs) as pool:  # each job is its own process
            for job, record in zip(missing, pool.map(self.run_one, missing)):
                record["parallel_jobs"] = self.args.jobs
                append_result(record, self.path)
                self.done[job] = record
        return [self.done[job] for job in jobs]

    def run_one(self, job: tuple) -> dict:
        from .experiments import run_in_subprocess

        method, index, lr = job
        args = self.args
        if args.timing_only:
            print(f"--- {method} (round {index + 1} of {args.repeats})", flush=True)
            return {**run_in_subprocess("time", self.threads, method=method,
                                        backbone=args.backbone, device=args.device, seed=0),
                    "round": index}
        print(f"--- {method} (seed {index}, lr {lr:g})", flush=True)
        return run_in_subprocess("run", self.threads, method=method, manifest=args.manifest,
                                 backbone=args.backbone, seed=index, num_epochs=args.epochs,
                                 batch_size=args.batch_size, lr=lr, device=args.device,
                                 cache_dir=args.cache_dir)

    def rewrite(self, records: list[dict]) -> None:
        """Leave exactly this grid's records in the file (a resumed file may hold others)."""
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))


def one(args: argparse.Namespace) -> None:
    """Run one method and print its record as the last line (used by bench, per process)."""
    from .experiments import run, time_method

    kwargs = json.loads(args.kwargs)
    if args.task == "time":
        record = time_method(**kwargs)
    else:
        manifest = kwargs.pop("manifest")
        manifest = load_manifest(manifest) if manifest else sample_manifest()
        record = run(manifest=manifest, progress=False, **kwargs)
    print(json.dumps(record))


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


def main_job(args: argparse.Namespace) -> None:
    """Execute the whole series headless, in order, into results/notebooks/ (the committed
    notebooks stay untouched); then write the trade-off figure and table."""
    from .experiments import summary_table
    from .notebook import execute, reference_results, series
    from .plots import tradeoff_figure
    from .timing import stopwatch

    out = RESULTS_DIR / "notebooks"
    env = {"MPLBACKEND": "Agg", **({"SMOKE": "1"} if args.smoke else {})}
    with stopwatch("the whole series"):
        for notebook in series():
            with stopwatch(f"  {notebook.stem}"):
                execute(notebook, out / notebook.name, env=env)
    summary = summary_table(reference_results("bench"))
    figure, table = RESULTS_DIR / "tradeoffs.png", RESULTS_DIR / "tradeoffs.md"
    tradeoff_figure(summary, path=figure)
    table.write_text(summary.to_markdown() + "\n")
    print(f"\nexecuted notebooks: {out}/\ntrade-off figure: {figure}\ntrade-off table: {table}")


def learning_rates(text: str) -> list[float]:
    """``"1e-4,5e-4"`` -> [0.0001, 0.0005]: the --lrs option (argparse reports a bad one)."""
    rates = [float(rate) for rate in text.split(",")]
    if min(rates) <= 0:
        raise ValueError(text)
    return rates


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebook series (the main job)",
                              description=main_job.__doc__)
    run.add_argument("--smoke", action="store_true", help="small settings (as the tests)")
    run.set_defaults(function=main_job)
    sub = commands.add_parser("bench", help="train/measure the methods, write results/",
                              description=bench.__doc__)
    sub.add_argument("--manifest", help="a manifest CSV (default: the bundled corpus)")
    sub.add_argument("--backbone", default="tiny", help="tiny, a Hub id, a folder, "
                     "or random:wav2vec2-base / random:wav2vec2-large")
    sub.add_argument("--methods", help="comma-separated, e.g. full,partial(3),cached(3)")
    sub.add_argument("--timing-only", action="store_true",
                     help="time a few training steps per method instead of training")
    sub.add_argument("--seeds", type=int, default=3)
    sub.add_argument("--repeats", type=int, default=3,
                     help="with --timing-only: rounds over the grid (median per method)")
    sub.add_argument("--epochs", type=int, default=6)
    sub.add_argument("--batch-size", type=int, default=8)
    sub.add_argument("--lrs", type=learning_rates, default=",".join(map(str, LEARNING_RATES)),
                     help="peak learning rates (AdamW) to choose from on dev, per method; "
                     "give one to train every method at it without a search")
    sub.add_argument("--device", default="cpu")
    sub.add_argument("--jobs", type=int, default=1, help="runs at once, sharing the CPU "
                     "cores (timings are then per share; use 1 for timing)")
    sub.add_argument("--cache-dir", default=str(RESULTS_DIR / "cache"))
    sub.add_argument("--out-dir", default=str(RESULTS_DIR))
    sub.add_argument("--resume", action="store_true", help="keep the runs already in the "
                     "results file with the same settings (an interrupted bench goes on)")
    sub.set_defaults(function=bench)
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
    args = parser().parse_args(argv)
    args.function(args)


if __name__ == "__main__":
    main()
