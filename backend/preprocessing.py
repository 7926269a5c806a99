"""How raw images become model inputs: resize (and center-crop), grayscale/RGB, scale to [0, 1], normalize.

Two conventions cover the models researchers hold: torchvision's and netatlas's own (resize straight to
the input size) and the one timm and Hugging Face image processors use for evaluation (resize the
shorter edge, then center-crop to the input size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from netatlas.backend.errors import NetatlasError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's filters by name; Hugging Face's image processors store them as PIL's integer codes.
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
_TORCH_MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}   # others: bicubic


@dataclass(frozen=True)
class Preprocessing:
    """Input size (H, W), channel count and per-channel mean/std; part of every cache key.

    ``resize``: when set, the shorter edge is resized to it (aspect kept) and the centre cropped to
    ``size``; when None, images are resized straight to ``size``. ``crop_rounding``: where an odd
    margin puts the crop, "floor" as Hugging Face's image processors do, "round" as torchvision's
    CenterCrop (timm's transforms) does; one pixel apart, which moves every value of a digit's edge.
    """

    size: tuple[int, int] = (224, 224)
    grayscale: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int | None = None
    interpolation: str = "bilinear"
    crop_rounding: str = "floor"

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
        if self.interpolation not in INTERPOLATIONS:
            raise NetatlasError(f"unknown interpolation {self.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
        if self.crop_rounding not in ("floor", "round"):
            raise NetatlasError(f"crop_rounding must be floor or round, got {self.crop_rounding!r}")
        if self.resize is not None and self.resize < min(self.size):
            raise NetatlasError(f"resize {self.resize} is smaller than the crop {self.size}: the crop must fit")

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
        if d.get("resize") is not None:
            kw["resize"] = int(d["resize"])
        for key in ("interpolation", "crop_rounding"):
            if key in d:
                kw[key] = str(d[key])
        return cls(**kw)

    @classmethod
    def overriding(cls, base: dict[str, Any], **overrides: Any) -> "Preprocessing | None":
        """``base`` (a sidecar block) with the given fields replaced; None when none is given.

        The CLI flags and the page's fields both come through here, so they mean the same thing.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if "size" in given:   # a new input size: resize straight to it, not to the old crop's edge
            base = {k: v for k, v in base.items() if k != "resize"}
        return cls.from_dict({**base, **given}) if given else None

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON; resize and interpolation only when set, so older cache keys still match."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.resize is None:
            del d["resize"], d["crop_rounding"]
        if self.interpolation == "bilinear":
            del d["interpolation"]
        return d

    def uint8_to_tensor(self, images: np.ndarray, resized: bool = False) -> torch.Tensor:
        """A batch of uint8 images [N, H, W] or [N, H, W, C] (any size) -> a float tensor [N, C, h, w].

        ``resized``: the images already went through ``pil_to_uint8`` (resized and cropped to ``size``).
        """
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
        if not resized:
            x = self._resized(x)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def is_model_ready(self, image: np.ndarray) -> bool:
        """True when a decoded uint8 image is already what the model takes (size and channels)."""
        return self.resize is None and image.shape[:2] == tuple(self.size) and (image.ndim == 3) != self.grayscale

    def pil_to_uint8(self, image: Image.Image) -> np.ndarray:
        """A decoded file -> uint8 [H, W] or [H, W, 3] at the model's size (resizing once, on load)."""
        image = image.convert("L" if self.grayscale else "RGB")
        h, w = self.size
        if self.resize is None:
            if image.size != (w, h):
                image = image.resize((w, h), INTERPOLATIONS[self.interpolation])
            return np.asarray(image)
        new_h, new_w = self.shorter_edge_to(image.size[1], image.size[0])
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        top, left = self._crop_origin(new_h, h), self._crop_origin(new_w, w)
        return np.asarray(image.crop((left, top, left + w, top + h)))

    def shorter_edge_to(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after resizing the shorter edge to ``resize``, as torchvision's Resize(int) computes it."""
        short, long = sorted((height, width))
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def _resized(self, x: torch.Tensor) -> torch.Tensor:
        """A float batch [N, C, h, w] at ``size``: straight, or shorter edge then centre crop."""
        mode = _TORCH_MODES.get(self.interpolation, "bicubic")
        options = {} if mode == "nearest" else {"antialias": True, "align_corners": False}
        target = tuple(self.size) if self.resize is None else self.shorter_edge_to(*x.shape[-2:])
        if tuple(x.shape[-2:]) != target:
            x = torch.nn.functional.interpolate(x, size=target, mode=mode, **options)
            if mode == "bicubic":
                x = x.clamp_(0.0, 1.0)   # bicubic overshoots; PIL clamps to the pixel range too
        if self.resize is None:
            return x
        top, left = self._crop_origin(target[0], self.size[0]), self._crop_origin(target[1], self.size[1])
        return x[..., top:top + self.size[0], left:left + self.size[1]]

    def _crop_origin(self, length: int, crop: int) -> int:
        """Where a centre crop of ``crop`` starts along an edge of ``length``."""
        return (length - crop) // 2 if self.crop_rounding == "floor" else int(round((length - crop) / 2.0))
