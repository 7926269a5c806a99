"""How raw images become model inputs: resize, grayscale/RGB, scale to [0, 1], normalize."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from netatlas.backend.errors import NetatlasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Input size (H, W), channel count and per-channel mean/std; part of every cache key."""

    size: tuple[int, int] = (224, 224)
    grayscale: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def __post_init__(self) -> None:
        if self.grayscale:  # ImageNet's RGB defaults would not fit one channel: use their average
            for key, rgb in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
                if tuple(getattr(self, key)) == rgb:
                    object.__setattr__(self, key, (round(sum(rgb) / 3, 4),))
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise NetatlasError(
                f"preprocessing mean/std need 1 or {self.channels} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise NetatlasError(f"preprocessing std must be positive, got {self.std}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        """Build from a sidecar's ``preprocessing`` block; missing fields keep their defaults."""
        kw: dict[str, Any] = {}
        if "size" in d:
            size = [int(v) for v in np.atleast_1d(d["size"])]
            if len(size) not in (1, 2) or min(size) < 1:
                raise NetatlasError(f"input size must be one or two positive numbers, got {d['size']}")
            kw["size"] = (size[0], size[-1])
        if "grayscale" in d:
            kw["grayscale"] = bool(d["grayscale"])
        for key in ("mean", "std"):
            if key in d:
                kw[key] = tuple(float(v) for v in np.atleast_1d(d[key]))
        return cls(**kw)

    @classmethod
    def overriding(cls, base: dict[str, Any], **overrides: Any) -> "Preprocessing | None":
        """``base`` (a sidecar block) with the given fields replaced; None when none is given.

        The CLI flags and the page's fields both come through here, so they mean the same thing.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls.from_dict({**base, **given}) if given else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def uint8_to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """A batch of uint8 images [N, H, W] or [N, H, W, C] (any size) -> a float tensor [N, C, h, w]."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 4:
            x = x[:, :3]
        if self.grayscale and x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif not self.grayscale and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear",
                                                antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def is_model_ready(self, image: np.ndarray) -> bool:
        """True when a decoded uint8 image is already what the model takes (size and channels)."""
        return image.shape[:2] == tuple(self.size) and (image.ndim == 3) != self.grayscale

    def pil_to_uint8(self, image: Image.Image) -> np.ndarray:
        """A decoded file -> uint8 [H, W] or [H, W, 3] at the model's size (resizing once, on load)."""
        image = image.convert("L" if self.grayscale else "RGB")
        if image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        return np.asarray(image)
