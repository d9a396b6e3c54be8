"""The bundled backbone's pretraining recipe: its settings in one table (read by ``pretrain``
and the ``pretrain-backbone`` command, checked against what the shipped backbone recorded)."""

RECIPE = {"seed": 0, "width": 256, "steps": 1400, "batch_size": 16, "lr": 8e-4,
          "prosody_weight": 0.1}
