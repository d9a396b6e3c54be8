"""The layout holds: layers without cycles (import-linter), imports at the top of modules, the
method registry as the only place that reads a method's name, and a code version that covers
every module that can change a result."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

import helpers.fingerprints
from helpers.fingerprints import code_version
from helpers.paths import PACKAGE_DIR, PROJECT_ROOT

MODULES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_import_linter_contracts_hold():
    finished = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))],
                              cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert "0 broken" in finished.stdout


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("helpers", exclude_type_checking_imports=True)
    cycles = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
              if graph.chain_exists(importer=b, imported=a)]
    assert not cycles


def test_an_import_inside_a_function_says_why():
    """Imports go at the top; one inside a function is there to keep a heavy or optional
    dependency off the import path, and a comment on it (or the line above) says so."""
    silent = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in node.body:  # a block of imports: its first line or the one above
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    here, above = lines[inner.lineno - 1], lines[inner.lineno - 2]
                    block_start = not above.strip().startswith(("import ", "from "))
                    if block_start and "#" not in here and not above.strip().startswith("#"):
                        silent.append(f"{path.name}:{inner.lineno}")
    assert not silent


# a kind compared by name (``kind == "cached"``), or an option looked for in a method's name
# (``"+bf16" in name``); resolved precisions ("fp16" for the gradient scaler) are not options
KIND_OR_OPTION = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](full|partial|lora|cached|weighted-sum)["']"""
                            r"""|["']\+\w+["']\s+(not\s+)?in\b|\.split\(["']\(["']\)""")


def test_only_the_registry_compares_a_method_kind_or_option_as_a_string():
    comparing = [f"{path.relative_to(PACKAGE_DIR)}:{number}" for path in MODULES
                 if path.name != "methods.py"  # the registry
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if KIND_OR_OPTION.search(line.split("#")[0])]
    assert not comparing


def test_the_code_version_covers_every_module_bundled_included(tmp_path, monkeypatch):
    copy = tmp_path / "helpers"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(helpers.fingerprints, "PACKAGE_DIR", copy)
    assert code_version() == code_version()
    before = code_version()
    for edited in ("bundled/recipe.py", "tools/bench.py", "probes.py"):
        path = copy / edited
        path.write_text(path.read_text() + "\n# an edit\n")
        assert code_version() != before, edited
        before = code_version()
