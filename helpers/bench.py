"""The benchmark behind ``make bench``: the training grid (each method's learning rate chosen on
dev, then several seeds), the timing grid, and the loader benchmark.

Every run goes in a process of its own (so each peak memory is its own). Records are appended
to ``<stem>.jsonl.partial`` as runs finish and replace ``<stem>.jsonl`` only when the grid is
complete: a bench that fails, or is stopped, never destroys the previous results, and
``--resume`` reuses every finished run whose fingerprint matches.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import RunConfig, cpu_count, resolve_device, timing_fingerprint
from .data import data_fingerprint, load_data
from .experiments import RunFailed
from .methods import check_fits, parse_method
from .results import append_record, read_records, write_records

TRAINING_GRID = ["full", "partial(1)", "partial(2)", "partial(3)", "partial(4)", "partial(5)",
                 "lora(16)", "cached(3)", "weighted-sum", "full+bf16", "partial(3)+bf16",
                 "cached(3)+bf16"]
TIMING_GRID = ["full", "full+cnn", "partial(3)", "lora(16)", "cached(3)", "weighted-sum",
               "full+bf16", "partial(3)+bf16", "lora(16)+bf16", "cached(3)+bf16",
               "full+compile", "partial(3)+compile", "cached(3)+compile"]


@dataclass(frozen=True)
class Job:
    """One run of the grid: what to call in a fresh process, and the fingerprint its record
    will carry (what ``--resume`` matches)."""

    task: str            # "run" or "time"
    kwargs: tuple        # sorted (name, value) pairs, JSON-ready
    fingerprint: str
    round: int = 0       # timing: which pass over the grid
    label: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.fingerprint, self.round


def training_job(config: RunConfig, data: str) -> Job:
    return Job("run", (("config", config.to_dict()),), config.fingerprint(data),
               label=f"{config.method} (seed {config.seed}, lr {config.lr:g})")


def timing_job(round_: int, **settings) -> Job:
    fingerprint = timing_fingerprint(**settings)
    return Job("time", tuple(sorted(settings.items())), fingerprint, round_,
               f"{settings['method']} (round {round_ + 1})")


class GridRunner:
    """Runs jobs ``jobs`` at a time, each in its own process, appending each record to the
    partial file as it finishes; ``finish`` replaces the results file with the grid's records.
    With ``resume``, a job whose record (same fingerprint) is already in the results file or
    the partial file is not run again."""

    def __init__(self, path: Path, jobs: int = 1, resume: bool = False):
        self.path, self.jobs = path, jobs
        self.partial = path.with_name(path.name + ".partial")
        self.threads = max(1, cpu_count() // jobs) if jobs > 1 else None
        self.done: dict[tuple, dict] = {}
        if resume:
            for record in read_records(path) + read_records(self.partial):
                self.done[(record.get("fingerprint"), record.get("round", 0))] = record
            print(f"resuming: {len(self.done)} finished runs in {path.name} and "
                  f"{self.partial.name}")
        else:
            self.partial.unlink(missing_ok=True)

    def run(self, jobs: list[Job]) -> list[dict]:
        """The records of ``jobs``, in order: finished ones as they were, the rest run now."""
        missing = list({job.key: job for job in jobs if job.key not in self.done}.values())
        failures = []
        with ThreadPoolExecutor(self.jobs) as pool:  # each job is its own process
            futures = {pool.submit(self.run_one, job): job for job in missing}
            for future in as_completed(futures):  # each record is kept as soon as it exists
                job = futures[future]
                try:
                    record = future.result()
                except RunFailed as error:
                    failures.append(str(error))
                    continue
                record.update(parallel_jobs=self.jobs, round=job.round)
                append_record(record, self.partial)
                self.done[job.key] = record
        if failures:
            raise RunFailed(f"{len(failures)} run(s) failed ({failures[0]}); the finished "
                            f"ones are kept in {self.partial.name}: fix the cause and rerun "
                            "with --resume")
        return [self.done[job.key] for job in jobs]

    def run_one(self, job: Job) -> dict:
        from .experiments import run_in_subprocess

        print(f"--- {job.label}", flush=True)
        return run_in_subprocess(job.task, self.threads, **dict(job.kwargs))

    def finish(self, records: list[dict]) -> None:
        """Replace the results file with exactly this grid's records, then drop the partial."""
        write_records(records, self.path)
        self.partial.unlink(missing_ok=True)


