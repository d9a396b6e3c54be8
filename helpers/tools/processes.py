"""Running one training or timing run in a fresh Python process (``python -m helpers one``), so
that each run's peak memory is its own: a CPU process's peak resident size can only grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading


class RunFailed(RuntimeError):
    """A run in its own process failed; that process has already printed why."""


def run_in_subprocess(task: str, threads: int | None = None, **kwargs) -> dict:
    """Run ``run`` (``task="run"``, ``config=...``) or ``time_method`` (``task="time"``,
    ``config=...``) in a fresh process; returns its record as a dict. ``threads`` caps the
    process's CPU threads (for running several at once)."""
    command = [sys.executable, "-m", "helpers", "one", task, json.dumps(kwargs)]
    if os.name == "posix":  # Ctrl-C reaches the whole process group: the run ignores it from
        # its first instruction (no traceback half-way through an import), the bench stops it
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        with _lock:
            RUNNING.add(process)
        try:
            stdout, _ = process.communicate()
        finally:
            with _lock:
                RUNNING.discard(process)
    if process.returncode != 0:
        raise RunFailed(f"{task} of {kwargs.get('config', {}).get('method')} failed "
                        f"(exit {process.returncode}); its error is printed above")
    return json.loads(stdout.strip().splitlines()[-1])


RUNNING: set[subprocess.Popen] = set()  # the runs in progress, stopped together on Ctrl-C
_lock = threading.Lock()


def stop_running() -> None:
    """Stop every run in progress (the bench was interrupted): terminate, then kill."""
    with _lock:
        processes = list(RUNNING)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
