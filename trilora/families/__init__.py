"""The model families trilora trains: one module each (sd1.py, sd2.py, sdxl.py), the `Family` they build
(family.py), and how a base model or an adapter file is matched to one (registry.py).

This file stays free of heavy imports: the config tree reads the names below for its choices.
Adding a family: docs/adding-a-family.md.
"""

NAMES = ("sd1", "sd2", "sdxl")  # the families registry.py lists, in that order
FAMILY_CHOICES = ("auto", *NAMES)
PREDICTION_TYPES = ("epsilon", "v_prediction")
