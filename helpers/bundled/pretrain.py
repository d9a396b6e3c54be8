"""The recipe behind the bundled tiny backbone: pretraining a small Wav2Vec2 without labels.

No human annotation is needed: the synthesiser says which phonemes it spoke (CTC target), and
pitch and energy can be measured from the audio (an auxiliary frame-level target that keeps
prosody in the upper layers, which pure phoneme recognition would otherwise discard). The
speech uses sentences and voices disjoint from the emotion corpus.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from transformers import Wav2Vec2Model, get_linear_schedule_with_warmup

from ..audio import normalize, read_audio
from ..backbone import tiny_config
from ..checkpoints import atomic_save, rng_state, seed_everything, set_rng_state
from ..config import RunConfig
from ..constants import SAMPLE_RATE
from ..dataset import collate
from ..manifests import sample_manifest
from ..probes import layer_probe, load_probes
from ..train import make_optimizer
from .corpus import apply_effort, draw_prosody, speak, trim_silence
from .recipe import RECIPE

# Voices (espeak voice+variant) not used by the emotion corpus's speakers.
VOICES = ["en-us+m2", "en-us+f1", "en-us+m4", "en-us+f3", "en-gb+m1", "en-gb+f2", "en-gb+m6",
          "en-gb+f4", "en-gb-scotland+f1", "en-gb-scotland+m3", "en-gb-x-rp+m2",
          "en-gb-x-rp+f5", "en-029+f2", "en-029+m5", "en-gb-x-gbclan+m1", "en-us-nyc+f3",
          "en-gb-x-gbcwmd+m2", "en-us+m5", "en-gb+m8", "en-us+f5"]
# A vocabulary disjoint from the emotion corpus's content words, wide enough to cover English
# phonotactics, so phoneme recognition generalises to words the backbone never heard.
NOUNS = ["train", "river", "window", "garden", "bottle", "ladder", "market", "bridge", "pencil",
         "carpet", "engine", "valley", "basket", "kitchen", "mountain", "ticket", "candle",
         "harbour", "blanket", "forest", "museum", "violin", "tunnel", "lemon", "jacket",
         "village", "rocket", "castle", "island", "wagon", "lantern", "puzzle", "table",
         "chair", "mirror", "pocket", "button", "saddle", "feather", "pillow", "hammer",
         "shovel", "bucket", "barrel", "cabin", "cottage", "chimney", "ceiling", "curtain",
         "drawer", "envelope", "folder", "magnet", "needle", "orange", "parcel", "rabbit",
         "sandwich", "tomato", "umbrella", "whistle", "zebra", "biscuit", "camera", "dolphin",
         "elephant", "factory", "giraffe", "helmet", "insect", "jungle", "kettle", "library",
         "meadow", "napkin", "oven", "penguin", "quilt", "radio", "spider", "tractor",
         "uniform", "vessel", "wallet", "yacht", "anchor", "beetle", "cherry", "desert",
         "glacier", "horizon", "iceberg", "juggler", "kayak", "lobster", "monkey",
         "notebook", "ostrich", "planet", "raven", "sailor", "thimble", "volcano", "walrus",
         "carrot", "onion", "pepper", "potato", "melon", "peach", "walnut", "coconut",
         "shoe", "sock", "glove", "scarf", "boot", "coat", "shirt", "belt", "rope", "chain",
         "stone", "brick", "sand", "clay", "wheel", "gate", "fence", "roof", "wall", "floor",
         "path", "road", "lake", "pond", "hill", "cliff", "cave", "shore", "field", "farm",
         "barn", "horse", "sheep", "goat", "duck", "goose", "fox", "owl", "frog", "fish",
         "bread", "cheese", "butter", "sugar", "flour", "honey", "juice", "soup", "rice",
         "clock", "lamp", "spoon", "fork", "knife", "plate", "cup", "jug", "bowl", "box"]
VERBS = ["carried", "painted", "followed", "opened", "measured", "counted", "moved", "washed",
         "found", "fixed", "passed", "checked", "covered", "lifted", "pushed", "built",
         "dropped", "folded", "polished", "repaired", "sorted", "stacked", "wrapped", "cleaned",
         "borrowed", "delivered", "collected", "weighed", "planted", "dried", "boiled",
         "sliced", "mixed", "poured", "filled", "emptied", "locked", "closed", "pulled",
         "dragged", "rolled", "turned", "bought", "sold", "sent", "kept", "held", "drew",
         "threw", "caught", "climbed", "crossed", "visited", "photographed", "described",
         "recorded", "printed", "labelled", "tested", "examined", "ordered", "hid", "chose"]
NEUTRAL_ADJECTIVES = ["green", "yellow", "purple", "brown", "silver", "golden", "wooden",
                      "plastic", "metal", "heavy", "narrow", "wide", "round", "square", "flat",
                      "tall", "short", "empty", "full", "wet", "dry", "warm", "cold", "soft",
                      "hard", "smooth", "rough", "shiny", "dusty", "striped", "spotted",
                      "frozen", "broken", "folded", "second", "third", "middle", "upper",
                      "lower", "northern", "southern", "eastern", "western", "plain", "tiny",
                      "huge", "thick", "thin", "sticky"]
PLACES = ["near the", "under the", "behind the", "beside the", "across the", "inside the",
          "over the", "below the", "between the", "around the", "into the", "through the",
          "along the", "beyond the", "next to the", "outside the"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "fifteen", "twenty", "thirty", "forty", "fifty", "sixty", "ninety",
           "a hundred", "a thousand"]
PEOPLE = ["someone", "nobody", "the farmer", "the baker", "the driver", "the painter",
          "a tourist", "the porter", "the gardener", "a stranger", "the captain", "the nurse",
          "the clerk", "a child", "the cook", "the tailor", "the miner", "the plumber"]
WHEN = ["on monday", "on tuesday", "on friday", "in june", "in april", "in october",
        "at noon", "at dawn", "at midnight", "in the evening", "in winter", "in summer",
        "every sunday", "twice", "once again", "later on", "yesterday", "at five"]


@dataclass
class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length (little padding), in a new shuffled order every epoch: the
    pretraining recipe's batching, kept as it was so the recipe reruns bit for bit."""

    lengths: Sequence[int]
    batch_size: int
    shuffle: bool = True
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.argsort(np.asarray(self.lengths), kind="stable").tolist()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)



