"""The pretraining recipe: its speech never uses the emotion corpus's words, and its targets
are well formed."""

import numpy as np
import torch

from helpers import corpus, pretrain

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
