"""Running the notebooks headless: the series in reading order, each in a fresh kernel."""

from __future__ import annotations

import os
from pathlib import Path

from ..paths import NOTEBOOK_DIR


def series() -> list[Path]:
    """The notebooks in reading order (numbered ones first, then the appendices, then the
    exercise solutions)."""
    return (sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb")) + sorted(NOTEBOOK_DIR.glob("appendix*.ipynb"))
            + sorted(NOTEBOOK_DIR.glob("solutions/*.ipynb")))


def execute(source: Path, target: Path | None = None, timeout: int = 1200,
            env: dict[str, str] | None = None):
    """Run a notebook top to bottom in a fresh kernel (a failing cell raises) and write the
    executed copy to ``target``. ``env`` is added to the kernel's environment."""
    # optional: the Jupyter stack is not installed on every GPU image gpu-check runs on
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    notebook.metadata.pop("widgets", None)  # widget state of an earlier run would linger
    previous = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       # the kernel's own log would fill the log of every run: start-up
                       # warnings, and the "KeyboardInterrupt caught" line when the shutdown's
                       # interrupt lands in a message handler (a failing cell still raises)
                       extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                       resources={"metadata": {"path": str(source.parent)}}).execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
    return notebook