def pretraining_sentences(rng, count: int) -> list[str]:
    """Neutral sentences built from a vocabulary the emotion corpus never uses."""
    pick = lambda words: words[rng.integers(len(words))]
    forms = [
        lambda: f"the {pick(NOUNS)} {pick(VERBS)} the {pick(NOUNS)} {pick(PLACES)} {pick(NOUNS)}",
        lambda: f"{pick(NUMBERS)} {pick(NEUTRAL_ADJECTIVES)} {pick(NOUNS)}s were {pick(VERBS)} "
                f"{pick(PLACES)} {pick(NOUNS)}",
        lambda: f"{pick(PEOPLE)} {pick(VERBS)} {pick(NUMBERS)} {pick(NOUNS)}s {pick(WHEN)}",
        lambda: f"{pick(PEOPLE)} {pick(VERBS)} the {pick(NEUTRAL_ADJECTIVES)} {pick(NOUNS)} "
                f"and the {pick(NOUNS)}",
        lambda: f"{pick(WHEN)} the {pick(NEUTRAL_ADJECTIVES)} {pick(NOUNS)} was {pick(VERBS)} "
                f"{pick(PLACES)} {pick(NOUNS)}",
        lambda: f"a {pick(NEUTRAL_ADJECTIVES)} {pick(NOUNS)} "
                f"and a {pick(NEUTRAL_ADJECTIVES)} {pick(NOUNS)}",
    ]
    return [forms[rng.integers(len(forms))]().capitalize() + "." for _ in range(count)]


def phonemes(text: str, voice: str) -> list[str]:
    """espeak-ng's phoneme mnemonics for ``text`` in ``voice``'s accent, stress marks removed,
    with "|" between words."""
    out = subprocess.run(["espeak-ng", "-q", "-x", "--sep= ", "-v", voice.split("+")[0], text],
                         check=True, capture_output=True, text=True).stdout
    words = [[p.strip("',=") for p in word.split(" ") if p.strip("',=")]
             for word in out.replace("\n", "  ").split("  ")]
    return [p for word in words if word for p in (*word, "|")][:-1]