def check_methods(methods: list[str], backbone: str) -> None:
    """Refuse the whole grid before anything runs if one method is unknown or does not fit."""
    from .backbone import backbone_config

    num_layers = backbone_config(backbone).num_hidden_layers
    for name in methods:
        check_fits(parse_method(name), num_layers)


def training_bench(args: argparse.Namespace, methods: list[str], runner: GridRunner,
                   out_dir: Path) -> list[dict]:
    """Choose each method's learning rate on dev (seed 0), then train every seed at it."""
    from .tables import chosen_learning_rates, lr_search_table, methods_to_search

    settings = RunConfig(backbone=args.backbone, data=args.data, device=args.device,
                         num_epochs=args.epochs, max_batch_seconds=args.batch_seconds,
                         results_root=args.results_root, verify_audio=args.verify_audio,
                         progress=False).resolved()
    data = data_fingerprint(load_data(args.data), args.verify_audio)
    rates = args.lrs
    search = [training_job(settings.with_(method=m, lr=rate), data)
              for rate in rates for m in methods_to_search(methods)]
    searched = runner.run(search if len(rates) > 1 else [])
    chosen = dict.fromkeys(methods, rates[0])
    if searched:
        chosen = chosen_learning_rates(pd.DataFrame(searched), methods)
        table = lr_search_table(pd.DataFrame(searched))
        (out_dir / "bench-lr-search.md").write_text(table.to_markdown() + "\n")
        print(f"best dev CCC per learning rate (seed 0):\n{table.to_string()}\n")
    finals = runner.run([training_job(settings.with_(method=m, seed=seed, lr=chosen[m]), data)
                         for seed in range(args.seeds) for m in methods])
    return searched + [r for r in finals if r not in searched]


def timing_bench(args: argparse.Namespace, methods: list[str], runner: GridRunner) -> list[dict]:
    """The grid ``repeats`` times over (the summary takes each method's median), so a slow
    spell on a shared machine cannot fall on one method alone."""
    device = resolve_device(args.device)
    return runner.run([timing_job(round_, method=parse_method(m).name, backbone=args.backbone,
                                  device=device, seed=0, batch_size=args.batch_size,
                                  clip_seconds=args.clip_seconds, num_steps=5, warmup=2,
                                  attention="sdpa")
                       for round_ in range(args.repeats) for m in methods])


def bench(args: argparse.Namespace) -> None:
    """Run the grid, each run in its own process; write JSON lines, a summary and a figure.

    Training first chooses each method's learning rate on dev: one run per rate in --lrs
    (seed 0), best dev CCC wins; mixed-precision variants take their fp32 method's rate. Then
    every method trains with --seeds seeds at its rate (the seed-0 search run is reused).
    """
    from .plots import tradeoff_figure
    from .tables import summary_table
    from .train import bf16_is_fast

    resolve_device(args.device)  # a device that is not there is refused before anything runs
    if args.loader_only:
        from .loader_bench import loader_bench

        return loader_bench(args)
    timing = args.timing_only
    methods = args.methods.split(",") if args.methods else (TIMING_GRID if timing else
                                                             TRAINING_GRID)
    check_methods(methods, args.backbone)
    if not args.methods and not bf16_is_fast(args.device):
        print(f"bf16 is emulated on this {args.device} (no native bf16): skipping +bf16 methods")
        methods = [m for m in methods if "+bf16" not in m]
    stem = f"timing-{args.backbone.replace(':', '-').replace('/', '-')}" if timing else "bench"
    out_dir = Path(args.out_dir)
    runner = GridRunner(out_dir / f"{stem}.jsonl", args.jobs, args.resume)
    records = (timing_bench(args, methods, runner) if timing else
               training_bench(args, methods, runner, out_dir))
    runner.finish(records)
    summary = summary_table(pd.DataFrame(records))
    (out_dir / f"{stem}-summary.md").write_text(summary.to_markdown() + "\n")
    print(summary.to_string())
    if not timing:
        tradeoff_figure(summary, path=out_dir / "tradeoffs.png")
    print(f"\nresults in {runner.path} and {stem}-summary.md")


def environment_line() -> str:
    """The machine a benchmark ran on, for the header of its results file."""
    import platform

    import torch

    from .timing import cpu_name

    return (f"{cpu_name()}, {cpu_count()} cores; torch {torch.__version__}; python "
            f"{platform.python_version()}; OMP threads {os.environ.get('OMP_NUM_THREADS', '-')}")
