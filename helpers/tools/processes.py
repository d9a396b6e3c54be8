"""Running one training or timing run in a fresh Python process (``python -m helpers one``), so
that each run's peak memory is its own: a CPU process's peak resident size can only grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys


class RunFailed(RuntimeError):
    """A run in its own process failed; that process has already printed why."""


def run_in_subprocess(task: str, threads: int | None = None, **kwargs) -> dict:
    """Run ``run`` (``task="run"``, ``config=...``) or ``time_method`` (``task="time"``,
    ``config=...``) in a fresh process; returns its record as a dict. ``threads`` caps the
    process's CPU threads (for running several at once)."""
    command = [sys.executable, "-m", "helpers", "one", task, json.dumps(kwargs)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if finished.returncode != 0:
        raise RunFailed(f"{task} of {kwargs.get('config', {}).get('method')} failed "
                        f"(exit {finished.returncode}); its error is printed above")
    return json.loads(finished.stdout.strip().splitlines()[-1])