def make_pretraining_speech(out_dir: str | Path, num_clips: int = 3600, seed: int = 1234,
                            workers: int = 2) -> pd.DataFrame:
    """Synthesise unlabelled speech with phoneme transcripts into ``out_dir`` (not the repo)."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    plan = pd.DataFrame({"text": pretraining_sentences(rng, num_clips),
                         "voice": [VOICES[i] for i in rng.integers(len(VOICES), size=num_clips)]})
    prosody = [draw_prosody(rng) for _ in range(num_clips)]
    plan["rate_wpm"] = [int(175 * 2 ** (0.25 * z["rate"])) for z in prosody]
    plan["pitch"] = [int(np.clip(50 + 12 * z["pitch"], 0, 99)) for z in prosody]
    plan["pitch_range"] = [int(100 * 2 ** (0.6 * z["range"])) for z in prosody]
    plan["z_effort"] = [z["effort"] for z in prosody]
    plan["path"] = [f"clips/{i:05d}.ogg" for i in range(num_clips)]

    def render(row) -> tuple[float, str]:
        waveform = speak(row.text, row.voice, row.rate_wpm, row.pitch, row.pitch_range, 1)
        waveform = apply_effort(trim_silence(waveform), row.z_effort)
        (out_dir / row.path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out_dir / row.path, waveform.numpy(), SAMPLE_RATE, format="OGG",
                 subtype="VORBIS")
        return len(waveform) / SAMPLE_RATE, " ".join(phonemes(row.text, row.voice))

    with ThreadPoolExecutor(workers) as pool:
        done = list(tqdm(pool.map(render, plan.itertuples()), total=num_clips,
                         desc="synthesising"))
    plan["duration"], plan["phonemes"] = zip(*done)
    plan.to_csv(out_dir / "transcripts.csv", index=False)
    return plan


# ------------------------------------------------------------------------------- the model
def prosody_targets(waveform: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per 20 ms frame: log pitch (standardised over a typical range) and energy in dB
    relative to the utterance mean, both scaled to roughly unit variance."""
    pitch = AF.detect_pitch_frequency(waveform, SAMPLE_RATE, freq_low=60, freq_high=500)
    pitch = (pitch.log() - math.log(160)) / 0.4
    frames = nn.functional.pad(waveform, (0, 400)).unfold(0, 400, 320)[:num_frames]
    energy = 10 * torch.log10(frames.pow(2).mean(1) + 1e-8)
    energy = (energy - energy.mean()) / 10
    pitch = nn.functional.interpolate(pitch[None, None], size=num_frames, mode="nearest")[0, 0]
    return torch.stack([pitch, energy], dim=1)


class PretrainingModel(nn.Module):
    """A Wav2Vec2 with two heads on its last layer: phoneme CTC and frame pitch/energy."""

    def __init__(self, vocab_size: int, config=None):
        super().__init__()
        self.backbone = Wav2Vec2Model(config or tiny_config())
        width = self.backbone.config.hidden_size
        self.ctc_head = nn.Linear(width, vocab_size + 1)  # + the CTC blank (index 0)
        self.prosody_head = nn.Linear(width, 2)

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor):
        hidden = self.backbone(input_values).last_hidden_state
        frames = self.backbone._get_feat_extract_output_lengths(lengths)
        return self.ctc_head(hidden), self.prosody_head(hidden), frames


# ------------------------------------------------------------------------------- training
class PretrainingSet(torch.utils.data.Dataset):
    """Clips held in memory with their phoneme ids (blank = 0) and prosody targets."""

    def __init__(self, folder: Path, table: pd.DataFrame, vocab: list[str], backbone):
        index = {p: i + 1 for i, p in enumerate(vocab)}
        self.waves = [torch.from_numpy(sf.read(folder / p, dtype="float32")[0])
                      for p in tqdm(table["path"], desc="loading")]
        self.phonemes = [torch.tensor([index[p] for p in s.split(" ")])
                         for s in table["phonemes"]]
        frames = backbone._get_feat_extract_output_lengths(
            torch.tensor([len(w) for w in self.waves])).tolist()
        self.prosody = [prosody_targets(w, n) for w, n in
                        tqdm(zip(self.waves, frames), total=len(frames), desc="pitch, energy")]

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> dict:
        return {"input_values": normalize(self.waves[i]), "labels": torch.zeros(0),
                "phonemes": self.phonemes[i], "prosody": self.prosody[i]}


