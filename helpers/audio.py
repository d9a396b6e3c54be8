"""Audio in: any soundfile-readable file as a mono float32 waveform at 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

try:
    import soundfile as sf
except ImportError:  # optional: gpu-check times steps without it; reading audio names it
    sf = None

from .constants import SAMPLE_RATE

MIN_SECONDS = 0.1


class AudioError(ValueError):
    """An audio file that cannot be used as it is; the message names the file and the fix."""


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Read any soundfile-readable file as a mono float32 waveform at ``sample_rate``.

    Stereo is averaged to mono and other rates are resampled; missing, unreadable, empty,
    sub-100 ms files and files with NaN or infinite samples raise an error that names the
    file.
    """
    if sf is None:
        raise ImportError("reading audio needs soundfile: pip install -r requirements.txt")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: audio file not found; check the manifest's path "
                                "column and the corpus root, or drop the row.")
    try:
        samples, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: unreadable or corrupt audio ({error}); re-export it as "
                         "WAV/FLAC or remove the row from the manifest.") from error
    if samples.shape[0] < MIN_SECONDS * file_rate:
        raise AudioError(f"{path}: {samples.shape[0] / file_rate:.3f} s of audio, shorter than "
                         f"the {MIN_SECONDS} s minimum; remove the row or replace the file.")
    bad = samples.size - int(np.isfinite(samples).sum())
    if bad:
        raise AudioError(f"{path}: {bad} samples are not finite (NaN or infinity), which would "
                         "make every score that includes this clip NaN; re-export the file "
                         "or remove its row from the manifest.")
    waveform = torch.from_numpy(samples.mean(axis=1))
    if file_rate != sample_rate:
        waveform = AF.resample(waveform, file_rate, sample_rate)
    return waveform


def normalize(waveform: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance, as Wav2Vec2's feature extractor does."""
    return (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)
