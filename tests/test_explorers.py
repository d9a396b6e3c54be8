"""07's dashboard over several benches: the bench menu swaps the method families on offer, and
each view draws only what its bench measured."""

import matplotlib
import pytest

from helpers.notebook import reference_results
from helpers.plots import results_explorer
from helpers.tables import summary_table

matplotlib.use("Agg")
pytest.importorskip("ipywidgets")


def test_the_bench_menu_offers_each_benchs_own_methods(capsys):
    study = summary_table(reference_results("bench", quiet=True))
    beyond = summary_table(reference_results("bench-beyond", quiet=True))
    dashboard = results_explorer({"the study's methods": study, "beyond the study": beyond})
    methods, precision, bench = dashboard.children[0].children
    assert set(methods.options) == {"full", "partial", "lora", "cached", "weighted-sum"}
    bench.value = "beyond the study"
    assert set(methods.options) == {"lora-ffn", "lora-all", "dora", "ia3", "bitfit", "adapter",
                                    "partial", "cached", "weighted-partial"}
    assert methods.value == methods.options  # every family of the new bench, selected
    shown = capsys.readouterr().out
    assert "prune(4)+partial(3)" in shown and "weighted-sum" not in shown.split("lora-ffn")[-1]
    methods.value = ("bitfit",)
    assert "no method matches" not in capsys.readouterr().out
