"""The command line: generated from the settings dataclasses, fast to ask for help, and clear
about a mistake."""

import re
import subprocess
import sys

import pytest

from helpers.__main__ import main, parser, settings_from
from helpers.config import BenchGrid


def helpers_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True,
                          text=True)


def test_help_lists_every_subcommand_without_importing_torch():
    finished = subprocess.run([sys.executable, "-X", "importtime", "-m", "helpers", "--help"],
                              capture_output=True, text=True, check=True)
    listed = set(re.search(r"\{([a-z,-]+)\}", finished.stdout)[1].split(","))
    assert listed == {"run", "bench", "train", "gpu-check", "one", "make-sample",
                      "pretrain-backbone", "check-rerun"}
    imported = {line.split("|")[-1].strip() for line in finished.stderr.splitlines()}
    assert "torch" not in imported and "helpers.config" in imported


def test_every_option_of_train_and_bench_has_a_description():
    commands = parser()._subparsers._group_actions[0].choices
    for command in ("train", "bench"):
        undescribed = [action.dest for action in commands[command]._actions if not action.help]
        assert not undescribed, command


def test_unknown_method_is_refused_with_examples():
    with pytest.raises(SystemExit) as stopped:  # sys.exit(message): exit status 1, no traceback
        main(["one", "time", '{"config": {"method": "everything"}}'])
    assert str(stopped.value.code).startswith("python -m helpers one: error: ")
    assert "unknown method 'everything'; examples: full" in stopped.value.code


def test_learning_rates_parse_and_nonsense_is_refused_before_anything_runs():
    args = parser().parse_args(["bench", "--lrs", "2e-4,1e-3"])
    assert settings_from(args, BenchGrid).learning_rates == [2e-4, 1e-3]
    finished = helpers_command("bench", "--lrs", "1e-4,fast")
    assert finished.returncode == 1
    assert "lrs='1e-4,fast' must be comma-separated positive numbers" in finished.stderr


def test_a_bad_setting_is_named_with_its_rule():
    finished = helpers_command("train", "--max-grad-norm", "-1")
    assert finished.returncode == 1
    assert "max_grad_norm=-1.0 must be positive" in finished.stderr
