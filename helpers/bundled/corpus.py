"""The bundled synthetic corpus: espeak-ng speech with controlled prosody and wording, labelled
with arousal, valence and dominance by a documented rule (see data_sample/DATASHEET.md).

It is *not* human emotional speech. It is built so that the task behaves like the real one:
arousal and dominance are carried by prosody (rate, pitch, vocal effort), valence mostly by
the words, and dev/test use speakers *and* wordings never heard in training.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from tqdm.auto import tqdm

from ..constants import DIMENSIONS, SAMPLE_RATE

LABEL_RANGE = (1.0, 7.0)

# ---------------------------------------------------------------------------------- speakers
# (name, espeak voice+variant, base pitch 0-99, base rate in words per minute, split)
SPEAKERS = [
    ("spk01", "en-us+m1", 45, 170, "train"), ("spk02", "en-us+f2", 55, 175, "train"),
    ("spk03", "en-gb+m3", 40, 165, "train"), ("spk04", "en-gb+f1", 60, 180, "train"),
    ("spk05", "en-gb-scotland+m4", 50, 160, "train"),
    ("spk06", "en-gb-x-rp+f3", 52, 170, "train"), ("spk07", "en-029+m2", 42, 185, "train"),
    ("spk08", "en-gb-x-gbclan+f4", 58, 165, "train"),
    ("spk09", "en-us-nyc+m6", 47, 175, "dev"), ("spk10", "en-gb-x-gbcwmd+f5", 57, 170, "dev"),
    ("spk11", "en-gb-x-rp+m7", 44, 180, "test"), ("spk12", "en-us+f4", 56, 165, "test"),
]

# ---------------------------------------------------------------------------------- wording
SUBJECTS = ["my neighbour", "the old teacher", "our team", "the new manager", "her brother",
            "the little girl", "the doctor", "his family", "the whole class", "my best friend",
            "the pilot", "their landlord", "the young singer", "our guide"]
FRAMES = ["was", "seemed", "felt", "looked", "sounded"]
INTENSIFIERS = {"": 1.0, "really ": 1.25, "a bit ": 0.6, "very ": 1.2, "quite ": 0.85}
TAILS = ["today", "this morning", "after the meeting", "about the news", "at the station",
         "on the phone", "last night", "all week"]
# lexical polarity of each adjective, from -1 (very negative) to +1 (very positive)
ADJECTIVES = {
    "wonderful": 1.0, "delighted": 0.9, "thrilled": 0.9, "lovely": 0.8, "cheerful": 0.7,
    "proud": 0.6, "grateful": 0.6, "hopeful": 0.5,
    "calm": 0.2, "ordinary": 0.0, "busy": 0.0, "quiet": 0.0, "normal": 0.0, "surprised": 0.1,
    "distant": -0.2, "tired": -0.3,
    "gloomy": -0.6, "worried": -0.6, "upset": -0.7, "lonely": -0.7, "miserable": -0.8,
    "furious": -0.9, "awful": -0.9, "terrible": -1.0,
}


def predicate_splits(seed: int) -> dict[tuple[str, str], str]:
    """Assign every (frame, adjective) wording to one split: per adjective, three frames train,
    one dev, one test. Every adjective is heard in training, but never in the wording that
    dev and test use, so valence must generalise from words rather than memorised sentences.
    """
    rng = np.random.default_rng(seed)
    assignment = {}
    for adjective in ADJECTIVES:
        frames = rng.permutation(FRAMES)
        for frame, split in zip(frames, ["train", "train", "train", "dev", "test"]):
            assignment[(str(frame), adjective)] = split
    return assignment


# ---------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelRule:
    """Labels from standardised prosody (z-scores) and lexical polarity, plus rater noise.

    arousal   = 4 + 0.55 z_rate + 0.45 z_pitch + 0.6 z_effort + noise
    dominance = 4 + 0.8 z_effort - 0.45 z_pitch + 0.15 z_rate + noise
    valence   = 4 + 2.2 polarity + 0.3 z_range + noise   (polarity = adjective x intensifier)
    each clipped to [1, 7]; noise ~ N(0, 0.35²) per dimension, like annotator disagreement.
    """

    noise: float = 0.35

    def __call__(self, z: dict[str, float], polarity: float, rng) -> dict[str, float]:
        raw = {
            "arousal": 4 + 0.55 * z["rate"] + 0.45 * z["pitch"] + 0.6 * z["effort"],
            "dominance": 4 + 0.8 * z["effort"] - 0.45 * z["pitch"] + 0.15 * z["rate"],
            "valence": 4 + 2.2 * polarity + 0.3 * z["range"],
        }
        return {d: float(np.clip(raw[d] + rng.normal(0, self.noise), *LABEL_RANGE))
                for d in DIMENSIONS}


def draw_prosody(rng) -> dict[str, float]:
    """Standardised prosody for one utterance. A shared 'activation' factor correlates rate,
    pitch and effort, as in real emotional speech, so arousal and dominance correlate too.
    """
    activation = rng.normal()
    own = rng.normal(size=4)
    mix = np.sqrt(0.4)
    return {"rate": mix * activation + np.sqrt(0.6) * own[0],
            "pitch": mix * activation + np.sqrt(0.6) * own[1],
            "effort": mix * activation + np.sqrt(0.6) * own[2],
            "range": own[3]}


# ---------------------------------------------------------------------------------- synthesis
def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, rate: int, pitch: int, pitch_range: int,
          word_gap: int) -> torch.Tensor:
    """Synthesise one sentence with espeak-ng; returns 16 kHz mono float32."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed: `apt-get install espeak-ng` "
                           "(Debian/Ubuntu) or `brew install espeak-ng` (macOS).")
    ssml = f'<speak><prosody range="{pitch_range}%">{text}</prosody></speak>'
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "clip.wav"
        subprocess.run(["espeak-ng", "-m", "-z", "-v", voice, "-s", str(rate), "-p", str(pitch),
                        "-g", str(word_gap), "-w", str(out), ssml], check=True,
                       capture_output=True)
        samples, rate_hz = sf.read(out, dtype="float32")
    return AF.resample(torch.from_numpy(samples), rate_hz, SAMPLE_RATE)


