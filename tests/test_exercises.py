"""Exercises an instructor can grade: every exercise of every notebook has a ``check`` call,
and ``check`` says right or not yet without ever printing the expected value."""

import re

import nbformat
import pytest

from helpers import exercises
from helpers.exercises import EXERCISES, Exercise, check
from helpers.paths import NOTEBOOK_DIR
from helpers.tools.run_notebooks import series

TEACHING = [path for path in series() if "solutions" not in path.parts]


def exercise_cells(path) -> tuple[str, str]:
    """The notebook's exercises (markdown) and the code cell of its check calls."""
    cells = nbformat.read(path, 4).cells
    index = next(i for i, c in enumerate(cells) if c.cell_type == "markdown"
                 and "## Exercises" in c.source)
    return cells[index].source.split("## Self-check")[0], cells[index + 1].source


@pytest.mark.parametrize("path", TEACHING, ids=lambda p: p.stem)
def test_every_exercise_has_a_check_call_and_no_expected_answer(path):
    text, checks = exercise_cells(path)
    numbered = re.findall(r"^(\d+)\. ", text, flags=re.M)
    called = re.findall(r'^check\("([^"]+)"', checks, flags=re.M)
    assert len(called) == len(numbered) >= 2
    assert all(name in EXERCISES for name in called)
    for name in called:  # the call names exactly the fields the grader asks for
        fields = re.search(rf'check\("{re.escape(name)}",(.*)\)', checks).group(1)
        given = set(re.findall(r"(\w+)=None", fields)) - {"data"}
        assert given == set(EXERCISES[name].fields), name
    assert "Expected:" not in text


def test_all_exercises_are_graded_and_the_solutions_call_every_check():
    called = set()
    for path in TEACHING:
        called |= set(re.findall(r'check\("([^"]+)"', exercise_cells(path)[1]))
    assert called == set(EXERCISES) and len(EXERCISES) >= 30
    solutions = (NOTEBOOK_DIR / "solutions" / "exercise-solutions.ipynb").read_text()
    assert set(re.findall(r'check\(\\"([^"\\]+)\\"', solutions)) == set(EXERCISES)


class Secret(str):
    """A right answer no printed text may contain."""


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_check_never_prints_the_expected_value(name, monkeypatch, capsys):
    grader = EXERCISES[name]
    secrets = {field: Secret(f"SECRET-{field}-4711") for field in grader.fields}
    monkeypatch.setitem(EXERCISES, name, Exercise(grader.fields, lambda **data: secrets,
                                                  grader.hint, grader.tolerance))
    assert not check(name, **{field: "a wrong answer" for field in grader.fields})
    assert not check(name, **{grader.fields[0]: None})  # a field left out
    assert check(name, **secrets)
    printed = capsys.readouterr().out
    assert "not yet" in printed and "right" in printed
    assert "4711" not in printed and all(s not in grader.hint for s in secrets.values())


def test_a_right_answer_from_the_records_passes_and_a_wrong_one_does_not(capsys):
    assert check("03.1", n_accuracy=exercises._budget()["n_accuracy"],
                 n_time=exercises._budget()["n_time"])
    assert not check("03.1", n_accuracy=99, n_time=exercises._budget()["n_time"])
    assert check("08.2", share=round(exercises._prune_share()["share"], 2))  # two digits do
    assert not check("04.2", data={"seconds": {"fp32": 1.0, "bf16": 0.5, "fp16": 9.0}},
                     slowest="bf16")
    out = capsys.readouterr().out
    assert out.count(": right") == 2 and "not yet (n_accuracy)" in out


def test_an_unknown_exercise_or_field_is_named():
    with pytest.raises(ValueError, match="no exercise '09.1'"):
        check("09.1", answer=1)
    assert not check("03.1", n=1)
