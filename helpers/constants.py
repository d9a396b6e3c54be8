"""The numbers every part of the series shares, each defined once."""

SAMPLE_RATE = 16_000       # Hz: what every Wav2Vec2-family backbone takes
FRAME_RATE = 50            # frames per second: the CNN feature encoder's 20 ms stride
DIMENSIONS = ("arousal", "valence", "dominance")
SPLITS = ("train", "dev", "test")
