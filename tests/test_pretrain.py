"""The pretraining recipe: its speech never uses the emotion corpus's words, and its targets
are well formed."""

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.bundled import corpus, pretrain

FUNCTION_WORDS = {"the", "a", "and", "at", "on", "all", "this", "after", "about", "were", "was"}


def words(phrases) -> set[str]:
    return {word for phrase in phrases for word in phrase.lower().split()}


def test_pretraining_vocabulary_is_disjoint_from_the_emotion_corpus():
    emotion = words([*corpus.SUBJECTS, *corpus.FRAMES, *corpus.INTENSIFIERS, *corpus.TAILS,
                     *corpus.ADJECTIVES]) - FUNCTION_WORDS
    sentences = pretrain.pretraining_sentences(np.random.default_rng(0), 2000)
    heard = words(s.strip(".") for s in sentences)
    assert not heard & emotion, sorted(heard & emotion)
    assert len(heard) > 300  # wide enough to cover English phonotactics, not a few phrases
    voices = {voice for _, voice, *_ in corpus.SPEAKERS}
    assert not voices & set(pretrain.VOICES)


def test_sentences_are_reproducible_from_the_seed():
    draw = lambda seed: pretrain.pretraining_sentences(np.random.default_rng(seed), 50)
    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_prosody_targets_have_one_row_per_frame_and_track_loudness():
    t = torch.arange(16_000) / 16_000
    tone = 0.1 * torch.sin(2 * torch.pi * 200 * t) * torch.linspace(0.1, 1.0, 16_000)
    targets = pretrain.prosody_targets(tone, num_frames=49)
    assert targets.shape == (49, 2) and torch.isfinite(targets).all()
    energy = targets[:, 1]
    assert energy[-5:].mean() > energy[:5].mean() + 0.5  # louder end, higher energy target


def probes(valence_top: float) -> dict:
    layers = {"arousal": [0.70, 0.80], "valence": [0.30, valence_top], "dominance": [0.5, 0.6]}
    pretrained = pd.DataFrame(layers)
    pretrained["mean"] = pretrained.mean(axis=1)
    random_weights = pretrained * 0 + 0.2
    return {"pretrained": pretrained, "random": random_weights}


def test_rerun_check_reports_gains_and_flags_figures_beyond_the_tolerance():
    figures = pretrain.best_layer_figures(probes(0.5))
    assert figures["gain valence"] == pytest.approx(0.3)
    assert figures["gain mean"] == pytest.approx((0.8 + 0.5 + 0.6) / 3 - 0.2, abs=1e-3)
    close = pretrain.compare_figures(probes(0.5), probes(0.52))
    assert close["within tolerance"].all()
    far = pretrain.compare_figures(probes(0.5), probes(0.45))
    assert not far.loc["valence", "within tolerance"] and far.loc["arousal", "within tolerance"]
    assert far.loc["valence", "difference"] == pytest.approx(-0.05)


def test_the_model_cards_command_parses_back_to_the_recorded_recipe():
    from helpers.__main__ import parser

    recipe = {"seed": 3, "steps": 900, "batch_size": 8, "lr": 8e-4, "prosody_weight": 0.25,
              "width": 256}
    command = pretrain.recipe_command(recipe)
    args = parser().parse_args(command.split()[3:])
    assert args.command == "pretrain-backbone"
    assert (args.seed, args.steps, args.batch_size, args.lr, args.prosody_weight, args.width) == (
        3, 900, 8, 8e-4, 0.25, 256)
