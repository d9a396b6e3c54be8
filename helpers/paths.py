"""Where things are: the project's folders, and the one results root every run writes under.

Imports nothing heavy (no torch), so ``python -m helpers --help`` answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
SAMPLE_DIR = PROJECT_ROOT / "data_sample"
BUNDLED_BACKBONE = SAMPLE_DIR / "backbone"
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
REFERENCE_DIR = PROJECT_ROOT / "results" / "reference"
RESULTS_ENV = "RESULTS_DIR"  # the one override of the results root (CLI and notebooks alike)


def default_results_root() -> str:
    """The results root: ``$RESULTS_DIR`` when set, else ``results/`` of the project."""
    return os.environ.get(RESULTS_ENV) or str(PROJECT_ROOT / "results")


def shown(path: str | Path) -> str:
    """A path as a reader should see it: relative to the project, if inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)
