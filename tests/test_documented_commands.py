"""Every command the README and docs/ show runs as written: ``python -m helpers ...`` (also
behind ``torchrun``) with ``--dry-run``, which checks the arguments and prints the plan, and
each ``make`` target through ``make -n`` (its recipe's own ``python -m helpers`` lines with
``--dry-run`` too). A documented command that crashes fails here."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from helpers.__main__ import main
from helpers.paths import PROJECT_ROOT as ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STARTS = ("make", "python -m helpers", "torchrun")
DRY = ("train", "bench", "run", "gpu-check", "make-sample", "pretrain-backbone")


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every command in a shell block or an inline code span."""
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for language, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
            if language in ("bash", "sh", "console", ""):
                for line in body.replace("\\\n", " ").splitlines():
                    line = line.split(" #")[0].strip()
                    if line.startswith(STARTS):
                        found.append((document.name, line))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [(document.name, " ".join(span.split())) for span in
                  re.findall(r"`((?:make|python -m helpers|torchrun)\b[^`]*)`", prose)]
    return sorted({(name, command) for name, command in found if " " in command})  # not "make"


def helpers_arguments(command: str) -> list[str] | None:
    """The arguments after ``python -m helpers`` or ``torchrun ... -m helpers``."""
    words = shlex.split(command)
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "helpers":
            return words[i + 2:]
    return None


def run_helpers(arguments: list[str]) -> None:
    if arguments and arguments[0] in DRY:
        arguments = [*arguments, "--dry-run"]
    try:
        main(arguments)
    except SystemExit as stop:
        assert stop.code in (None, 0), f"python -m helpers {shlex.join(arguments)}: {stop}"


def make_recipe(target: str) -> list[str]:
    done = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make {target}: {done.stderr}"
    return done.stdout.splitlines()


COMMANDS = documented_commands()


def test_the_documents_show_commands():
    shown = {command for _, command in COMMANDS}
    assert {"make run", "make test", "make bench"} <= shown and len(COMMANDS) >= 15


@pytest.mark.parametrize("document, command", COMMANDS, ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_a_documented_command_runs_as_written(document, command, tmp_path, monkeypatch,
                                              capsys):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    arguments = helpers_arguments(command)
    if arguments is not None:
        run_helpers(arguments)
        assert "the settings are valid" in capsys.readouterr().out or arguments[0] not in DRY
        return
    target = shlex.split(command)[1]
    lines = make_recipe(target)
    for line in lines:
        inner = helpers_arguments(line)
        if inner is not None and inner[0] in DRY:
            run_helpers(inner)
    if target == "help":
        assert subprocess.run(["make", "help"], cwd=ROOT, capture_output=True).returncode == 0


def test_a_dry_run_refuses_what_the_real_run_would_refuse(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=r"partial\(9\).*at most partial\(6\)"):
        main(["train", "--method", "partial(9)", "--dry-run"])
    with pytest.raises(SystemExit, match="unknown step"):
        main(["gpu-check", "--steps", "timing,notebook", "--dry-run"])
    assert not list(tmp_path.rglob("*.json"))
