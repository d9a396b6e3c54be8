"""Running the notebooks headless: the series in reading order, each in a fresh kernel
(``execute``), or one after another in a kernel cleared between them (``SharedKernel``)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..paths import NOTEBOOK_DIR


def series() -> list[Path]:
    """The notebooks in reading order (numbered ones first, then the appendices, then the
    exercise solutions)."""
    return (sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb")) + sorted(NOTEBOOK_DIR.glob("appendix*.ipynb"))
            + sorted(NOTEBOOK_DIR.glob("solutions/*.ipynb")))


@contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """``env`` added to this process's environment, which a kernel started inside inherits."""
    previous = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_notebook(source: Path):
    # optional: the Jupyter stack is not on every GPU image gpu-check runs on, so it is imported
    # only when a notebook runs
    import nbformat

    notebook = nbformat.read(source, as_version=4)
    notebook.metadata.pop("widgets", None)  # widget state of an earlier run lingers
    return notebook


def notebook_client(notebook, source: Path, timeout: int, kernel_manager=None):
    """A client that runs ``notebook`` in the folder of ``source``: in a kernel of its own, or
    in ``kernel_manager``'s, which it then leaves running."""
    from nbclient import NotebookClient  # (Jupyter) optional, as in read_notebook

    return NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", km=kernel_manager,
        # the kernel's own log would fill the log of every run: start-up warnings, and the
        # "KeyboardInterrupt caught" line when the shutdown's interrupt lands in a message
        # handler (a failing cell still raises)
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        resources={"metadata": {"path": str(source.parent)}})


def execute(source: Path, target: Path | None = None, timeout: int = 1200,
            env: dict[str, str] | None = None, attempts: int = 1):
    """Run a notebook top to bottom in a fresh kernel (a failing cell raises) and write the
    executed copy to ``target``. ``env`` is added to the kernel's environment.

    A cell that gets no reply within ``timeout`` seconds is run again from the top in a fresh
    kernel while ``attempts`` allow: now and then an idle kernel leaves an execute request
    unanswered (the client waits for a reply that never comes), which a rerun does not meet.
    """
    import nbformat  # (Jupyter) optional, as in read_notebook

    def run_once():
        notebook = read_notebook(source)
        notebook_client(notebook, source, timeout).execute()
        return notebook

    with environment(env):
        notebook = with_reruns(run_once, source, timeout, attempts)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
    return notebook


def with_reruns(run_once: Callable[[], object], source: Path, timeout: int, attempts: int,
                after_no_reply: Callable[[], None] = lambda: None):
    """``run_once()``'s notebook; a cell without a reply (see ``execute``) calls
    ``after_no_reply`` and runs it again while ``attempts`` allow."""
    from nbclient.exceptions import CellTimeoutError  # (Jupyter) optional, as in read_notebook

    for attempt in range(1, attempts + 1):
        try:
            return run_once()
        except CellTimeoutError:
            after_no_reply()
            if attempt == attempts:
                raise
            print(f"{source.name}: a cell got no reply within {timeout} s; running the notebook "
                  "again in a fresh kernel", flush=True)


class SharedKernel:
    """One kernel that runs notebooks one after another, each from a cleared namespace in its
    own folder: the kernel's start and the imports of torch and transformers (15-20 s on a slow
    CPU) are paid once, not once a notebook. It is how the tests run the series in SMOKE mode.

    What a notebook leaves at module level (the modules it imported, their caches, a global
    seed) stays for the next one, so a notebook that only runs after another could pass here:
    ``make run`` runs each notebook in a fresh kernel (``execute``), as a reader does, and the
    committed outputs come from it. A cell without a reply (see ``execute``) restarts the
    kernel and runs that notebook again.
    """

    def __init__(self, env: dict[str, str], timeout: int):
        self.env = env  # the kernel's environment on top of this process's
        self.timeout = timeout
        self.kernel_manager = None
        self.extra_keys: set[str] = set()  # set by the last notebook's ``extra_env``

    def run(self, source: Path, extra_env: dict[str, str] | None = None, attempts: int = 2):
        """Run ``source`` top to bottom (a failing cell raises) with ``extra_env`` set in the
        kernel for this notebook only; return the executed notebook."""
        def run_once():
            notebook = read_notebook(source)
            notebook.cells.insert(0, self.clearing_cell(source.parent, extra_env or {}))
            self.execute(notebook, source)
            notebook.cells.pop(0)
            return notebook
        return with_reruns(run_once, source, self.timeout, attempts, after_no_reply=self.close)

    def clearing_cell(self, folder: Path, extra_env: dict[str, str]):
        """The first cell of every notebook here: the namespace and the figures of the last
        notebook gone, this notebook's folder and environment in force."""
        import nbformat  # (Jupyter) optional, as in read_notebook

        started = {**os.environ, **self.env}  # what the kernel had before any extra_env
        earlier = self.extra_keys - set(extra_env)
        self.extra_keys = set(extra_env)
        restored = {key: started[key] for key in earlier if key in started}
        dropped = sorted(earlier - set(started))
        return nbformat.v4.new_code_cell(
            "%reset -f\n"  # no name of its own is left behind: every module by __import__
            '__import__("matplotlib.pyplot").pyplot.close("all")\n'
            f'__import__("os").chdir({str(folder)!r})\n'
            f'__import__("os").environ.update({ {**restored, **extra_env}!r})\n'
            f'[__import__("os").environ.pop(key, None) for key in {dropped!r}]')

    def execute(self, notebook, source: Path) -> None:
        from nbclient.util import run_sync  # (Jupyter) optional, as in read_notebook

        if self.kernel_manager is not None and not run_sync(self.kernel_manager.is_alive)():
            self.close()  # a notebook before this one killed it
        if self.kernel_manager is None:  # the client given it starts its kernel, and leaves it
            self.kernel_manager = notebook_client(notebook, source,
                                                  self.timeout).create_kernel_manager()
        client = notebook_client(notebook, source, self.timeout, self.kernel_manager)
        try:
            with environment(self.env):  # what the kernel inherits when this client starts it
                client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()

    def close(self) -> None:
        """Shut the kernel down (the next notebook starts a fresh one)."""
        from nbclient.util import run_sync  # (Jupyter) optional, as in read_notebook

        if self.kernel_manager is not None:
            if run_sync(self.kernel_manager.is_alive)():
                run_sync(self.kernel_manager.shutdown_kernel)(now=True)
            run_sync(self.kernel_manager.cleanup_resources)()
            self.kernel_manager = None

    def __enter__(self) -> SharedKernel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
