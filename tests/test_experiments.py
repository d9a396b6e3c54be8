"""The runner: every method builds, trains and is measured the same way."""

import pandas as pd
import pytest
import torch
from transformers import Wav2Vec2Model

from conftest import small_config
from helpers.__main__ import parser, settings_from
from helpers.config import BenchGrid, RunConfig, TimingConfig
from helpers.files import read_records
from helpers.methods import parse_method
from helpers.run import run
from helpers.step_timing import time_method
from helpers.tables import (chosen_learning_rates, lr_search_table, methods_to_search,
                            operator_table, summary_table)
from helpers.tools.bench import GridRunner, Job, timing_bench

ALL_METHODS = ["full", "full+cnn", "partial(1)", "lora(4)", "cached(1)", "weighted-sum",
               "weighted-partial(1)", "partial(1)+bf16"]


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    Wav2Vec2Model(small_config("base", layers=2)).save_pretrained(folder)
    return str(folder)


def test_method_names_round_trip_and_nonsense_is_refused():
    for name in ["full", "full+cnn", "partial(3)+bf16", "lora(16)", "cached(3)+fp16",
                 "weighted-sum"]:
        assert parse_method(name).name == name
    for nonsense in ["partial", "full(2)", "cached(3)+fp8", "everything"]:
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(nonsense)


def test_every_method_trains_and_reports(tmp_path, manifest_rows, backbone_dir):
    manifest = pd.DataFrame(manifest_rows)
    settings = RunConfig(backbone=backbone_dir, device="cpu", num_epochs=2,
                         max_batch_seconds=1.6, results_root=str(tmp_path), progress=False)
    records = {m: run(settings.with_(method=m), manifest).to_dict() for m in ALL_METHODS}
    params = {m: r["trainable_params"] for m, r in records.items()}
    assert params["full+cnn"] > params["full"] > params["partial(1)"] > params["weighted-sum"]
    assert params["cached(1)"] == params["partial(1)"] and params["lora(4)"] < params["full"]
    assert params["weighted-partial(1)"] == params["partial(1)"] + 3  # a weight per state
    assert records["partial(1)+bf16"]["precision"] == "bf16"
    assert records["cached(1)"]["cache_bytes"] > 0
    for record in records.values():
        assert -1 <= record["test_ccc_mean"] <= 1 and record["seconds_per_epoch"] > 0
        assert record["total_params"] >= records["full"]["total_params"]  # LoRA adds adapters


def test_a_profiled_timing_says_where_the_step_time_goes(backbone_dir):
    record = time_method("lora(4)", backbone=backbone_dir, num_steps=1, warmup=0,
                         clip_seconds=0.5, profile=True)
    operators = record.operator_seconds
    assert 0 < len(operators) <= 15 and all(seconds >= 0 for seconds in operators.values())
    assert any(name in operators for name in ("aten::mm", "aten::addmm", "aten::bmm"))
    assert sum(operators.values()) < 5 * record.seconds_per_step  # seconds per step, own times
    plain = time_method("full", backbone=backbone_dir, num_steps=1, clip_seconds=0.5)
    assert plain.operator_seconds is None
    table = operator_table(pd.DataFrame([record.to_dict(), plain.to_dict()]))
    assert list(table.columns) == ["lora(4)"] and table.index[-1] == "measured step"
    assert table["lora(4)"].iloc[0] == max(operators.values())  # costliest first


def test_timing_counts_fewer_flops_for_cheaper_methods(backbone_dir):
    flops = {m: time_method(m, backbone=backbone_dir, num_steps=1, warmup=1,
                            clip_seconds=1.0).flops_per_step
             for m in ["full+cnn", "full", "partial(1)", "cached(1)"]}
    assert flops["full+cnn"] > flops["full"] > flops["partial(1)"] > flops["cached(1)"] > 0


def test_summary_reports_reductions_against_full():
    results = pd.DataFrame([
        {"method": "full", "seconds_per_step": 2.0, "flops_per_step": 100e9,
         "peak_rss_mib": 900, "trainable_params": 90},
        {"method": "cached(3)", "seconds_per_step": 0.3, "flops_per_step": 16e9,
         "peak_rss_mib": 300, "trainable_params": 20}])
    summary = summary_table(results)
    assert summary.at["cached(3)", "time_reduction"] == pytest.approx(0.85)
    assert summary.at["cached(3)", "flop_predicted_reduction"] == pytest.approx(0.84)
    assert summary.at["cached(3)", "measured_vs_predicted"] == pytest.approx(0.85 / 0.84, abs=1e-3)
    # 0.15 of full's time where FLOPs predict 0.16: a little faster than predicted
    assert summary.at["cached(3)", "time_over_flop_ratio"] == pytest.approx(0.15 / 0.16, abs=1e-3)


