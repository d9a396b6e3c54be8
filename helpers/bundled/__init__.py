"""The machinery behind the bundled default, kept apart from what the series teaches: the
synthetic corpus generator and its datasheet, and the tiny backbone's pretraining recipe (the
probes that describe both are taught, so they live in ``helpers/probes.py``)."""