def pretraining_batch(items: list[dict]) -> dict:
    batch = collate(items, attention_mask=False)
    batch["phonemes"] = [it["phonemes"] for it in items]
    batch["prosody"] = nn.utils.rnn.pad_sequence([it["prosody"] for it in items], True)
    return batch


def pretraining_loss(model: PretrainingModel, batch: dict, prosody_weight: float) -> tuple:
    """CTC on phonemes + weighted mean squared error of pitch/energy over valid frames."""
    logits, prosody, frames = model(batch["input_values"], batch["lengths"])
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)
    phonemes = batch["phonemes"]
    ctc = nn.functional.ctc_loss(log_probs, torch.cat(phonemes), frames,
                                 torch.tensor([len(t) for t in phonemes]), zero_infinity=True)
    target = batch["prosody"]
    steps = min(target.shape[1], prosody.shape[1])
    valid = (torch.arange(steps) < frames[:, None]).unsqueeze(-1)
    error = (prosody[:, :steps].float() - target[:, :steps]).pow(2) * valid
    aux = error.sum() / (valid.sum() * 2)
    return ctc + prosody_weight * aux, ctc.detach(), aux.detach()


# The bundled backbone's recipe: the defaults of ``pretrain`` and of ``python -m helpers
# pretrain-backbone`` (a test checks them against what the shipped backbone recorded).


def pretrain(speech_dir: str | Path, out_dir: str | Path, num_steps: int = RECIPE["steps"],
             batch_size: int = RECIPE["batch_size"], lr: float = RECIPE["lr"],
             prosody_weight: float = RECIPE["prosody_weight"], width: int = RECIPE["width"],
             seed: int = RECIPE["seed"], checkpoint_every: int = 250) -> dict:
    """Train the backbone with CTC + prosody, checkpointing (and resuming) in ``out_dir``;
    save the final backbone as safetensors + config.json and the loss curve as JSON."""
    speech_dir, out_dir = Path(speech_dir), Path(out_dir)
    table = pd.read_csv(speech_dir / "transcripts.csv")
    vocab = sorted({p for s in table["phonemes"] for p in s.split(" ")})
    seed_everything(seed)
    model = PretrainingModel(len(vocab), tiny_config(width))
    model.backbone.config.layerdrop = 0.05
    dataset = PretrainingSet(speech_dir, table, vocab, model.backbone)
    sampler = LengthBucketSampler(table["duration"].tolist(), batch_size, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         collate_fn=pretraining_batch)
    optimizer = make_optimizer(model, lr, RunConfig.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_steps // 10, num_steps)
    checkpoint, curve, step = out_dir / "pretrain_checkpoint.pt", [], 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state)
        curve, step = state["curve"], state["step"]
    model.train()
    progress = tqdm(total=num_steps, initial=step, desc="pretraining")
    start = time.perf_counter()
    while step < num_steps:
        sampler.set_epoch(step // len(loader))
        for batch in loader:
            loss, ctc, aux = pretraining_loss(model, batch, prosody_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            curve.append([step, round(ctc.item(), 4), round(aux.item(), 4)])
            progress.update(1)
            progress.set_postfix(ctc=f"{ctc.item():.2f}", prosody=f"{aux.item():.2f}")
            if step % checkpoint_every == 0 or step == num_steps:
                atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "curve": curve,
                             "step": step, **rng_state()}, checkpoint)
            if step >= num_steps:
                break
    progress.close()
    save_model(model, out_dir)
    words = {w for text in table["text"] for w in text.strip(".").lower().split()}
    summary = {"steps": num_steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "prosody_weight": prosody_weight, "vocab": vocab, "curve": curve,
               "seconds_this_run": round(time.perf_counter() - start, 1),
               "threads": torch.get_num_threads(),
               "hours_of_speech": round(table["duration"].sum() / 3600, 2),
               "num_clips": len(table), "vocabulary_words": len(words)}
    (out_dir / "pretraining.json").write_text(json.dumps(summary))
    checkpoint.unlink()  # finished: only an interrupted run needs it
    return summary


HEADS_FILE = "pretraining_heads.safetensors"


