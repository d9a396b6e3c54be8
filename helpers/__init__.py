"""helpers: the small library behind the notebook series on efficient Wav2Vec2 finetuning
for dimensional speech emotion recognition (arousal, valence, dominance)."""

__version__ = "0.1.0"
