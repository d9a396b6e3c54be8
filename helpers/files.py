"""Writing files so that nothing is ever half-written or lost: one atomic writer, one JSON-lines
reader and appender, and one memo for saved results ("load it if it was computed for exactly
these inputs, else compute and save it").
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .fingerprints import code_version, digest
from .paths import shown


class OutputPathError(OSError):
    """A place results cannot be written to; the message names it and what to do."""


class DiskSpaceError(OSError):
    """Too little free disk space for what is being written; the message says how much is
    needed (or was free) where, and what to do."""


FULL_DISK_FREE = 2**20  # a write that fails with less than this free ran out of disk space


def ran_out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether ``error`` is a full disk: the operating system says so (ENOSPC), or a library
    that hides the reason (``torch.save``: "unexpected pos") failed on a disk with next to
    nothing free."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return shutil.disk_usage(folder).free < FULL_DISK_FREE


def check_writable(folder: str | Path, what: str = "results root") -> Path:
    """Make sure results can be written under ``folder`` before any work starts (a run that
    finds out after training loses its result): it is created if missing, and a probe file is
    written and removed."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{shown(folder)} ({what}) is a file, not a folder; choose a "
                              "folder (--results-root, RESULTS_DIR)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputPathError(f"{shown(folder)} ({what}) cannot be written to "
                              f"({error.strerror}); choose a writable folder (--results-root, "
                              "RESULTS_DIR)") from error
    return folder


def check_output_file(path: str | Path) -> Path:
    """Make sure ``path`` can be written as a file: not a folder, its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{shown(path)} is a folder; --out takes a file name such as "
                              f"{shown(path / 'result.json')}")
    check_writable(path.parent, "the folder of --out")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary)``, then rename the temporary file onto ``path``: readers see the
    old file or the new one, never half of one. The temporary name is unique to this writer
    (two processes writing the same file never share it) and is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except Exception as error:
        if not ran_out_of_space(error, path.parent):
            raise
        temporary.unlink(missing_ok=True)
        kept = f"; the earlier {path.name} is unchanged" if path.exists() else ""
        raise DiskSpaceError(
            f"the disk ran out of space while writing {shown(path)} "
            f"({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free once the unfinished "
            f"file was removed){kept}; free some space, or point the results root "
            "(--results-root, RESULTS_DIR) or --checkpoint-dir at a larger disk, and run the "
            "same command again") from error
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path``'s contents replaced by ``text`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def write_json(path: str | Path, value: object) -> Path:
    return write_text(path, json.dumps(value, default=float))


def append_record(record: dict, path: str | Path) -> None:
    """Append one record to a JSON-lines results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a line cut short by a crash is left out, with a
    warning naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {shown(path)}:{number} is not a complete record (cut short?); "
                  "skipped")
    return records


def write_records(records: list[dict], path: str | Path) -> Path:
    """Replace ``path`` with ``records`` atomically."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def saved_or_computed(folder: str | Path, name: str, compute: Callable[[], object],
                      encode: Callable[[object], object] = lambda value: value,
                      decode: Callable[[object], object] = lambda value: value,
                      key: str | None = None, **inputs) -> object:
    """The saved value of ``name`` for exactly these ``inputs`` and this code (or this ``key``,
    when the caller computed the fingerprint itself), else ``compute()``'s, saved for next time
    under ``folder``. ``encode``/``decode`` turn the value into JSON and back. Delete the file
    to compute again."""
    key = key or digest(json.dumps({**inputs, "code": code_version()}, sort_keys=True,
                                   default=str))
    path = Path(folder) / f"{name}-{key[:16]}.json"
    if path.is_file():
        saved = read_json(path)
        if saved is not None and saved.get("key") == key:
            print(f"loaded the saved {name} (delete {shown(path)} to compute it again)")
            return decode(saved["value"])
    value = compute()
    write_json(path, {"key": key, "inputs": inputs, "value": encode(value)})
    return value


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None for one that is not complete JSON (a crash's leftover)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
