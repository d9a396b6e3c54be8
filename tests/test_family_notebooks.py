"""A reader who sets BACKBONE to a HuBERT or WavLM checkpoint gets a notebook that runs: the
notebooks that split, cache and adapt the backbone (05 LoRA, 06 caching), in SMOKE mode, on a
local folder saved from a small random model of each family (the Hub is not reachable here)."""

import os

import pytest

from conftest import small_config
from helpers.backbone import build_backbone
from helpers.paths import NOTEBOOK_DIR
from helpers.tools.run_notebooks import execute
from test_notebooks import GUARD, SMOKE_CELL_TIMEOUT


@pytest.fixture(scope="module", params=["hubert", "wavlm"])
def family_folder(request, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp(f"{request.param}-backbone")
    build_backbone(small_config("large" if request.param == "wavlm" else "base", layers=4,
                                family=request.param)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("notebook", ["05_lora", "06_caching"])
def test_a_notebook_runs_with_another_backbone_family(notebook, family_folder, tmp_path):
    env = {"SMOKE": "1", "BACKBONE": family_folder, "RESULTS_DIR": str(tmp_path),
           "LR": "2e-4",  # the bench chose no rate for this backbone: LR = None would stop
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")])}
    executed = execute(NOTEBOOK_DIR / f"{notebook}.ipynb", timeout=SMOKE_CELL_TIMEOUT,
                       env=env, attempts=2)
    assert all(cell.get("execution_count") for cell in executed.cells
               if cell.cell_type == "code")
