"""Every notebook runs top to bottom in SMOKE mode (a failing cell fails the test), in a
kernel that cannot reach the network, and trains at the learning rates the bench chose.

The series runs in two halves, each in reading order over one results folder, as a reader's run
would: here the data and probe notebooks (00, 01, the appendices and the solutions, which reuse
the probes of 00 and 01), and in ``test_notebooks_training.py`` the training notebooks 02-08
(06 reuses the caches it built). A test file runs whole on one worker (``--dist loadfile``), so
the two halves run side by side.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from helpers.notebook import bench_learning_rate, reference_results
from helpers.tables import chosen_learning_rates
from helpers.tools.run_notebooks import execute, series



def test_the_series_is_complete():
    names = [p.stem for p in series()]
    assert names[:8] == ["00_data", "01_backbone", "02_full-finetuning",
                         "03_partial-finetuning", "04_mixed-precision", "05_lora",
                         "06_caching", "07_tradeoffs"]
    assert "appendix_bundled-backbone" in names


# a SMOKE cell takes seconds (15 s at most here): one without a reply in 60 s met the rare
# unanswered request (see ``execute``), and the notebook runs once more in a fresh kernel
SMOKE_CELL_TIMEOUT = 60

TRAINING = [p for p in series() if p.stem[:2].isdigit() and int(p.stem[:2]) >= 2]


def run_in_smoke_mode(notebook: Path, kernel_env: dict[str, str]) -> None:
    executed = execute(notebook, timeout=SMOKE_CELL_TIMEOUT, env=kernel_env,
                       attempts=2)  # a failing cell raises
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code)


@pytest.mark.parametrize("notebook", [p for p in series() if p not in TRAINING],
                         ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(notebook, kernel_env):
    run_in_smoke_mode(notebook, kernel_env)


def test_a_failing_cell_fails_the_execution(tmp_path, kernel_env):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                               nbformat.v4.new_code_cell("1 / 0")])
    path = tmp_path / "failing.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        execute(path, timeout=60, env=kernel_env)


def test_a_cell_without_a_reply_is_run_again_in_a_fresh_kernel(tmp_path, kernel_env, capsys):
    marker = tmp_path / "first-attempt"
    stalls_once = (f"import pathlib, time\nm = pathlib.Path({str(marker)!r})\n"
                   "if not m.exists():\n    m.touch()\n    time.sleep(30)")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(stalls_once)])
    path = tmp_path / "stalls.ipynb"
    nbformat.write(notebook, path)
    executed = execute(path, timeout=3, env=kernel_env, attempts=2)
    assert executed.cells[0].execution_count == 1 and marker.exists()
    assert "stalls.ipynb: a cell got no reply within 3 s" in capsys.readouterr().out


def test_notebooks_train_each_method_at_the_rate_the_bench_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))  # no bench of one's own: the reference
    reference = reference_results("bench")
    assert reference["lr"].nunique() > 1  # the reference bench searched the learning rate
    chosen = chosen_learning_rates(reference)
    assert bench_learning_rate("full") == chosen["full"]
    assert bench_learning_rate("partial(3)+bf16") == chosen["partial(3)"]
    assert bench_learning_rate("partial(9)", default=3e-4) == 3e-4  # not in the bench


DRAWING_CALLS = ("plt.subplots(", "sns.", "_figure(", "layer_profile(", "learning_curves(",
                 "cumulative_time(")


@pytest.mark.parametrize("notebook", series(), ids=lambda p: p.stem)
def test_every_drawing_cell_of_the_committed_notebook_shows_its_figure(notebook):
    """The committed notebooks are read on GitHub without a kernel: a figure must be saved in
    the output of every cell that draws one, and no progress bar saved at 0%."""
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    for cell in cells:
        outputs = cell.get("outputs", [])
        if any(call in cell.source for call in DRAWING_CALLS):
            assert any("image/png" in o.get("data", {}) for o in outputs), cell.source[:80]
        assert not any("0%|" in str(o.get("text", "")) or "0%|" in str(o.get("data", {}))
                       for o in outputs), cell.source[:80]
