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
            env: dict[str, str] | None = None, attempts: int = 1):
    """Run a notebook top to bottom in a fresh kernel (a failing cell raises) and write the
    executed copy to ``target``. ``env`` is added to the kernel's environment.

    A cell that gets no reply within ``timeout`` seconds is run again from the top in a fresh
    kernel while ``attempts`` allow: now and then an idle kernel leaves an execute request
    unanswered (the client waits for a reply that never comes), which a rerun does not meet.
    """
    # optional: the Jupyter stack is not installed on every GPU image gpu-check runs on
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    previous = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        for attempt in range(1, attempts + 1):
            notebook = nbformat.read(source, as_version=4)
            notebook.metadata.pop("widgets", None)  # widget state of an earlier run lingers
            client = NotebookClient(
                notebook, timeout=timeout, kernel_name="python3",
                # the kernel's own log would fill the log of every run: start-up warnings,
                # and the "KeyboardInterrupt caught" line when the shutdown's interrupt lands
                # in a message handler (a failing cell still raises)
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                resources={"metadata": {"path": str(source.parent)}})
            try:
                client.execute()
                break
            except CellTimeoutError:
                if attempt == attempts:
                    raise
                print(f"{source.name}: a cell got no reply within {timeout} s; running the "
                      "notebook again in a fresh kernel", flush=True)
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
