"""The waveform store: decoded once, rebuilt when an audio file changes, never served half-built."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_tone
from helpers.audio import read_audio
from helpers.dataset import SpeechDataset, waveform_store
from helpers.store import INDEX, DiskSpaceError, build_store, ensure_free_space, open_store

pytestmark = pytest.mark.usefixtures("one_thread")  # small operations: see conftest


def test_the_store_holds_what_decoding_gives(tmp_path, manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    store = waveform_store(manifest, tmp_path / "stores", progress=False)
    for i, path in enumerate(manifest["path"]):
        assert np.array_equal(store.item(i), read_audio(path).numpy())
    stored = SpeechDataset(manifest, "train", max_seconds=0.3, train=True, store=store)
    decoded = SpeechDataset(manifest, "train", max_seconds=0.3, train=True)
    for key in [(0, 0), (1, 3)]:
        assert torch.equal(stored[key]["input_values"], decoded[key]["input_values"])


def test_a_changed_audio_file_rebuilds_the_store(tmp_path, manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    first = waveform_store(manifest, tmp_path, progress=False)
    assert waveform_store(manifest, tmp_path, progress=False).path == first.path  # reused
    write_tone(Path(manifest["path"][0]), seconds=0.5, frequency=440.0)  # same length, new sound
    os.utime(manifest["path"][0], ns=(0, time.time_ns() + 10**9))
    second = waveform_store(manifest, tmp_path, progress=False)
    assert second.path != first.path
    assert not np.array_equal(second.item(0), first.item(0))


def test_verify_catches_a_file_rewritten_with_its_size_and_time_restored(tmp_path,
                                                                          manifest_rows):
    manifest = pd.DataFrame(manifest_rows)
    path = manifest["path"][0]
    stamped = waveform_store(manifest, tmp_path, verify=True, progress=False)
    stat = os.stat(path)
    write_tone(Path(path), seconds=0.5, frequency=440.0)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    verified = waveform_store(manifest, tmp_path, verify=True, progress=False)
    assert verified.key != stamped.key


BUILD_AND_HANG = """
import sys, time, numpy as np
from helpers.store import build_store
def items():
    yield np.ones(1000, np.float32)
    time.sleep(60)  # killed here, half-built
    yield np.ones(1000, np.float32)
build_store(sys.argv[1], "key", items(), 4000, None, "float32", progress=False)
"""


def test_a_killed_build_is_never_served_and_is_cleaned_up(tmp_path):
    target = tmp_path / "store"
    builder = subprocess.Popen([sys.executable, "-c", BUILD_AND_HANG, str(target)])
    deadline = time.time() + 60
    while not list(tmp_path.glob("store.partial-*")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert not (target / INDEX).exists() and list(tmp_path.glob("store.partial-*"))
    with pytest.raises(FileNotFoundError, match="not a complete store"):
        open_store(target)
    store = build_store(target, "key", [np.zeros(10, np.float32)], 10, None, "float32",
                        progress=False)
    assert len(store) == 1 and not list(tmp_path.glob("store.partial-*"))  # cleaned up


def test_too_little_disk_space_is_a_clear_error(tmp_path):
    with pytest.raises(DiskSpaceError, match=r"needs .* GiB in .* free"):
        ensure_free_space(tmp_path, 2**60, what="a store")
    with pytest.raises(DiskSpaceError):
        build_store(tmp_path / "huge", "k", [], 2**58, 1024, "float16", progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing was written
