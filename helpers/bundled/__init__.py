"""The machinery behind the bundled default, kept apart from what the series teaches: the
synthetic corpus generator and its datasheet, the tiny backbone's pretraining recipe, and the
prosodic and layer-wise probes that describe both."""