def save_model(model: PretrainingModel, out_dir: Path) -> None:
    """The backbone as a plain Wav2Vec2Model folder, the two heads beside it (for the
    appendix's CTC decoding; ``load_backbone`` ignores them)."""
    model.backbone.config.layerdrop = 0.0
    model.backbone.save_pretrained(out_dir, safe_serialization=True)
    heads = {f"{name}.{key}": value.contiguous() for name in ("ctc_head", "prosody_head")
             for key, value in getattr(model, name).state_dict().items()}
    save_file(heads, Path(out_dir) / HEADS_FILE)


def load_pretraining_heads(folder: str | Path) -> PretrainingModel:
    """The bundled backbone with its CTC and prosody heads, ready for decoding."""
    folder = Path(folder)
    vocab = json.loads((folder / "pretraining.json").read_text())["vocab"]
    backbone = Wav2Vec2Model.from_pretrained(folder)
    model = PretrainingModel(len(vocab), backbone.config)
    model.backbone = backbone
    model.load_state_dict(load_file(folder / HEADS_FILE), strict=False)
    model.vocab = vocab
    return model.eval()


@torch.no_grad()
def greedy_phonemes(model: PretrainingModel, path: str | Path) -> list[str]:
    """Greedy CTC decoding: the most likely symbol per frame, repeats merged, blanks dropped."""
    waveform = normalize(read_audio(path))
    logits, _, _ = model(waveform[None], torch.tensor([len(waveform)]))
    best = logits[0].argmax(-1).tolist()
    merged = [s for i, s in enumerate(best) if s != 0 and (i == 0 or s != best[i - 1])]
    return [model.vocab[s - 1] for s in merged]


