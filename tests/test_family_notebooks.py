"""A reader who sets BACKBONE to a HuBERT or WavLM checkpoint gets a notebook that runs: the
notebooks that split, cache and adapt the backbone (05 LoRA, 06 caching), in SMOKE mode, on a
local folder saved from a small random model of each family (the Hub is not reachable here).

WavLM runs both: its layers pass a relative position bias from the first layer up, which the
split and the cache must carry, and its attention names its projections its own way. HuBERT's
layers are wav2vec2's, so it runs one notebook here; the unit tests split, cache and adapt
every family."""

from pathlib import Path

import pytest

from conftest import assert_every_code_cell_ran, small_config
from helpers.backbone import build_backbone
from helpers.paths import NOTEBOOK_DIR


def family_folder(family: str, root: Path) -> str:
    folder = root / f"{family}-backbone"
    build_backbone(small_config("large" if family == "wavlm" else "base", layers=4,
                                family=family)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("family, notebook", [("wavlm", "05_lora"), ("wavlm", "06_caching"),
                                              ("hubert", "05_lora")])
def test_a_notebook_runs_with_another_backbone_family(family, notebook, tmp_path, smoke_kernel):
    executed = smoke_kernel.run(NOTEBOOK_DIR / f"{notebook}.ipynb", extra_env={
        "BACKBONE": family_folder(family, tmp_path), "RESULTS_DIR": str(tmp_path),
        "LR": "2e-4"})  # the bench chose no rate for this backbone: LR = None would stop
    assert_every_code_cell_ran(executed)