def apply_effort(waveform: torch.Tensor, z_effort: float) -> torch.Tensor:
    """Vocal effort: louder *and* brighter (more high-frequency energy), as in real speech.

    The brightness survives per-utterance normalisation, so effort stays audible to a model
    that never sees absolute loudness.
    """
    brightness = float(np.clip(0.45 + 0.2 * z_effort, 0.0, 0.9))
    bright = AF.preemphasis(waveform.unsqueeze(0), 0.95).squeeze(0)
    mixed = (1 - brightness) * waveform + brightness * 2.5 * bright
    gain = 10 ** (5.0 * z_effort / 20)
    mixed = mixed / mixed.abs().max().clamp(min=1e-6) * 0.25 * gain
    return mixed / max(1.0, float(mixed.abs().max()) / 0.99)  # never clip


def trim_silence(waveform: torch.Tensor, margin: float = 0.05,
                 threshold: float = 0.01) -> torch.Tensor:
    """Drop leading and trailing near-silence, keeping ``margin`` seconds on each side."""
    loud = torch.nonzero(waveform.abs() > threshold * waveform.abs().max()).squeeze(1)
    if len(loud) == 0:
        return waveform
    pad = int(margin * SAMPLE_RATE)
    return waveform[max(0, int(loud[0]) - pad): int(loud[-1]) + pad]


