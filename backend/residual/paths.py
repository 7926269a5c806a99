"""Residual-expansion measurements on a batch of images (Veit et al. 2016; Dherin & Munn 2025).

Every measurement runs the real model with its residual adds gated (see residual_blocks):
- per unit: ||f(x)|| / ||x||, cos(f(x), x), any learned branch scale, and a Jacobian gain g;
- Veit's trio: paths per length C(n, k), input-gradient norm per path length (gradient routed through
  k sampled branches and the other skips), and their product, the effective paths;
- the order-k decomposition: exact Moebius terms over all 2^n branch masks for n <= 14, and the
  Jacobian-gain estimate e_k(g_1..g_n) for any n, beside the idealised C(n, k) lambda^k;
- lesions: accuracy with one unit's branch removed, with k random ones removed, and after
  reordering interchangeable blocks, against Kendall's tau.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from netatlas.backend.activations import first_tensor
from netatlas.backend.residual.blocks import ResidualGate, ResidualUnit, gated
from netatlas.backend.errors import NetatlasError

Progress = Callable[[int, int], None]
EXACT_MAX_UNITS = 14
_SCALE_NAME = re.compile(r"(alpha|gamma|layer_?scale|ls\d|skip_?init|rezero|branch_?scale)", re.I)


@dataclass(frozen=True)
class PathSettings:
    """What a residual analysis computes; part of its cache key."""

    images: int = 256            # images for stats, gains and lesions
    gradient_images: int = 64    # of those, used for the gradient-per-path-length passes
    decomposition_images: int = 16
    samples: int = 8             # sampled subsets per path length (all subsets when fewer exist)
    lesion_draws: int = 10
    reorder_trials: int = 20
    seed: int = 0


@dataclass
class ResidualReport:
    """Tables behind the four plots; ``meta`` holds scalars (baseline accuracy, checks)."""

    units: pd.DataFrame
    paths: pd.DataFrame
    orders: pd.DataFrame
    lesions: pd.DataFrame
    lesions_k: pd.DataFrame
    reorder: pd.DataFrame
    meta: dict = field(default_factory=dict)

    SECTIONS = ("units", "paths", "orders", "lesions", "lesions_k", "reorder")

    def to_frame(self) -> pd.DataFrame:
        """One long table with a ``section`` column (how the cache stores a report)."""
        return pd.concat([getattr(self, s).assign(section=s) for s in self.SECTIONS], ignore_index=True)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict) -> "ResidualReport":
        parts = {}
        for s in cls.SECTIONS:
            part = frame[frame["section"] == s].drop(columns="section").reset_index(drop=True)
            parts[s] = part.dropna(axis=1, how="all")
        return cls(**parts, meta=meta)

    def meta_json(self) -> str:
        return json.dumps(self.meta)


def analyze_paths(model: nn.Module, units: list[ResidualUnit], x: torch.Tensor, labels: torch.Tensor,
                  settings: PathSettings = PathSettings(), progress: Progress | None = None) -> ResidualReport:
    """All residual-path measurements of ``model`` on images ``x`` (labels -1 = use predictions)."""
    n = len(units)
    if n == 0:
        raise NetatlasError("no residual units to analyse: choose at least one (a model without "
                            "x + f(x) adds that netatlas can trace has none)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    x = x.to(device)
    rng = np.random.default_rng(settings.seed)
    exact = n <= EXACT_MAX_UNITS
    steps = _Steps(progress, total=2 + _gradient_passes(n, settings.samples)
                   + (2 ** n if exact else 0) + n + n * settings.lesion_draws + settings.reorder_trials)
    requires_grad = [p.requires_grad for p in model.parameters()]
    timed = _Timer()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with gated(model, units) as gate:
            with torch.no_grad(), timed("baseline"):
                base_logits = _logits(model, x)
            targets = torch.where(labels.to(device) >= 0, labels.to(device), base_logits.argmax(1))
            with timed("unit_stats"):
                unit_table = _unit_stats(model, units, gate, x, steps)
                unit_table["gain"] = _jacobian_gains(model, units, gate, x, rng, steps)
            with timed("path_gradients"):
                paths = _path_gradients(model, gate, x[:settings.gradient_images],
                                        targets[:settings.gradient_images], settings.samples, rng, steps)
            with timed("order_decomposition"):
                orders, check = _order_decomposition(model, gate, x[:settings.decomposition_images],
                                                     unit_table["gain"].to_numpy(), exact, steps)
            baseline = float((base_logits.argmax(1) == targets).float().mean())
            with timed("lesions"):
                lesions, lesions_k = _lesions(model, units, gate, x, targets, settings.lesion_draws, rng, steps)
        with timed("reorder"):
            reorder = _reorder(model, units, x, targets, settings.reorder_trials, rng, steps)
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    meta = {"n_units": n, "images": int(len(x)), "baseline_accuracy": baseline, "exact": exact,
            "decomposition_rel_error": check, "targets": "labels" if bool((labels >= 0).all()) else
            "labels where known, else the model's predictions", "seconds": timed.seconds,
            "device": str(device)}
    return ResidualReport(unit_table, paths, orders, lesions, lesions_k, reorder, meta)


class _Timer:
    """Wall time per stage, reported with the results (where the minutes of a large model go)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 3)