def fake_run(method: str, seed: int, lr: float, best_dev: float, test: float,
             seconds: float = 1.0) -> dict:
    return {"method": method, "seed": seed, "lr": lr, "dev_ccc": [0.1, best_dev, best_dev - 0.1],
            "test_ccc_mean": test, "seconds_per_epoch": seconds, "trainable_params": 9,
            **{f"test_ccc_{dim}": test for dim in ("arousal", "valence", "dominance")}}


def test_learning_rate_is_chosen_on_dev_and_mixed_precision_inherits_it():
    assert methods_to_search(["full", "partial(3)", "full+bf16", "cached(3)+bf16"]) == \
        ["full", "partial(3)", "cached(3)+bf16"]
    results = pd.DataFrame([
        fake_run("full", 0, 1e-4, best_dev=0.5, test=0.9),  # best on test, not on dev
        fake_run("full", 0, 5e-4, best_dev=0.6, test=0.2),
        fake_run("full", 1, 5e-4, best_dev=0.6, test=0.4),
        fake_run("full", 1, 1e-4, best_dev=0.9, test=0.9, seconds=3.0),  # seed 1: no say
        fake_run("full+bf16", 0, 1e-4, best_dev=0.8, test=0.8),
        fake_run("full+bf16", 0, 5e-4, best_dev=0.7, test=0.7)])
    assert chosen_learning_rates(results) == {"full": 5e-4, "full+bf16": 5e-4}
    assert lr_search_table(results).loc["full", "chosen lr"] == 5e-4
    summary = summary_table(results)
    assert summary.at["full", "seeds"] == 2 and summary.at["full", "lr"] == 5e-4
    assert summary.at["full", "ccc_mean"] == pytest.approx(0.3)
    assert summary.at["full", "seconds_per_epoch"] == 1.0  # median over every run of full
    assert list(summary.index) == ["full", "full+bf16"]
    assert summary.at["full+bf16", "seeds"] == 1 and summary.at["full+bf16", "ccc_mean"] == 0.7


def finished(job: Job) -> dict:
    """The record of a timed run, with every field the bench's tables read."""
    return {"method": job.label, "fingerprint": job.fingerprint, "mode": "timing",
            "trainable_params": 1, "seconds_per_step": 0.1}


def test_an_interrupted_bench_resumes_without_rerunning_finished_runs(tmp_path, monkeypatch):
    ran = []

    def run_one(runner, job):
        ran.append(job.label)
        return finished(job)

    monkeypatch.setattr(GridRunner, "run_one", run_one)
    path = tmp_path / "bench.jsonl"
    first, second = Job("run", {}, "print-a", label="a"), Job("run", {}, "print-b", label="b")
    GridRunner(path).run([first])  # then the bench is interrupted: the record is in .partial
    assert not path.exists()
    records = GridRunner(path, resume=True).run([first, second])
    assert ran == ["a", "b"] and len(records) == 2
    other = Job("run", {}, "print-a2", label="a2")  # other settings: another fingerprint
    GridRunner(path, resume=True).run([other])
    assert ran == ["a", "b", "a2"]
    runner = GridRunner(path)  # a fresh bench starts an empty partial file...
    runner.finish(runner.run([first]))  # ...and writes the results only when done
    assert len(ran) == 4 and len(path.read_text().splitlines()) == 1


def test_a_second_bench_adds_to_the_results_and_drops_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(GridRunner, "run_one", lambda runner, job: finished(job))
    path = tmp_path / "bench.jsonl"
    first, second = Job("run", {}, "print-a", label="a"), Job("run", {}, "print-b", label="b")
    runner = GridRunner(path)
    runner.finish(runner.run([first]))
    runner = GridRunner(path)  # another bench, other methods, the same results file
    merged = runner.finish(runner.run([second]))
    assert [r["method"] for r in merged] == ["a", "b"]
    assert len(path.read_text().splitlines()) == 2
    runner = GridRunner(path)  # measuring a run again replaces its record, and only it
    runner.finish(runner.run([first]))
    assert sorted(r["method"] for r in read_records(path)) == ["a", "b"]


def test_timing_options_reach_every_timed_step(monkeypatch, tmp_path):
    args = parser().parse_args(["bench", "--timing-only", "--batch-size", "32",
                                "--clip-seconds", "6", "--repeats", "2", "--device", "cpu"])
    seen = []
    monkeypatch.setattr(GridRunner, "run", lambda self, jobs: seen.extend(jobs) or [])
    timing_bench(settings_from(args, TimingConfig), settings_from(args, BenchGrid),
                 ["full", "cached(3)"], GridRunner(tmp_path / "timing.jsonl"))
    settings = [job.config for job in seen]
    assert len(settings) == 4 and {job.round for job in seen} == {0, 1}
    assert all(s["batch_size"] == 32 and s["clip_seconds"] == 6.0 for s in settings)
    assert len({job.fingerprint for job in seen}) == 2  # the rounds share a fingerprint