def probe_and_describe(folder: str | Path, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Layer-wise probe of the saved backbone and of the same architecture with random
    weights, on the bundled emotion corpus; writes probe.json and the model card."""
    manifest = sample_manifest()
    pretrained = Wav2Vec2Model.from_pretrained(folder)
    torch.manual_seed(seed)
    random_weights = Wav2Vec2Model(pretrained.config)
    probes = {"pretrained": layer_probe(pretrained, manifest),
              "random": layer_probe(random_weights, manifest)}
    write_model_card(folder, probes)
    return probes


def best_layer_figures(probes: dict[str, pd.DataFrame]) -> pd.Series:
    """The figures the model card reports: best-layer CCC per dimension of the pretrained
    backbone, and its best-layer gains over random weights (mean and valence)."""
    pretrained, random_weights = probes["pretrained"], probes["random"]
    gains = {f"gain {d}": pretrained[d].max() - random_weights[d].max()
             for d in ("mean", "valence")}
    return pd.Series({**pretrained.max().to_dict(), **gains})


# How far a from-scratch rerun's probe figures may land from the reported ones.
RERUN_TOLERANCE = 0.03
RERUN_FILE = "rerun_check.json"


def compare_figures(reported: dict[str, pd.DataFrame], rerun: dict[str, pd.DataFrame],
                    tolerance: float = RERUN_TOLERANCE) -> pd.DataFrame:
    """Reported against rerun best-layer figures, with their difference and whether it is
    within ``tolerance``."""
    table = pd.DataFrame({"reported": best_layer_figures(reported),
                          "rerun": best_layer_figures(rerun)}).round(3)
    table["difference"] = (table["rerun"] - table["reported"]).round(3)
    table["within tolerance"] = table["difference"].abs() <= tolerance + 1e-9
    return table


def rerun_check(reported: str | Path, rerun: str | Path) -> pd.DataFrame:
    """Compare a from-scratch rerun of the recipe with the reported backbone, figure by figure;
    the table is saved beside the reported backbone and shown in its model card."""
    reported_probes = load_probes(reported)
    table = compare_figures(reported_probes, load_probes(rerun))
    (Path(reported) / RERUN_FILE).write_text(table.to_json(orient="index"))
    write_model_card(reported, reported_probes)
    return table


def rerun_section(folder: Path) -> str:
    """The model card's reproducibility paragraph, from the saved rerun check if any."""
    if not (folder / RERUN_FILE).is_file():
        return ("Not yet checked: rerun the recipe into another folder, then run "
                "`python -m helpers check-rerun FOLDER`.")
    table = pd.read_json(folder / RERUN_FILE, orient="index")
    verdict = "every figure within" if table["within tolerance"].all() else "NOT all within"
    return (f"The recipe was rerun from scratch (speech re-synthesised, same command and seed) "
            f"and probed again: {verdict} {RERUN_TOLERANCE} of the reported ones.\n\n"
            f"{table.to_markdown()}")


# Runs of the recipe and their probe results, kept in the model card whichever one is shipped.
TRIED_RECIPES = [
    ("2.9 M (width 192), 2.62 h, 99 words, 1200 steps, lr 5e-4, prosody weight 1.0",
     "+0.134 / +0.203", "all at layers 1-2"),
    ("2.9 M (width 192), 535 words, 1400 steps, lr 5e-4, prosody weight 0.5",
     "+0.187 / +0.292", "all at layers 1-2 of 6"),
    ("the same, pure CTC (prosody weight 0)", "+0.139 / +0.331",
     "valence at the top (6); arousal, dominance at 1, fading upwards"),
    ("5.1 M (width 256), 535 words, 1400 steps, lr 8e-4, prosody weight 0.25",
     "+0.203 / +0.378", "valence at 1; arousal at 4; dominance at the top (6)"),
    ("the same with prosody weight 0.1 (an earlier run, on a CPU without AVX-512)",
     "+0.230 / +0.404",
     "arousal at 0, valence at 2, dominance at 3; the top layer within 0.06 of each"),
]


def read_recipe(folder: str | Path) -> dict:
    """The recipe settings a pretraining run in ``folder`` used (its options' values)."""
    summary = json.loads((Path(folder) / "pretraining.json").read_text())
    config = json.loads((Path(folder) / "config.json").read_text())
    return {option: config["hidden_size"] if option == "width" else summary[option]
            for option in RECIPE}


def recipe_command(recipe: dict) -> str:
    """The command line that reproduces a pretraining run, every recipe setting spelled out."""
    options = " ".join(f"--{option.replace('_', '-')} {recipe[option]:g}"
                       for option in RECIPE)
    return f"python -m helpers pretrain-backbone {options}"


def write_model_card(folder: str | Path, probes: dict[str, pd.DataFrame]) -> None:
    """The backbone's README: recipe, training figures, and the layer-wise probe table."""
    folder = Path(folder)
    summary = json.loads((folder / "pretraining.json").read_text())
    curve = np.array(summary["curve"])
    pretrained, random_weights = probes["pretrained"], probes["random"]
    dimensions = pretrained.drop(columns="mean")
    best = dimensions.max()
    top_gap = (best - dimensions.iloc[-1]).max()
    figures = best_layer_figures(probes)
    gain_mean, gain_valence = figures["gain mean"], figures["gain valence"]
    table = pd.concat({"bundled": pretrained, "random": random_weights}, axis=1)
    table.columns = [f"{source} {dimension}" for source, dimension in table.columns]
    (folder / "probe.json").write_text(json.dumps({k: v.to_dict(orient="list")
                                                    for k, v in probes.items()}))
    config = json.loads((folder / "config.json").read_text())
    command = recipe_command(read_recipe(folder))
    peaks = ", ".join(f"{d} at {int(pretrained[d].idxmax())}" for d in best.index)
    this_run = (f"| **this backbone**, `{command}` | "
                f"**{gain_mean:+.3f} / {gain_valence:+.3f}** | {peaks}; the top layer within "
                f"{top_gap:.2f} of each |")
    millions = sum(v.numel() for v in
                   Wav2Vec2Model.from_pretrained(folder).state_dict().values()) / 1e6
    (folder / "README.md").write_text(f"""# The bundled tiny Wav2Vec2 backbone

A small Wav2Vec2 (transformers `Wav2Vec2Model`, {millions:.1f} M parameters: a
{len(config['conv_dim'])}-layer CNN feature encoder of width {config['conv_dim'][0]} with the
standard strides, {config['num_hidden_layers']} post-LN transformer layers of width
{config['hidden_size']}, {config['num_attention_heads']} heads) pretrained by this project on
synthetic speech. Load it with `load_backbone("tiny")` or plain
`Wav2Vec2Model.from_pretrained("data_sample/backbone")`.

**Why base-like (group-norm CNN, post-LN layers):** it mirrors `facebook/wav2vec2-base`, the
model the study finetunes, so the series' methods (and their quirks: no attention mask for
group-norm models, a final layer norm only in pre-LN models) are exercised on the bundled
default exactly as on the real model. Tests cover the layer-norm variant separately.

## Recipe
`{command}` (needs espeak-ng):
{summary['hours_of_speech']} h of espeak-ng speech ({summary.get('num_clips', '?')} neutral
sentences from a vocabulary of {summary.get('vocabulary_words', '?')} words; words and voices
disjoint from the emotion corpus), {summary['steps']} steps of batch {summary['batch_size']},
AdamW at {summary['lr']} with warm-up and linear decay, LayerDrop 0.05, on a 2-core CPU
({summary['seconds_this_run'] / 60:.0f} minutes, {summary.get('threads', 2)} threads). The command
also runs the probe below and rewrites this card. Objective:
- **phoneme CTC** on espeak-ng's own transcriptions of what it spoke (no human labels), and
- **frame-level pitch and energy regression** (weight {summary['prosody_weight']}), measured
  from the audio. Pure CTC makes the top layers specialise in phonemes and discard prosody
  (the study's backbones, trained self-supervised, keep more of it); the auxiliary target keeps
  arousal and dominance readable near the top, closer to a self-supervised model.

Final losses (mean of the last 50 steps): CTC {curve[-50:, 1].mean():.3f}, pitch/energy
{curve[-50:, 2].mean():.3f}. The CTC and prosody heads are in `{HEADS_FILE}` (used by the
appendix notebook for greedy phoneme decoding; `load_backbone` ignores them).

## What it knows: layer-wise probe on the bundled emotion corpus
Frozen backbone in eval mode, mean-pooled hidden states of every layer, ridge regression fit
on the train speakers (strength chosen on dev), CCC on the test speakers. Layer 0 is the input
to the first transformer layer. Best layer, bundled vs the same architecture with random
weights: **mean CCC {pretrained['mean'].max():.3f} vs {random_weights['mean'].max():.3f}
({gain_mean:+.3f})**, **valence {pretrained['valence'].max():.3f} vs
{random_weights['valence'].max():.3f} ({gain_valence:+.3f})**. Best single-layer CCC per
dimension: {', '.join(f'{d} {v:.3f} (layer {int(pretrained[d].idxmax())})' for d, v in best.items())}.

{table.round(3).to_markdown()}

## Against the series' target
The bundled backbone should beat random weights at its best layer by at least 0.20 mean CCC
and 0.40 on valence. This one reaches {gain_mean:+.3f} and {gain_valence:+.3f}:
{"both met." if gain_mean >= 0.20 and gain_valence >= 0.40 else
 f"not yet met. Valence, which needs the words, falls short most: it peaks at layer "
 f"{int(pretrained['valence'].idxmax())} of {len(pretrained) - 1}."}

## What was tried
Each row is one run of the recipe (seed 0; {summary['hours_of_speech']} h of speech unless
said), probed as above:

| recipe | best-layer gain over random weights (mean / valence) | where the dimensions peak |
|---|---|---|
{chr(10).join(f"| {recipe} | {gains} | {where} |" for recipe, gains, where in TRIED_RECIPES)}
{this_run}

The second recipe widened the vocabulary: with under a hundred words a model can learn the
words themselves rather than phonemes, and the emotion corpus's adjectives are words it never
heard. Its pure-CTC twin shows what the prosody target is for: valence (the words) peaked at
the top layer and gained more, but arousal and dominance faded towards the top, as the upper
layers specialised in phonemes. Widening the model to 256 (with a higher learning rate and a
lower prosody weight, changed together) brought the CTC loss from about 0.8 to 0.44 (mean of
the last 50 steps) within the same 1400 steps, and arousal and dominance read best in the
upper layers. Lowering the prosody weight further, to 0.1, was the first run to meet both
targets, and it is the one shipped (the recipe's defaults): every dimension stays readable
at the top layer (within {top_gap:.2f} CCC of its best layer), the profile closest to a
self-supervised model's, whose upper layers keep general acoustics rather than only phonemes.

## Reproducibility
{rerun_section(folder)}

## What it does not know
It has heard only espeak-ng's synthetic voices reading short English sentences: no human
speech, no noise, no other languages, no real emotion. It exists to make the series'
comparisons meaningful offline; use `facebook/wav2vec2-base` for real work.
""")
