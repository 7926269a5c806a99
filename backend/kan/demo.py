"""The demo KANs in assets/kan/, trained by assets/train_kan_demo.py: two [2, 1, 1] KANs on
f(x, y) = exp(sin(pi x) + y^2) and a wide [64, 16, 10] KAN on scikit-learn's 8x8 digits."""

from __future__ import annotations

from pathlib import Path

from netatlas.backend.demo import assets_dir


def kan_assets() -> Path:
    return assets_dir() / "kan"


def demo_kan() -> Path:
    """pykan's own checkpoint (the ``_state`` file of its saveckpt triple)."""
    return kan_assets() / "pykan_exp_sin_state"


def demo_sample() -> Path:
    """Inputs [N, 2] on [-1, 1]^2 for the demos that carry no sample of their own."""
    return kan_assets() / "exp_sin_sample.npz"


def demo_digits_kan() -> Path:
    """An efficient-kan state_dict of widths [64, 16, 10]: the wide-layer demo, a digits classifier."""
    return kan_assets() / "efficient_kan_digits.pt"


def demo_digits_sample() -> Path:
    """Its held-out digits: "x" [360, 64] (pixels on [-1, 1]) and "labels" [360]."""
    return kan_assets() / "digits_sample.npz"


def demo_samples() -> dict[Path, Path]:
    """Each demo checkpoint that carries no sample of its own, and the sample file that goes with it."""
    return {kan_assets() / "efficient_kan_exp_sin.pt": demo_sample(), demo_digits_kan(): demo_digits_sample()}
