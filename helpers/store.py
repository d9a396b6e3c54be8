"""One storage mechanism for everything computed once and read every epoch: decoded waveforms
and cached layer states.

A *store* is a folder holding ``data.bin`` (every item's rows one after another, read through a
memory map, so a slice costs no more than the bytes it touches; opened copy-on-write, so
nothing a reader does reaches the file) and ``index.json`` (each item's
offset and length, the array's dtype and width, and the *key* it was built for). The key is a
fingerprint of every input that decides the contents; a store whose key differs from the one
asked for is never served. Builds write into ``<name>.partial-<pid>`` and rename it when
complete, so an interrupted build leaves nothing that looks like a store; the free disk space
is checked before the first byte is written, and partial builds of processes that no longer
exist are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from .files import DiskSpaceError

INDEX, DATA = "index.json", "data.bin"
DISK_MARGIN = 64 * 2**20  # bytes left free beyond the store itself


class StaleStoreError(RuntimeError):
    """A store built for other inputs than the ones asked for."""


@dataclass
class Store:
    """A built store: ``item(i)`` is item i's rows, a read-only view into the memory map."""

    path: Path
    key: str
    offsets: list[int]
    lengths: list[int]
    data: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return len(self.lengths)

    def item(self, index: int) -> np.ndarray:
        start = self.offsets[index]
        return self.data[start:start + self.lengths[index]]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def open_store(path: str | Path, key: str | None = None) -> Store:
    """Open a complete store; with ``key``, refuse one built for other inputs."""
    path = Path(path)
    if not (path / INDEX).is_file():
        raise FileNotFoundError(f"{path} is not a complete store (no {INDEX}); an interrupted "
                                "build leaves none: build it again")
    index = json.loads((path / INDEX).read_text())
    if key is not None and index["key"] != key:
        raise StaleStoreError(f"{path} was built for other inputs; delete it, or let "
                              "keyed_store rebuild it")
    shape = (index["rows"], *([index["width"]] if index["width"] else []))
    data = (np.memmap(path / DATA, dtype=index["dtype"], mode="c", shape=shape)
            if index["rows"] else np.zeros(shape, dtype=index["dtype"]))
    return Store(path, index["key"], index["offsets"], index["lengths"], data, index["meta"])


def build_store(path: str | Path, key: str, items: Iterable[np.ndarray], max_rows: int,
                width: int | None, dtype: str, meta: dict | None = None,
                desc: str = "building", total: int | None = None,
                progress: bool = True) -> Store:
    """Write ``items`` (arrays of shape (rows,) or (rows, width)) into a new store at ``path``.

    ``max_rows`` bounds the total rows (the disk check and the file size are based on it; the
    file is trimmed to what was written). The build's duration is kept in the store's
    ``meta["build_seconds"]``. Returns the opened store.
    """
    path = Path(path)
    row_bytes = np.dtype(dtype).itemsize * (width or 1)
    ensure_free_space(path.parent, max_rows * row_bytes, what=f"the store {path.name}")
    remove_abandoned_builds(path)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    try:
        offsets, lengths = _write_items(partial / DATA, items, max_rows, width, dtype,
                                        desc, total, progress)
        meta = {**(meta or {}), "build_seconds": time.perf_counter() - start}
        if not progress:  # no bar (a notebook): one line when it is done
            print(f"{desc}: {len(lengths)} clips in {meta['build_seconds']:.0f} s", flush=True)
        index = {"key": key, "dtype": dtype, "width": width, "rows": sum(lengths),
                 "offsets": offsets, "lengths": lengths, "meta": meta}
        (partial / INDEX).write_text(json.dumps(index))
        if (path / INDEX).is_file():  # another process finished the same store meanwhile
            shutil.rmtree(partial, ignore_errors=True)
            return open_store(path, key)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover, never a store
        os.rename(partial, path)  # the store appears complete, or not at all
    except OSError as error:
        if path.is_dir() and (path / INDEX).is_file():  # another process finished it first
            shutil.rmtree(partial, ignore_errors=True)
            return open_store(path, key)
        shutil.rmtree(partial, ignore_errors=True)
        raise error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return open_store(path, key)


def _write_items(file: Path, items: Iterable[np.ndarray], max_rows: int, width: int | None,
                 dtype: str, desc: str, total: int | None,
                 progress: bool) -> tuple[list[int], list[int]]:
    shape = (max(max_rows, 1), *([width] if width else []))
    data = np.memmap(file, dtype=dtype, mode="w+", shape=shape)
    offsets, lengths, end = [], [], 0
    for item in tqdm(items, desc=desc, total=total, disable=not progress, mininterval=2):
        if end + len(item) > max_rows:
            raise ValueError(f"{file.parent}: items exceed the {max_rows} rows planned; the "
                             "lengths they were planned from (manifest durations) are wrong")
        data[end:end + len(item)] = item
        offsets.append(end)
        lengths.append(len(item))
        end += len(item)
    data.flush()
    del data
    os.truncate(file, end * np.dtype(dtype).itemsize * (width or 1))
    return offsets, lengths


def keyed_store(root: str | Path, name: str, key: str,
                build: Callable[[Path], Store]) -> Store:
    """The store ``<root>/<name>-<key>`` if it is complete, else ``build(path)``'s."""
    path = Path(root) / f"{name}-{key[:16]}"
    if (path / INDEX).is_file():
        return open_store(path, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    return build(path)


def ensure_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise ``DiskSpaceError`` unless ``folder``'s disk has room for ``needed`` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN:
        raise DiskSpaceError(
            f"{what} needs {needed / 2**30:.2f} GiB in {folder}, which has "
            f"{free / 2**30:.2f} GiB free; free some space or point the results root "
            "(RunConfig.results_root, --results-root) at a larger disk")


def remove_abandoned_builds(path: Path) -> None:
    """Delete ``path``'s partial builds whose process no longer runs (a killed build)."""
    for partial in path.parent.glob(f"{path.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
