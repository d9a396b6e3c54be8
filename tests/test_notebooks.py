"""Every notebook runs top to bottom in SMOKE mode (a failing cell fails the test), in a
kernel that cannot reach the network, and trains at the learning rates the bench chose.

The series runs in two halves, each in reading order over one results folder, as a reader's run
would: here the data and probe notebooks (00, 01, the appendices and the solutions, which reuse
the probes of 00 and 01), and in ``test_notebooks_training.py`` the training notebooks 02-08
(06 reuses the caches it built). A test file runs whole on one worker (``--dist loadfile``), so
the two halves run side by side, each in one kernel cleared between notebooks (``SharedKernel``:
the kernel's start and its imports are paid once a file, not once a notebook).
"""

from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from conftest import assert_every_code_cell_ran
from helpers.notebook import bench_learning_rate, reference_results
from helpers.tables import chosen_learning_rates
from helpers.tools.run_notebooks import SharedKernel, execute, series



def test_the_series_is_complete():
    names = [p.stem for p in series()]
    assert names[:8] == ["00_data", "01_backbone", "02_full-finetuning",
                         "03_partial-finetuning", "04_mixed-precision", "05_lora",
                         "06_caching", "07_tradeoffs"]
    assert "appendix_bundled-backbone" in names


TRAINING = [p for p in series() if p.stem[:2].isdigit() and int(p.stem[:2]) >= 2]


@pytest.mark.parametrize("notebook", [p for p in series() if p not in TRAINING],
                         ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(notebook, smoke_kernel):
    assert_every_code_cell_ran(smoke_kernel.run(notebook))


def write_notebook(path: Path, *cells: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                   path)
    return path


def printed(executed) -> list[str]:
    return [line for cell in executed.cells for output in cell.get("outputs", [])
            for line in output.get("text", "").splitlines()]


def test_a_failing_cell_fails_the_execution(tmp_path, kernel_env):
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        execute(write_notebook(tmp_path / "failing.ipynb", "x = 1", "1 / 0"), timeout=60,
                env=kernel_env)


def stalling_once(tmp_path: Path) -> tuple[Path, Path]:
    """A notebook whose one cell hangs in its first kernel only, and the file where each kernel
    that ran it wrote its process id."""
    pids = tmp_path / "pids"
    notebook = write_notebook(tmp_path / "stalls.ipynb", (
        f"import os, pathlib, time\npids = pathlib.Path({str(pids)!r})\nfirst = not pids.exists()\n"
        "pids.open('a').write(f'{os.getpid()} ')\nif first:\n    time.sleep(30)"))
    return notebook, pids


def test_a_cell_without_a_reply_is_run_again_in_a_fresh_kernel(tmp_path, kernel_env, capsys):
    notebook, pids = stalling_once(tmp_path)
    executed = execute(notebook, timeout=3, env=kernel_env, attempts=2)
    assert executed.cells[0].execution_count == 1 and len(set(pids.read_text().split())) == 2
    assert "stalls.ipynb: a cell got no reply within 3 s" in capsys.readouterr().out


def test_a_shared_kernel_runs_each_notebook_from_a_cleared_namespace(tmp_path, kernel_env):
    first = write_notebook(tmp_path / "one" / "first.ipynb",
                           "import os\nleft_behind = 1\nprint(os.getpid())",
                           "assert os.environ['ONLY_HERE'] == os.environ['RESULTS_DIR'] == 'x'")
    second = write_notebook(tmp_path / "two" / "second.ipynb",
                            "import os\nprint(os.getpid())",
                            "assert 'left_behind' not in dir() and 'ONLY_HERE' not in os.environ",
                            "print(os.getcwd())\nprint(os.environ['RESULTS_DIR'])")
    with SharedKernel(kernel_env, timeout=60) as kernel:
        one = kernel.run(first, extra_env={"ONLY_HERE": "x", "RESULTS_DIR": "x"})
        two = kernel.run(second)
        with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
            kernel.run(write_notebook(tmp_path / "failing.ipynb", "1 / 0"))
        notebook, pids = stalling_once(tmp_path)  # no reply: a fresh kernel runs it again
        kernel.timeout = 3
        kernel.run(notebook)
    assert printed(one)[0] == printed(two)[0]  # the same kernel process
    assert printed(two)[1] == str(tmp_path / "two")  # in the notebook's own folder
    assert printed(two)[2] == kernel_env["RESULTS_DIR"]  # the kernel's own setting again
    assert len(two.cells) == 3 and two.cells[0].execution_count  # the clearing cell is gone
    assert len(set(pids.read_text().split())) == 2


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
