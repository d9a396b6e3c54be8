"""Every notebook runs top to bottom in SMOKE mode (a failing cell fails the test), in a
kernel that cannot reach the network."""

import os
from pathlib import Path

import pytest

from helpers.notebook import execute, series

GUARD = Path(__file__).parent / "netguard"


def test_the_series_is_complete():
    names = [p.stem for p in series()]
    assert names[:8] == ["00_data", "01_backbone", "02_full-finetuning",
                         "03_partial-finetuning", "04_mixed-precision", "05_lora",
                         "06_caching", "07_tradeoffs"]
    assert "appendix_bundled-backbone" in names


@pytest.mark.parametrize("notebook", series(), ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(notebook, tmp_path):
    env = {"SMOKE": "1", "RESULTS_DIR": str(tmp_path), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")])}
    executed = execute(notebook, timeout=600, env=env)
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code)
    errors = [o for cell in code for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