class _Steps:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, k: int = 1) -> None:
        self.done += k
        if self.progress:
            self.progress(min(self.done, self.total), self.total)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = first_tensor(model(x))
    return out.reshape(len(out), -1)


def _unit_stats(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
                steps: _Steps) -> pd.DataFrame:
    gate.reset()
    gate.record = True
    with torch.no_grad():
        _logits(model, x)
    records = dict(gate.records)
    gate.reset()
    steps()
    modules = dict(model.named_modules())
    rows = []
    for i, unit in enumerate(units):
        r = records.get(i)
        if r is None:
            raise NetatlasError(f"residual unit {unit.label} did not run in the forward pass")
        ratio = (r["branch_norm"] / r["skip_norm"].clamp_min(1e-12)).mean().item()
        rows.append({"unit": unit.label, "key": unit.key, "kind": unit.kind, "depth": i,
                     "ratio": ratio, "cos": r["cos"].mean().item(),
                     "branch_norm": r["branch_norm"].mean().item(), "skip_norm": r["skip_norm"].mean().item(),
                     "scale": _learned_scale(modules[unit.module])})
    return pd.DataFrame(rows)


def _learned_scale(module: nn.Module) -> float:
    """Mean |value| of a branch-scale parameter (ReZero/SkipInit alpha, LayerScale gamma), else NaN."""
    for name, p in module.named_parameters():
        if _SCALE_NAME.search(name.rsplit(".", 1)[-1]) and p.ndim <= 1:
            return float(p.detach().abs().mean())
    return float("nan")