# ---------------------------------------------------------------------------------- corpus
def plan_corpus(seed: int = 0, clips_per_speaker: int = 72) -> pd.DataFrame:
    """Every clip's text, voice, prosody and labels, decided before any audio is made.

    All randomness comes from ``seed``, so the same seed always gives the same labels.
    """
    rng = np.random.default_rng(seed)
    wording = predicate_splits(seed)
    rule, rows = LabelRule(), []
    for name, voice, base_pitch, base_rate, split in SPEAKERS:
        choices = [pair for pair, s in wording.items() if s == split]
        for index in range(clips_per_speaker):
            z = draw_prosody(rng)
            rate_wpm = int(round(base_rate * 2 ** (0.25 * z["rate"])))
            word_gap = int(np.clip(round(1.5 - z["rate"]), 0, 4))
            text, polarity = draw_text(rng, choices, rate_wpm, word_gap)
            rows.append({
                "path": f"audio/{name}/{name}_{index:03d}.ogg", **rule(z, polarity, rng),
                "split": split, "speaker": name, "text": text, "voice": voice,
                "polarity": round(polarity, 3), "rate_wpm": rate_wpm,
                "pitch": int(np.clip(round(base_pitch + 12 * z["pitch"]), 0, 99)),
                "pitch_range": int(round(100 * 2 ** (0.6 * z["range"]))),
                "word_gap": word_gap,
                **{f"z_{k}": round(v, 4) for k, v in z.items()},
            })
    table = pd.DataFrame(rows)
    table[list(DIMENSIONS)] = table[list(DIMENSIONS)].round(3)
    table["label_min"], table["label_max"] = LABEL_RANGE
    return table


def draw_text(rng, wordings: list[tuple[str, str]], rate_wpm: int, word_gap: int,
              seconds: tuple[float, float] = (1.9, 3.2)) -> tuple[str, float]:
    """A sentence in one of ``wordings`` whose length at ``rate_wpm`` keeps the clip within
    about 1.5-4 s, and its lexical polarity (adjective polarity times intensifier).

    The duration estimate was fitted on espeak-ng 1.51 output (residual sd 0.24 s).
    """
    for _ in range(100):
        frame, adjective = wordings[rng.integers(len(wordings))]
        intensifier = list(INTENSIFIERS)[rng.integers(len(INTENSIFIERS))]
        text = (f"{SUBJECTS[rng.integers(len(SUBJECTS))].capitalize()} {frame} "
                f"{intensifier}{adjective} {TAILS[rng.integers(len(TAILS))]}.")
        words = len(text.split())
        estimate = 0.55 * words * 60 / rate_wpm + 0.04 * words * word_gap + 0.7
        if seconds[0] <= estimate <= seconds[1]:
            break
    return text, ADJECTIVES[adjective] * INTENSIFIERS[intensifier]


def render_clip(row: pd.Series, out_dir: Path) -> float:
    """Synthesise, shape and write one planned clip; returns its duration in seconds."""
    waveform = speak(row["text"], row["voice"], row["rate_wpm"], row["pitch"],
                     row["pitch_range"], row["word_gap"])
    waveform = apply_effort(trim_silence(waveform), row["z_effort"])
    path = out_dir / row["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Ogg Vorbis: espeak's buzzy speech compresses poorly as FLAC (2.5x larger)
    sf.write(path, waveform.numpy(), SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return len(waveform) / SAMPLE_RATE


def make_sample(out_dir: str | Path, seed: int = 0, clips_per_speaker: int = 72,
                workers: int = 2) -> pd.DataFrame:
    """Plan and synthesise the corpus into ``out_dir`` (audio/ + labels.csv)."""
    out_dir = Path(out_dir)
    plan = plan_corpus(seed, clips_per_speaker)
    rows = [row for _, row in plan.iterrows()]
    with ThreadPoolExecutor(workers) as pool:
        durations = list(tqdm(pool.map(lambda r: render_clip(r, out_dir), rows),
                              total=len(rows), desc="synthesising"))
    plan.insert(list(plan.columns).index("split") + 2, "duration", np.round(durations, 3))
    columns = ["path", *DIMENSIONS, "split", "speaker", "duration", "label_min", "label_max"]
    plan = plan[columns + [c for c in plan.columns if c not in columns]]
    plan.to_csv(out_dir / "labels.csv", index=False)
    return plan


