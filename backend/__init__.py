"""Torch and numerics: models, datasets, activations and their cache. No UI code here."""