def _jacobian_gains(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
                    rng: np.random.Generator, steps: _Steps, eps: float = 1e-3) -> np.ndarray:
    """g_l = ||f_l(x_l + e v) - f_l(x_l)|| / ||e v|| for a random direction v (finite-difference jvp).

    The perturbation enters at the input of the module holding the unit; for the later adds of a
    multi-add module (a transformer layer's feed-forward) it therefore also passes through the
    earlier ones: an estimate, as the Jacobian-gain method itself is.
    """
    modules = dict(model.named_modules())
    inputs: dict[str, tuple] = {}

    def keep_input(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs.setdefault(name, (args, kwargs))
        return hook

    handles = [modules[m].register_forward_pre_hook(keep_input(m), with_kwargs=True)
               for m in dict.fromkeys(u.module for u in units)]
    try:
        with torch.no_grad():
            _logits(model, x)
    finally:
        for h in handles:
            h.remove()
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
    gains = np.zeros(len(units))
    for module_name in dict.fromkeys(u.module for u in units):
        args, kwargs = inputs[module_name]
        x0 = args[0]
        v = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
        scale = eps * x0.flatten(1).norm(dim=1).clamp_min(1e-6) / v.flatten(1).norm(dim=1)
        dv = v * scale.view(-1, *[1] * (x0.ndim - 1))
        branches = []
        for shifted in (x0, x0 + dv):
            gate.reset()
            gate.record = True
            with torch.no_grad():
                modules[module_name](shifted, *args[1:], **kwargs)
            branches.append({i: r["branch"] for i, r in gate.records.items()})
        gate.reset()
        for i, unit in enumerate(units):
            if unit.module == module_name and i in branches[0]:
                diff = (branches[1][i] - branches[0][i]).norm(dim=1)
                gains[i] = (diff / dv.flatten(1).norm(dim=1)).mean().item()
    steps()
    return gains


def _gradient_passes(n: int, samples: int) -> int:
    return sum(min(math.comb(n, k), samples) for k in range(n + 1))


def _path_gradients(model: nn.Module, gate: ResidualGate, x: torch.Tensor, targets: torch.Tensor,
                    samples: int, rng: np.random.Generator, steps: _Steps) -> pd.DataFrame:
    """Mean input-gradient norm of the per-image loss along paths of each length k (Veit et al.).

    For each sampled set S of k units, gradients flow only through the branches in S and only
    through the skips elsewhere; the forward pass is the unchanged network. When C(n, k) <= samples
    every subset is used and the value is exact (standard error 0).
    """
    n = gate.n
    rows = []
    for k in range(n + 1):
        subsets = _subsets(n, k, samples, rng)
        norms = []
        for subset in subsets:
            gate.reset()
            gate.route = ["branch" if l in subset else "skip" for l in range(n)]
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(_logits(model, xg), targets, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xg)
            norms.append(grad.flatten(1).norm(dim=1).mean().item())
            steps()
        gate.reset()
        norms_arr = np.asarray(norms)
        exact = len(subsets) == math.comb(n, k)
        sem = 0.0 if exact or len(norms_arr) < 2 else float(norms_arr.std(ddof=1) / math.sqrt(len(norms_arr)))
        count = math.comb(n, k)
        rows.append({"k": k, "count": count, "grad_mean": float(norms_arr.mean()), "grad_sem": sem,
                     "samples": len(subsets), "enumerated": float(exact),
                     "effective": count * float(norms_arr.mean()),
                     "effective_sem": count * sem})
    return pd.DataFrame(rows)


def _subsets(n: int, k: int, samples: int, rng: np.random.Generator) -> list[frozenset[int]]:
    if math.comb(n, k) <= samples:
        return [frozenset(c) for c in itertools.combinations(range(n), k)]
    return [frozenset(rng.choice(n, k, replace=False).tolist()) for _ in range(samples)]


def moebius_terms(outputs: torch.Tensor, n: int) -> torch.Tensor:
    """Delta_S = sum_{T subset S} (-1)^{|S|-|T|} h(1_T) for all S, from h over all 2^n masks.

    ``outputs[mask]`` is h at the mask whose bit l says unit l is on; one pass per unit (a fast
    Moebius transform), so n 2^n additions instead of 3^n.
    """
    terms = outputs.clone()
    shape = terms.shape[1:]
    for bit in range(n):
        view = terms.view(2 ** (n - bit - 1), 2, 2 ** bit, *shape)
        view[:, 1] -= view[:, 0]
    return terms


def mask_bits(n: int) -> torch.Tensor:
    """[2^n, n] 0/1 rows: row m has bit l of m in column l."""
    m = torch.arange(2 ** n).unsqueeze(1)
    return ((m >> torch.arange(n)) & 1).float()


def elementary_symmetric(g: np.ndarray) -> np.ndarray:
    """e_0..e_n of g: the coefficients of prod_l (1 + g_l t)."""
    e = np.zeros(len(g) + 1)
    e[0] = 1.0
    for value in g:
        e[1:] = e[1:] + value * e[:-1]
    return e


def _order_decomposition(model: nn.Module, gate: ResidualGate, x: torch.Tensor, gains: np.ndarray,
                         exact: bool, steps: _Steps) -> tuple[pd.DataFrame, float | None]:
    """Weight of each order k: exact sum of ||Delta_S|| over |S| = k, and the gain estimate."""
    n = gate.n
    ks = np.arange(n + 1)
    table = pd.DataFrame({"k": ks})
    check = None
    if exact:
        masks = mask_bits(n).to(gate.mask.device)
        outputs = []
        with torch.no_grad():
            for m in masks:
                gate.mask.copy_(m)
                outputs.append(_logits(model, x).double())
                steps()
        gate.reset()
        h = torch.stack(outputs)                        # [2^n, B, K]
        terms = moebius_terms(h, n)
        total = terms.sum(0)
        check = float((total - h[-1]).norm() / h[-1].norm().clamp_min(1e-30))
        norms = terms.flatten(2).norm(dim=2).mean(1)    # [2^n]: mean over images of ||Delta_S||
        order = masks.sum(1).long().cpu()
        weights = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, order, norms.cpu())
        table["exact"] = weights.numpy()
    table["estimate"] = elementary_symmetric(gains)
    for name, lam in (("ideal_1", 1.0), ("ideal_inv_sqrt_n", 1 / math.sqrt(n)), ("ideal_inv_n", 1 / n)):
        table[name] = [math.comb(n, int(k)) * lam ** int(k) for k in ks]
    for column in table.columns[1:]:
        table[f"{column}_share"] = table[column] / table[column].sum()
    return table, check


