"""The training notebooks, 02-08, in SMOKE mode and in reading order: the other half of the
series (see ``test_notebooks.py``), in a file of its own so that it runs beside the first."""

import pytest

from conftest import assert_every_code_cell_ran
from test_notebooks import TRAINING


@pytest.mark.parametrize("notebook", TRAINING, ids=lambda p: p.stem)
def test_training_notebook_runs_in_smoke_mode(notebook, smoke_kernel):
    assert_every_code_cell_ran(smoke_kernel.run(notebook))
