"""Activation maximization: synthetic images that drive one unit, k facets optimized as one batch.

Two optimizers (SCIENCE.md section 2):
- "paper" (Nguyen, Yosinski & Clune 2016): normalized gradient ascent on pixels, total-variation
  denoising after every step, centre-biased jitter, and a canvas that grows ~1.2x per stage.
- "lucid" (Olah et al., Distill 2017): a 1/f-scaled Fourier spectrum through decorrelated colour and
  a sigmoid, random jitter/scale/rotation each step, Adam.
The unit is read with ``first_tensor``/``reduce_output``, so the optimized number is exactly the one
the Neurons view shows for the same layer and unit.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netatlas.backend.activations import first_tensor, pooled_output, reduce_output
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError

Optimizer = Literal["paper", "lucid"]
Progress = Callable[[int, int], None]
Loss = Callable[[torch.Tensor], torch.Tensor]  # pixels [k, C, H, W] in [0, 1] -> scalar to minimize

PAPER_LR = 0.02           # mean pixel change per step (normalized gradient): 2% of [0, 1]
TV_SHARE = 0.5            # TV denoising step as a fraction of the ascent step
CANVAS_GROWTH = 1.2       # the paper's upsampling factor between canvas stages
CANVAS_STAGES = 4         # 224 px: 130 -> 156 -> 187 -> 224
MIN_CANVAS = 32           # no stage smaller: a 16 px canvas of a 28 px digit blurs its strokes away
LUCID_LR = 0.05
LUCID_DIVISOR = 4.0       # Lucid's spectrum-to-image scaling, kept so that its lr means the same here
LUCID_ZOOM = 0.05         # random zoom within 1 +- this
LUCID_ROTATE = 10.0       # random rotation within +- this many degrees
SIGMOID_CLAMP = 0.01      # pixels clamped to [c, 1 - c] before the inverse sigmoid (finite, not saturated)


@dataclass(frozen=True)
class FeatvizSettings:
    """How to optimize; part of the facet cache key."""

    optimizer: Optimizer = "paper"
    steps: int = 200
    lr: float | None = None        # None: the optimizer's default (paper 0.02 pixels/step; lucid Adam 0.05)
    diversity: float = 0.0         # weight of the Distill diversity term (0 = off)
    jitter: int | None = None      # pixels; None = ~ size/16 (at least 1)
    seed: int = 0


@dataclass(frozen=True)
class Objective:
    """The unit to maximize, named as the Neurons view names it."""

    layer: str    # a module name from model.named_modules(); "" means the model output (class logits)
    unit: int     # channel (conv: mean over space), feature, or class index


Probe = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@contextmanager
def _probed(model: nn.Module, objective: Objective, with_style: bool = False) -> Iterator[Probe]:
    """Yield x -> (unit activation [B], the layer's style features or None) with the model in eval
    mode and its parameters frozen; modes, requires_grad flags and hooks are restored however this exits."""
    modules = dict(model.named_modules())
    if objective.layer not in modules:
        raise NetatlasError(f"no module named {objective.layer!r} in this model; "
                            f"`netatlas info` lists the module names")
    module = modules[objective.layer]
    read: list = []

    def capture(features: torch.Tensor, output: bool = False) -> None:
        # Read at once, as extract_activations does: an in-place op after the layer (a
        # ReLU(inplace=True) after a BatchNorm) must not change what the objective sees. The model's
        # own output is read as the extraction reads it (pooled_output).
        units = pooled_output(features) if output else reduce_output(features, module, "mean")
        read[:] = [units, _style(features, module) if with_style else None]

    def probe(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        read.clear()
        output = first_tensor(model(x))
        if not objective.layer:
            capture(output, output=True)
        if not read:
            raise NetatlasError(f"layer {objective.layer!r} did not run in the model's forward pass")
        units, style = read
        if not 0 <= objective.unit < units.shape[1]:
            raise NetatlasError(f"unit {objective.unit} is out of range: layer {objective.layer or 'output'!r} "
                                f"has {units.shape[1]} units (0-{units.shape[1] - 1})")
        return units[:, objective.unit], style

    training = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # A module run twice per forward (a shared ReLU): the last run counts, as in extract_activations.
    handle = (module.register_forward_hook(lambda _m, _i, output: capture(first_tensor(output)))
              if objective.layer else None)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield probe
    finally:
        if handle is not None:
            handle.remove()
        for m, mode in training.items():
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def _style(features: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Per-image Gram matrix of the layer's units over positions (what the image contains, wherever
    it is: Distill's diversity compares these), or the feature vector of a non-spatial layer."""
    if features.ndim <= 2:
        return features.flatten(1).clone()
    # A 3-D output: ask reduce_output whether its units are channels [B, C, L] or features [B, T, D].
    tokens = features.ndim == 3 and reduce_output(features.new_zeros(1, 1, 2), module, "mean").shape[1] == 2
    maps = (features.transpose(1, 2) if tokens else features.flatten(2)).clone()  # safe from in-place ops
    return maps @ maps.transpose(1, 2)


def _similarity(style: torch.Tensor) -> torch.Tensor:
    """Sum over ordered pairs i != j of the cosine similarity of rows: the diversity penalty."""
    rows = F.normalize(style.flatten(1), dim=1, eps=1e-10)
    sim = rows @ rows.T
    return sim.sum() - sim.diagonal().sum()


def unit_activation(model: nn.Module, x: torch.Tensor, objective: Objective) -> torch.Tensor:
    """[B] activation of the unit for model inputs x (no grad, eval mode), hooks removed afterwards."""
    with _probed(model, objective) as probe, torch.no_grad():
        return probe(x.to(_device(model, x)))[0].float().to(x.device)


def diversity(features: torch.Tensor) -> float:
    """Mean pairwise (1 - cosine similarity) between rows of features [k, D] (0 when k < 2)."""
    rows = torch.as_tensor(features).detach().double().flatten(1)
    k = len(rows)
    return 0.0 if k < 2 else float(1 - _similarity(rows) / (k * (k - 1)))


def color_correlation(images: np.ndarray) -> torch.Tensor:
    """[C, C] square root of the channel covariance of uint8 images [N,H,W(,3)] scaled to [0,1]
    (Lucid's decorrelated colour, from the user's own data); [[1.]] for grayscale."""
    images = np.asarray(images)
    if images.ndim == 3 or images.shape[-1] == 1:
        return torch.ones(1, 1)
    flat = images[..., :3].reshape(-1, 3)
    total, outer = np.zeros(3), np.zeros((3, 3))
    for i in range(0, len(flat), 1 << 20):  # exact covariance in chunks: never a float copy of all pixels
        chunk = flat[i:i + (1 << 20)].astype(np.float64) / 255.0
        total += chunk.sum(0)
        outer += chunk.T @ chunk
    n = len(flat)
    cov = (outer - np.outer(total, total) / n) / max(n - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    return torch.from_numpy((eigvecs * np.sqrt(eigvals.clip(0))) @ eigvecs.T).float()


def noise_start(k: int, preprocessing: Preprocessing, seed: int = 0) -> torch.Tensor:
    """[k, C, H, W] random-noise starting images (the baseline): grey 0.5 +- 0.1, in model-input space."""
    g = torch.Generator().manual_seed(seed)
    pixels = (0.5 + 0.1 * torch.randn(k, preprocessing.channels, *preprocessing.size, generator=g)).clamp(0, 1)
    return _to_model(pixels, preprocessing)


def to_uint8(x: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """model-input batch -> uint8 display images [k,H,W] (grayscale) or [k,H,W,3]."""
    pixels = _to_pixels(x.detach().float().cpu(), preprocessing).clamp(0, 1)
    images = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return images[..., 0] if images.shape[-1] == 1 else images


def maximize(model: nn.Module, start: torch.Tensor, objective: Objective, preprocessing: Preprocessing,
             settings: FeatvizSettings = FeatvizSettings(), progress: Progress | None = None,
             colors: torch.Tensor | None = None) -> torch.Tensor:
    """Optimize a batch of k images (model-input space, [k, C, H, W]) to maximize the unit, all k as
    ONE batch (one forward/backward per step). Returns the batch in model-input space, clamped to
    the valid pixel range. The model is left as it was, also when ``progress`` raises (cancel)."""
    _check(start, preprocessing, settings)
    device = _device(model, start)
    pixels = _to_pixels(start.detach().float().to(device), preprocessing).clamp(0, 1)
    generator = torch.Generator().manual_seed(settings.seed)
    jitter = settings.jitter if settings.jitter is not None else max(1, round(min(preprocessing.size) / 16))
    report = progress or (lambda _step, _total: None)

    with_style = settings.diversity > 0 and len(start) > 1
    with _probed(model, objective, with_style) as probe:
        def loss(images: torch.Tensor) -> torch.Tensor:
            activation, style = probe(_to_model(images, preprocessing))
            return (settings.diversity * _similarity(style) if with_style else 0) - activation.sum()

        if settings.optimizer == "paper":
            out = _paper(loss, pixels, settings, jitter, generator, report)
        else:
            out = _lucid(loss, pixels, settings, jitter, generator, report, _colour_mix(colors, pixels))
    return _to_model(out.detach().clamp(0, 1), preprocessing).to(start.device)


def _check(start: torch.Tensor, preprocessing: Preprocessing, settings: FeatvizSettings) -> None:
    if settings.optimizer not in ("paper", "lucid"):
        raise NetatlasError(f"unknown optimizer {settings.optimizer!r}: use paper or lucid")
    if settings.steps < 0:
        raise NetatlasError(f"steps must be 0 or more, got {settings.steps}")
    expected = (preprocessing.channels, *preprocessing.size)
    if start.ndim != 4 or tuple(start.shape[1:]) != expected or len(start) == 0:
        raise NetatlasError(f"starting images must be [k, {', '.join(map(str, expected))}] "
                            f"(k >= 1), got {list(start.shape)}")


def _paper(loss: Loss, pixels: torch.Tensor, settings: FeatvizSettings, jitter: int,
           generator: torch.Generator, report: Progress) -> torch.Tensor:
    """Normalized gradient ascent with TV denoising and centre-biased jitter on a growing canvas."""
    lr = settings.lr if settings.lr is not None else PAPER_LR
    full = tuple(pixels.shape[-2:])
    stages = min(canvas_stages(min(full)), max(settings.steps, 1))
    canvas, done = pixels, 0
    for stage in range(stages):
        shrink = CANVAS_GROWTH ** (stages - 1 - stage)
        canvas = _resize(canvas, (round(full[0] / shrink), round(full[1] / shrink))).clamp(0, 1)
        for _ in range(settings.steps * (stage + 1) // stages - settings.steps * stage // stages):
            canvas.requires_grad_(True)
            shift = (torch.randn(2, generator=generator) * jitter / 2).round().clamp(-jitter, jitter)
            image = torch.roll(_resize(canvas, full), [int(s) for s in shift], dims=(2, 3))
            grad, = torch.autograd.grad(loss(image), canvas)
            with torch.no_grad():
                step = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
                canvas = canvas - lr * step
                canvas = (canvas - TV_SHARE * lr * _tv_gradient(canvas)).clamp(0, 1)
            done += 1
            report(done, settings.steps)
    return canvas


def canvas_stages(side: int) -> int:
    """The paper's growing canvas: up to ``CANVAS_STAGES`` stages, each ``CANVAS_GROWTH`` times the last, none
    smaller than ``MIN_CANVAS`` pixels (a 28 px image is optimized at full size: its facets then keep the
    strokes of their starting digits, and are more diverse than those starts; at 16 px they were grey
    smears less diverse than the starts)."""
    stages = 1
    while stages < CANVAS_STAGES and side / CANVAS_GROWTH ** stages >= MIN_CANVAS:
        stages += 1
    return stages


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _tv_gradient(x: torch.Tensor) -> torch.Tensor:
    """Gradient of a smoothed isotropic total variation: a step down it removes speckle, keeps edges."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        tv = torch.sqrt(dx ** 2 + dy ** 2 + 1e-4).sum()
        return torch.autograd.grad(tv, x)[0]


def _lucid(loss: Loss, pixels: torch.Tensor, settings: FeatvizSettings, jitter: int,
           generator: torch.Generator, report: Progress, mix: torch.Tensor) -> torch.Tensor:
    """Adam on a decorrelated Fourier parameterization, under random affine transforms."""
    size = tuple(pixels.shape[-2:])
    scale = _spectrum_scale(*size, device=pixels.device)
    spectrum = _to_spectrum(pixels, mix, scale).requires_grad_(True)
    optimizer = torch.optim.Adam([spectrum], lr=settings.lr if settings.lr is not None else LUCID_LR)
    for step in range(settings.steps):
        optimizer.zero_grad()
        loss(_random_affine(_from_spectrum(spectrum, mix, scale, size), jitter, generator)).backward()
        optimizer.step()
        report(step + 1, settings.steps)
    with torch.no_grad():
        return _from_spectrum(spectrum, mix, scale, size)


def _spectrum_scale(h: int, w: int, device: torch.device) -> torch.Tensor:
    """1/frequency per rfft2 coefficient, so that equal parameter steps give a natural 1/f image."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return 1.0 / torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / max(h, w))


def _colour_mix(colors: torch.Tensor | None, pixels: torch.Tensor) -> torch.Tensor:
    """The colour matrix normalized by its largest column norm (Lucid's), identity when absent."""
    c = pixels.shape[1]
    if colors is None:
        return torch.eye(c, device=pixels.device)
    colors = torch.as_tensor(colors, dtype=torch.float32, device=pixels.device)
    if colors.shape != (c, c):
        raise NetatlasError(f"colour matrix must be {c}x{c} for {c}-channel images, got {list(colors.shape)}")
    return colors / colors.norm(dim=0).max()


def _from_spectrum(spectrum: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor,
                   size: tuple[int, int]) -> torch.Tensor:
    """Parameters [k, C, H, W//2+1, 2] -> pixels in (0, 1): inverse FFT, colour mix, sigmoid."""
    decorrelated = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=size, norm="ortho")
    return torch.sigmoid(torch.einsum("ij,bjhw->bihw", mix, decorrelated / LUCID_DIVISOR))


def _to_spectrum(pixels: torch.Tensor, mix: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The inverse of _from_spectrum (up to the clamp), so that optimization starts at ``pixels``."""
    logits = torch.logit(pixels.clamp(SIGMOID_CLAMP, 1 - SIGMOID_CLAMP))
    # pinv: the colour matrix of a grey dataset stored as RGB is singular, and grey starts lie in its range
    decorrelated = torch.einsum("ij,bjhw->bihw", torch.linalg.pinv(mix), logits) * LUCID_DIVISOR
    return torch.view_as_real(torch.fft.rfft2(decorrelated, norm="ortho") / scale).contiguous()


def _random_affine(pixels: torch.Tensor, jitter: int, generator: torch.Generator) -> torch.Tensor:
    """Per image a random shift (+-jitter px), zoom and rotation, so the result must survive them."""
    k, _, h, w = pixels.shape
    angle = (2 * torch.rand(k, generator=generator) - 1) * math.radians(LUCID_ROTATE)
    zoom = 1 + (2 * torch.rand(k, generator=generator) - 1) * LUCID_ZOOM
    shift = (2 * torch.rand(k, 2, generator=generator) - 1) * jitter * 2 / torch.tensor([w, h])
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack([torch.stack([cos, -sin * h / w, shift[:, 0]], 1),   # a rotation in pixels,
                         torch.stack([sin * w / h, cos, shift[:, 1]], 1)], 1)  # not in [-1, 1]^2
    grid = F.affine_grid(theta.to(pixels), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _stats(preprocessing: Preprocessing, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(preprocessing.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return mean, std


def _to_pixels(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean, std = _stats(preprocessing, x)
    return x * std + mean


def _to_model(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    mean, std = _stats(preprocessing, pixels)
    return (pixels - mean) / std


def _device(model: nn.Module, fallback: torch.Tensor) -> torch.device:
    return next((p.device for p in model.parameters()), fallback.device)