def _accuracy(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float((_logits(model, x).argmax(1) == targets).float().mean())


def _lesions(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
             targets: torch.Tensor, draws: int, rng: np.random.Generator,
             steps: _Steps) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy with each unit's branch removed (skip kept), then with k random units removed.

    Where C(n, k) <= ``draws`` every k-subset is measured once instead of sampled (k = 1 reuses the
    single lesions), so the mean and sd are exact there and no forward pass is repeated.
    """
    n = gate.n
    accuracy: dict[frozenset[int], float] = {}

    def lesioned(removed: frozenset[int]) -> float:
        if removed not in accuracy:
            gate.reset()
            gate.mask[torch.as_tensor(sorted(removed))] = 0
            accuracy[removed] = _accuracy(model, x, targets)
        return accuracy[removed]

    single = [{"unit": unit.label, "depth": l, "accuracy": lesioned(frozenset([l]))} for l, unit in enumerate(units)]
    steps(n)
    rows = []
    for k in range(1, n + 1):
        subsets = _subsets(n, k, draws, rng)
        accs = [lesioned(subset) for subset in subsets]
        steps(draws)
        rows.append({"k": k, "mean": float(np.mean(accs)), "sd": float(np.std(accs)), "draws": len(subsets)})
    gate.reset()
    return pd.DataFrame(single), pd.DataFrame(rows)


def kendall_tau(order: list[int]) -> float:
    """Kendall's tau between ``order`` and the identity (1 = unchanged, -1 = reversed)."""
    n = len(order)
    if n < 2:
        return 1.0
    concordant = sum(1 if order[i] < order[j] else -1 for i in range(n) for j in range(i + 1, n))
    return concordant / (n * (n - 1) / 2)


def _reorder(model: nn.Module, units: list[ResidualUnit], x: torch.Tensor, targets: torch.Tensor,
             trials: int, rng: np.random.Generator, steps: _Steps) -> pd.DataFrame:
    """Accuracy after swapping random pairs of interchangeable blocks, against Kendall's tau.

    Blocks are interchangeable when their module types and input and output shapes agree, so a
    swap keeps every tensor shape; the swapped modules trade places in their parents.
    """
    blocks = list(dict.fromkeys(u.module for u in units))
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}

    def keep_shape(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            shapes.setdefault(name, (type(module).__name__, tuple(inputs[0].shape),
                                     tuple(first_tensor(output).shape)))
        return hook

    handles = [modules[b].register_forward_hook(keep_shape(b)) for b in blocks if b]
    try:
        with torch.no_grad():
            _logits(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(blocks):
        if b in shapes and shapes[b][1] == shapes[b][2]:
            groups.setdefault(shapes[b], []).append(i)
    pairs = [(a, b) for members in groups.values() for a, b in itertools.combinations(members, 2)]
    identity = tuple(range(len(blocks)))
    rows = [{"swaps": 0, "tau": 1.0, "accuracy": _accuracy(model, x, targets)}]
    seen = {identity}
    for _ in range(trials):
        steps()
        if not pairs:
            continue
        order = list(identity)
        swaps = int(rng.integers(1, len(pairs) + 1))
        for idx in rng.choice(len(pairs), swaps, replace=True):
            a, b = pairs[idx]
            order[a], order[b] = order[b], order[a]
        if tuple(order) in seen:  # few interchangeable blocks: each distinct order is measured once
            continue
        seen.add(tuple(order))
        with _placed(model, blocks, order, modules):
            rows.append({"swaps": swaps, "tau": kendall_tau(order), "accuracy": _accuracy(model, x, targets)})
    return pd.DataFrame(rows)


class _placed:
    """Put the module originally at ``blocks[order[i]]`` in the place of ``blocks[i]``, then restore."""

    def __init__(self, model: nn.Module, blocks: list[str], order: list[int], modules: dict[str, nn.Module]):
        self.model, self.blocks, self.order, self.modules = model, blocks, order, modules

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, module)

    def __enter__(self) -> None:
        for i, src in enumerate(self.order):
            if src != i:
                self._set(self.blocks[i], self.modules[self.blocks[src]])

    def __exit__(self, *exc) -> None:
        for name in self.blocks:
            self._set(name, self.modules[name])
