"""The benchmark behind ``make bench``: the training grid (each method's learning rate chosen on
dev, then several seeds), the timing grid, and the loader benchmark.

Every run goes in a process of its own (so each peak memory is its own). Records are appended
to ``<stem>.jsonl.partial`` as runs finish and merged into ``<stem>.jsonl`` when the grid is
complete: a record of an earlier bench is kept unless this one measured the same run again
(same fingerprint), a bench that fails or is stopped never destroys the previous results, and
``--resume`` reuses every finished run whose fingerprint matches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..backbone import backbone_config
from ..config import BenchGrid, RunConfig, TimingConfig
from ..corpora import load_data
from ..device import bf16_is_fast, cpu_count, resolve_device
from ..files import append_record, read_records, write_records, write_text
from ..fingerprints import run_fingerprint, timing_fingerprint
from ..manifests import data_fingerprint
from ..methods import check_fits, fitting, parse_method, timing_grid, training_grid
from ..plots import tradeoff_figure
from ..results import missing_fields
from ..tables import chosen_learning_rates, lr_search_table, methods_to_search, summary_table
from .loader_bench import loader_bench
from .processes import RunFailed, run_in_subprocess, stop_running


class GridInterrupted(RuntimeError):
    """The grid was stopped by Ctrl-C; the message says what was kept and how to go on."""


@dataclass(frozen=True)
class Job:
    """One run of the grid: what to call in a fresh process, and the fingerprint its record
    will carry (what ``--resume`` matches)."""

    task: str            # "run" or "time"
    config: dict         # the RunConfig or TimingConfig, as a dict
    fingerprint: str
    round: int = 0       # timing: which pass over the grid
    label: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return self.fingerprint, self.round


def training_job(config: RunConfig, data: str) -> Job:
    return Job("run", config.to_dict(), run_fingerprint(config, data),
               label=f"{config.method} (seed {config.seed}, lr {config.lr:g})")


def timing_job(round_: int, config: TimingConfig) -> Job:
    return Job("time", config.to_dict(), timing_fingerprint(config), round_,
               f"{config.method} (round {round_ + 1})")


def record_key(record: dict) -> tuple:
    return record.get("fingerprint"), record.get("round", 0)


def check_record(record: dict, source: Path) -> None:
    """Refuse to resume from a record that lacks what the bench's tables read (a hand-edited
    line), naming it and what to do; a line without a fingerprint is never reused, and is
    kept as it is."""
    missing = missing_fields(record)
    if missing and record.get("fingerprint"):
        raise ValueError(
            f"{source}: the record of {record.get('method', '?')} (seed {record.get('seed', '?')}"
            f", lr {record.get('lr', '?')}, fingerprint {str(record.get('fingerprint'))[:12]}) "
            f"has no {', '.join(missing)}; restore the line, or delete it so that --resume runs "
            "that run again")


class GridRunner:
    """Runs jobs ``jobs`` at a time, each in its own process, appending each record to the
    partial file as it finishes; ``finish`` merges the grid's records into the results file.
    With ``resume``, a job whose record (same fingerprint) is already in the results file or
    the partial file is not run again."""

    def __init__(self, path: Path, jobs: int = 1, resume: bool = False):
        self.path, self.jobs = path, jobs
        self.partial = path.with_name(path.name + ".partial")
        self.threads = max(1, cpu_count() // jobs) if jobs > 1 else None
        self.done: dict[tuple, dict] = {}
        if resume:
            for source in (path, self.partial):
                for record in read_records(source):
                    check_record(record, source)
                    self.done[record_key(record)] = record
            print(f"resuming: {len(self.done)} finished runs in {path.name} and "
                  f"{self.partial.name}")
        else:
            self.partial.unlink(missing_ok=True)

    def run(self, jobs: list[Job]) -> list[dict]:
        """The records of ``jobs``, in order: finished ones as they were, the rest run now."""
        missing = list({job.key: job for job in jobs if job.key not in self.done}.values())
        failures = []
        pool = ThreadPoolExecutor(self.jobs)  # each job is its own process
        futures = {pool.submit(self.run_one, job): job for job in missing}
        try:
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
        except KeyboardInterrupt:  # Ctrl-C: stop now, keep what finished
            pool.shutdown(wait=False, cancel_futures=True)
            stop_running()
            raise GridInterrupted(f"stopped by Ctrl-C: {len(self.done)} finished run(s) are "
                                  f"kept in {self.partial}; rerun the same command with "
                                  "--resume to go on where it stopped") from None
        pool.shutdown()
        if failures:
            raise RunFailed(f"{len(failures)} run(s) failed ({failures[0]}); the finished "
                            f"ones are kept in {self.partial.name}: fix the cause and rerun "
                            "with --resume")
        return [self.done[job.key] for job in jobs]

    def run_one(self, job: Job) -> dict:
        print(f"--- {job.label}", flush=True)
        return run_in_subprocess(job.task, self.threads, config=job.config)

    def finish(self, records: list[dict]) -> list[dict]:
        """Merge this grid's records into the results file (an earlier record stays unless
        this grid measured the same run again), drop the partial file; returns the merged
        records."""
        new = {record_key(r) for r in records}
        merged = [r for r in read_records(self.path) if record_key(r) not in new] + records
        write_records(merged, self.path)
        self.partial.unlink(missing_ok=True)
        return merged


def check_methods(methods: list[str], backbone: str) -> None:
    """Refuse the whole grid before anything runs if one method is unknown or does not fit."""
    config = backbone_config(backbone)
    for name in methods:
        check_fits(parse_method(name), config)



def training_bench(settings: RunConfig, grid: BenchGrid, methods: list[str],
                   runner: GridRunner, out_dir: Path) -> list[dict]:
    """Choose each method's learning rate on dev (seed 0), then train every seed at it."""
    # --resume resumes the grid (finished runs are kept), not each run from a checkpoint
    settings = settings.with_(device=resolve_device(settings.device), progress=False,
                              resume=False)
    data = data_fingerprint(load_data(settings.data), settings.verify_audio)
    rates = grid.learning_rates
    search = [training_job(settings.with_(method=m, lr=rate, seed=0), data)
              for rate in rates for m in methods_to_search(methods)]
    searched = runner.run(search if len(rates) > 1 else [])
    chosen = dict.fromkeys(methods, rates[0])
    if searched:
        chosen = chosen_learning_rates(pd.DataFrame(searched), methods)
        table = lr_search_table(pd.DataFrame(searched))
        write_text(out_dir / "bench-lr-search.md", table.to_markdown() + "\n")
        print(f"best dev CCC per learning rate (seed 0):\n{table.to_string()}\n")
    finals = runner.run([training_job(settings.with_(method=m, seed=seed, lr=chosen[m]), data)
                         for seed in range(grid.seeds) for m in methods])
    return searched + [r for r in finals if r not in searched]


