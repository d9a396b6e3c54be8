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
