import subprocess
import sys


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "helpers", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("run", "bench", "make-sample", "pretrain-backbone"):
        assert command in out


def test_unknown_method_is_refused_with_examples():
    finished = subprocess.run([sys.executable, "-m", "helpers", "one", "time",
                               '{"method": "everything"}'], capture_output=True, text=True)
    assert finished.returncode != 0 and "unknown method" in finished.stderr


def test_learning_rates_parse_and_nonsense_is_refused():
    from helpers.__main__ import parser

    assert parser().parse_args(["bench", "--lrs", "2e-4,1e-3"]).lrs == [2e-4, 1e-3]
    finished = subprocess.run([sys.executable, "-m", "helpers", "bench", "--lrs", "1e-4,fast"],
                              capture_output=True, text=True)
    assert finished.returncode != 0 and "invalid learning_rates value" in finished.stderr