def timing_bench(timing: TimingConfig, grid: BenchGrid, methods: list[str],
                 runner: GridRunner) -> list[dict]:
    """The grid ``repeats`` times over (the summary takes each method's median), so a slow
    spell on a shared machine cannot fall on one method alone."""
    timing = timing.with_(device=resolve_device(timing.device))
    return runner.run([timing_job(round_, timing.with_(method=parse_method(m).name))
                       for round_ in range(grid.repeats) for m in methods])


def grid_plan(settings: RunConfig, timing: TimingConfig,
              grid: BenchGrid) -> tuple[str, list[str], str]:
    """The backbone, the methods (each checked against it) and the results file's stem of a
    training or timing grid."""
    backbone = timing.backbone if grid.timing_only else settings.backbone
    methods = grid.method_names or fitting(
        timing_grid() if grid.timing_only else training_grid(), backbone_config(backbone))
    check_methods(methods, backbone)
    if not grid.method_names and not bf16_is_fast(settings.device):
        print(f"bf16 is emulated on this {settings.device} (no native bf16): skipping +bf16 "
              "methods")
        methods = [m for m in methods if not parse_method(m).needs_native_bf16]
    return backbone, methods, grid_plan_stem(backbone, timing, grid)


def grid_plan_stem(backbone: str, timing: TimingConfig, grid: BenchGrid) -> str:
    """The results file's name (without .jsonl) of a training or timing grid."""
    if not grid.timing_only:
        return "bench"
    phase = "" if timing.phase == "train" else f"-{timing.phase}"
    profiled = "-profile" if timing.profile else ""
    return f"timing-{backbone.replace(':', '-').replace('/', '-')}{phase}{profiled}"


def bench(settings: RunConfig, timing: TimingConfig, grid: BenchGrid) -> None:
    """Run the grid, each run in its own process; write JSON lines, a summary and a figure.

    Training first chooses each method's learning rate on dev: one run per rate in --lrs
    (seed 0), best dev CCC wins; mixed-precision variants take their fp32 method's rate. Then
    every method trains with --seeds seeds at its rate (the seed-0 search run is reused).
    """
    resolve_device(settings.device)  # a device that is not there is refused before anything
    out_dir = Path(settings.results_root)
    if grid.loader_only:
        return loader_bench(settings, out_dir)
    backbone, methods, stem = grid_plan(settings, timing, grid)
    runner = GridRunner(out_dir / f"{stem}.jsonl", grid.jobs, settings.resume)
    records = runner.finish(timing_bench(timing, grid, methods, runner) if grid.timing_only
                            else training_bench(settings, grid, methods, runner, out_dir))
    summary = summary_table(pd.DataFrame(records))
    write_text(out_dir / f"{stem}-summary.md", summary.to_markdown() + "\n")
    print(summary.to_string())
    if not grid.timing_only:
        tradeoff_figure(summary, path=out_dir / "tradeoffs.png")
    print(f"\nresults in {runner.path} and {stem}-summary.md")

