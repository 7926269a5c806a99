"""Residual-expansion measurements on a batch of images (Veit et al. 2016; Dherin & Munn 2025).

Every measurement runs the real model with its residual adds gated (see residual_blocks):
- per unit: ||f(x)|| / ||x||, cos(f(x), x), any learned branch scale, and a Jacobian gain g;
- Veit's trio: paths per length C(n, k), input-gradient norm per path length (gradient routed through
  k sampled branches and the other skips), and their product, the effective paths;
- the order-k decomposition: exact Moebius terms over all 2^n branch masks for n <= 14, and the
  Jacobian-gain estimate e_k(g_1..g_n) for any n, beside the idealised C(n, k) lambda^k;
- lesions: accuracy with one unit's branch removed, with k random ones removed, and after
  reordering interchangeable blocks, against Kendall's tau.

A model without a classifier head (a backbone: its output is features, not class scores) has no
predictions, so nothing here is an accuracy for it: ``analyze_paths(targets="output")`` scores each
lesion and reorder by the cosine similarity of every image's output to the intact model's (1 for the
intact model) and differentiates the output's norm ||y|| instead of a class loss (see ``Measure``).

Most of these are many passes over the same images that differ from some unit on. A probe pass on
one image (``Plan``) lists the module calls that end before each unit (or its add) starts, and
which of their outputs later ops read; during a stage a memo (``PassMemo``) keeps those outputs and
every unit's branch (which the gate computes lazily, and not at all when switched off) and hands
them to any later pass that reaches the same call after the same residual adds. Masks run in
lexicographic order of their scales, several stacked along the batch dimension, so masks sharing a
prefix compute it once; the lesions take their first images' scores from the decomposition.
The path-gradient routes share one forward pass (the gate reads routes during backward) and pass
gradients block to block, so routes agreeing on the later blocks share that part of the backward
pass. All of it is checked against plain passes on two images first, falling back to them where
they disagree; ``analyze_paths(reuse=False)`` runs every pass in full.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from netatlas.backend.activations import first_tensor
from netatlas.backend.residual.blocks import ResidualGate, ResidualUnit, gated
from netatlas.backend.residual.reuse import STACKED_ROWS, Plan, tensors
from netatlas.backend.errors import NetatlasError

Progress = Callable[[int, int], None]
Targets = Literal["labels", "output"]
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


@dataclass(frozen=True)
class Measure:
    """What lesions, reorders and path gradients are measured against.

    ``labels``: a classifier's logits; a lesioned model scores its accuracy on the target classes and
    the path gradients differentiate the cross-entropy of those classes. ``output``: a model with no
    classifier head; a lesioned model scores, per image, the cosine similarity of its output to the
    intact model's output (1 = the same direction; see ``output_cosine``), and the path gradients
    differentiate each image's output norm ||y|| (the gradient along the output's own direction).
    """

    mode: Targets = "labels"

    def __post_init__(self) -> None:
        if self.mode not in ("labels", "output"):
            raise NetatlasError(f"targets must be 'labels' (a classifier's logits) or 'output' (a model "
                                f"without a classifier head), not {self.mode!r}")

    @property
    def column(self) -> str:
        """The lesion and reorder tables' score column."""
        return "accuracy" if self.mode == "labels" else "cosine"

    @property
    def label(self) -> str:
        """The score in words (axis labels, the tab's header)."""
        return "accuracy" if self.mode == "labels" else "cosine similarity to the intact output"

    @property
    def gradient_of(self) -> str:
        return ("the cross-entropy loss of the target classes" if self.mode == "labels" else
                "the norm of each image's output, ||y|| (the model has no classifier, so no loss)")

    def loss(self, out: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        """The scalar whose input gradient the path plots take: summed over images, each image's own."""
        if self.mode == "labels":
            return nn.functional.cross_entropy(out, classes, reduction="sum")
        return torch.linalg.vector_norm(out, dim=1).sum()   # gradient 0 at a zero output (torch's subgradient)

    def per_image(self, out: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Each image's score: 1/0 right or wrong against ``reference`` classes, or the cosine of its
        output to the ``reference`` (intact) output."""
        if self.mode == "labels":
            return (out.argmax(1) == reference).float()
        return output_cosine(out, reference)


def output_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``a`` to the same row of ``b``, defined everywhere: 1 where
    both rows are zero (the same output), 0 where just one is, clamped to [-1, 1]."""
    a, b = a.flatten(1), b.flatten(1).to(a.dtype)
    tiny = torch.finfo(a.dtype).tiny
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    cos = ((a / na.clamp_min(tiny)) * (b / nb.clamp_min(tiny))).sum(1).clamp(-1.0, 1.0)
    both_zero = (na == 0).squeeze(1) & (nb == 0).squeeze(1)
    return torch.where(both_zero, torch.ones_like(cos), cos)


@dataclass
class ResidualReport:
    """Tables behind the four plots; ``meta`` holds scalars (the mode, baseline score, checks).

    ``meta["mode"]`` is "labels" (a classifier: accuracies, ``meta["baseline_accuracy"]``) or "output"
    (no classifier: ``meta["score"]`` names the lesion/reorder column, ``meta["score_label"]`` says it
    in words); a report cached before the mode existed has none and is a classifier's.
    """

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


def analyze_paths(model: nn.Module, units: list[ResidualUnit], x: torch.Tensor, labels: torch.Tensor | None,
                  settings: PathSettings = PathSettings(), progress: Progress | None = None, *,
                  reuse: bool = True, targets: Targets = "labels") -> ResidualReport:
    """All residual-path measurements of ``model`` on images ``x``.

    ``targets="labels"`` (a classifier): lesions score accuracy against ``labels`` (-1 = use the
    model's predictions) and gradients are of the cross-entropy. ``targets="output"`` (no classifier
    head, so no predictions; ``labels`` are ignored): everything is measured against the model's output
    itself, as ``Measure`` says. ``reuse=False`` runs every pass in full (no shared prefixes, forwards
    or backwards): the reference the reusing passes are tested against.
    """
    measure = Measure(targets)
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
                plan = Plan.build(model, gate, units, x) if reuse else None
                plan = plan and _checked(plan, model, gate, x[:2], measure)
                base_logits, records, inputs = _first_pass(model, units, gate, x, plan)
            if measure.mode == "labels":
                known = labels.to(device) if labels is not None else torch.full((len(x),), -1, device=device)
                classes = torch.where(known >= 0, known, base_logits.argmax(1))
                reference = classes
            else:
                classes, reference = None, base_logits          # the intact output each image is scored against
            with timed("unit_stats"), steps.stage(2):
                unit_table = _unit_stats(model, units, gate, x, records)
                unit_table["gain"] = _jacobian_gains(model, units, gate, inputs, x, rng, records)
            with timed("path_gradients"), steps.stage(_gradient_passes(n, settings.samples)):
                grad_classes = None if classes is None else classes[:settings.gradient_images]
                paths = _path_gradients(model, gate, x[:settings.gradient_images], grad_classes,
                                        settings.samples, rng, steps, plan, measure)
            decomposed: dict[tuple, torch.Tensor] | None = {} if plan is not None else None

            def score(h: torch.Tensor) -> torch.Tensor:   # one mask's outputs on the first images
                return measure.per_image(h.to(base_logits.dtype), reference[:len(h)])
            with timed("order_decomposition"), steps.stage(2 ** n if exact else 0):
                orders, check = _order_decomposition(model, gate, x[:settings.decomposition_images],
                                                     unit_table["gain"].to_numpy(), exact, steps, plan,
                                                     decomposed, score)
            # the intact model's score: its accuracy, or 1 (its output is the reference itself)
            baseline = float(measure.per_image(base_logits, reference).mean()) if measure.mode == "labels" else 1.0
            with timed("lesions"), steps.stage(n + n * settings.lesion_draws):
                lesions, lesions_k = _lesions(model, units, gate, x, measure, reference, settings.lesion_draws,
                                              rng, steps, plan, decomposed)
            if plan is not None:   # gated (all ones), so the memo sees the blocks' adds
                with timed("reorder"), steps.stage(settings.reorder_trials):
                    reorder = _reorder(model, units, x, measure, reference, settings.reorder_trials, rng, steps,
                                       plan, gate, baseline)
        if plan is None:
            with timed("reorder"), steps.stage(settings.reorder_trials):
                reorder = _reorder(model, units, x, measure, reference, settings.reorder_trials, rng, steps,
                                   baseline=baseline if measure.mode == "output" else None)
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    meta = {"n_units": n, "images": int(len(x)), "mode": measure.mode, "score": measure.column,
            "score_label": measure.label, "baseline": baseline, "gradient_of": measure.gradient_of,
            "exact": exact, "decomposition_rel_error": check, "seconds": timed.seconds, "device": str(device)}
    if measure.mode == "labels":
        meta["baseline_accuracy"] = baseline
        meta["targets"] = ("labels" if labels is not None and bool((labels >= 0).all()) else
                           "labels where known, else the model's predictions")
    else:
        meta["targets"] = ("the model's output (no classifier head): lesions and reorders are scored by the "
                           "cosine similarity of each image's output to the intact model's output (1 = "
                           "unchanged), path gradients are of the output's norm ||y||")
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
        self.progress, self.total, self.done = progress, total, 0.0

    def __call__(self, k: float = 1) -> None:
        self.done += k
        if self.progress:
            self.progress(min(int(self.done), self.total), self.total)

    @contextlib.contextmanager
    def stage(self, count: int):
        """A stage worth ``count`` steps: however many it reports, it ends exactly that far on."""
        end = self.done + count
        yield
        self(end - self.done)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = first_tensor(model(x))
    return out.reshape(len(out), -1)


def _first_pass(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
                plan: "Plan | None") -> tuple[torch.Tensor, dict | None, dict | None]:
    """Baseline logits; with a plan also the unit records and module inputs from the same pass."""
    if plan is None:
        return _logits(model, x), None, None
    return _recorded_pass(model, units, gate, x)


def _recorded_pass(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate,
                   x: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
    """Logits, each unit's norms and branch (gate records) and each unit module's first inputs."""
    modules = dict(model.named_modules())
    inputs: dict[str, tuple] = {}

    def keep_input(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            inputs.setdefault(name, (args, kwargs))
        return hook

    handles = [modules[m].register_forward_pre_hook(keep_input(m), with_kwargs=True)
               for m in dict.fromkeys(u.module for u in units)]
    gate.reset()
    gate.record = True
    try:
        with torch.no_grad():
            logits = _logits(model, x)
    finally:
        for h in handles:
            h.remove()
    records = dict(gate.records)
    gate.reset()
    return logits, records, inputs


def _unit_stats(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
                records: dict | None) -> pd.DataFrame:
    if records is None:
        records = _recorded_pass(model, units, gate, x)[1]
    modules = dict(model.named_modules())
    rows = []
    for i, unit in enumerate(units):
        r = records.get(i)
        if r is None:
            raise NetatlasError(f"residual unit {unit.label} did not run in the forward pass")
        ratio = _branch_ratio(r["branch_norm"], r["skip_norm"])
        rows.append({"unit": unit.label, "key": unit.key, "kind": unit.kind, "depth": i,
                     "ratio": ratio, "cos": r["cos"].mean().item(),
                     "branch_norm": r["branch_norm"].mean().item(), "skip_norm": r["skip_norm"].mean().item(),
                     "scale": _learned_scale(modules[unit.module])})
    return pd.DataFrame(rows)


def _branch_ratio(branch: torch.Tensor, skip: torch.Tensor) -> float:
    """Mean over images of ||f(x)|| / ||x||, over the images whose skip is not zero (there the ratio has
    no value); where every skip is zero: 0 if every branch is too (nothing added to nothing), else inf."""
    seen = skip > 0
    if bool(seen.any()):
        return (branch[seen] / skip[seen]).mean().item()
    return 0.0 if not bool((branch > 0).any()) else math.inf


def _learned_scale(module: nn.Module) -> float:
    """Mean |value| of a branch-scale parameter (ReZero/SkipInit alpha, LayerScale gamma), else NaN."""
    for name, p in module.named_parameters():
        if _SCALE_NAME.search(name.rsplit(".", 1)[-1]) and p.ndim <= 1:
            return float(p.detach().abs().mean())
    return float("nan")


def _jacobian_gains(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, inputs: dict | None,
                    x: torch.Tensor, rng: np.random.Generator, records: dict | None = None,
                    eps: float = 1e-3) -> np.ndarray:
    """g_l = ||f_l(x_l + e v) - f_l(x_l)|| / ||e v|| for a random direction v (finite-difference jvp).

    The perturbation enters at the input of the module holding the unit; for the later adds of a
    multi-add module (a transformer layer's feed-forward) it therefore also passes through the
    earlier ones: an estimate, as the Jacobian-gain method itself is. ``inputs`` (each module's
    inputs) and ``records`` (f_l(x_l), recorded in the model's own pass) spare passes when given.
    """
    modules = dict(model.named_modules())
    if inputs is None:
        inputs = _recorded_pass(model, units, gate, x)[2]
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
    gains = np.zeros(len(units))
    for module_name in dict.fromkeys(u.module for u in units):
        args, kwargs = inputs[module_name]
        x0 = args[0]
        v = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
        scale = eps * x0.flatten(1).norm(dim=1).clamp_min(1e-6) / v.flatten(1).norm(dim=1)
        dv = v * scale.view(-1, *[1] * (x0.ndim - 1))
        shifts = (x0 + dv,) if records is not None else (x0, x0 + dv)
        branches = [{i: r["branch"] for i, r in records.items()}] if records is not None else []
        for shifted in shifts:
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
    return gains


def _gradient_passes(n: int, samples: int) -> int:
    return sum(min(math.comb(n, k), samples) for k in range(n + 1))


def _path_gradients(model: nn.Module, gate: ResidualGate, x: torch.Tensor, classes: torch.Tensor | None,
                    samples: int, rng: np.random.Generator, steps: _Steps,
                    plan: "Plan | None" = None, measure: Measure = Measure()) -> pd.DataFrame:
    """Mean input-gradient norm of the per-image loss (``measure.loss``: the cross-entropy of
    ``classes``, or the output's norm) along paths of each length k (Veit et al.).

    For each sampled set S of k units, gradients flow only through the branches in S and only
    through the skips elsewhere; the forward pass is the unchanged network. When C(n, k) <= samples
    every subset is used and the value is exact (standard error 0).
    """
    n = gate.n
    drawn = [_subsets(n, k, samples, rng) for k in range(n + 1)]

    def route(subset: frozenset[int]) -> tuple[str, ...]:
        return tuple("branch" if l in subset else "skip" for l in range(n))

    distinct = list(dict.fromkeys(route(s) for subsets in drawn for s in subsets))
    norm_of = dict(zip(distinct, _route_norms(model, gate, x, classes, distinct, plan, steps, measure)))
    rows = []
    for k, subsets in enumerate(drawn):
        norms_arr = np.asarray([norm_of[route(s)] for s in subsets])
        exact = len(subsets) == math.comb(n, k)
        sem = 0.0 if exact or len(norms_arr) < 2 else float(norms_arr.std(ddof=1) / math.sqrt(len(norms_arr)))
        count = math.comb(n, k)
        rows.append({"k": k, "count": count, "grad_mean": float(norms_arr.mean()), "grad_sem": sem,
                     "samples": len(subsets), "enumerated": float(exact),
                     "effective": count * float(norms_arr.mean()),
                     "effective_sem": count * sem})
    return pd.DataFrame(rows)


def _route_norms(model: nn.Module, gate: ResidualGate, x: torch.Tensor, classes: torch.Tensor | None,
                 routes: list[tuple[str, ...]], plan: "Plan | None", steps: _Steps,
                 measure: Measure = Measure()) -> list[float]:
    """Mean over images of ||d loss_i / d x_i|| for each route (a per-unit "branch" or "skip").

    Without a plan every route has its own forward and backward pass. With one, a single forward
    pass serves all routes, since the gate reads the route when gradients flow back, and where the
    blocks form a chain the backward pass goes block to block (``_ChainBackward``), routes ordered
    so that those agreeing on the later blocks follow each other.
    """
    if plan is None:
        norms = []
        for route in routes:
            gate.reset()
            gate.route = list(route)
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                loss = measure.loss(_logits(model, xg), classes)
                (grad,) = torch.autograd.grad(loss, xg)
            norms.append(_mean_norm(grad))
            steps()
        gate.reset()
        return norms
    loss, xg, inputs = _shared_forward(model, gate, x, classes, plan.blocks, measure)
    backward = _ChainBackward(loss, xg, inputs, plan.block_units) if plan.chain else _whole_backward(loss, xg)
    return _routed_norms(gate, backward, routes, plan.order, steps)


def _shared_forward(model: nn.Module, gate: ResidualGate, x: torch.Tensor, classes: torch.Tensor | None,
                    blocks: list[str], measure: Measure = Measure()
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """One forward pass kept for many backward passes: summed loss, the input, the blocks' inputs."""
    gate.reset()
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _block_inputs(model, blocks) as inputs:
        loss = measure.loss(_logits(model, xg), classes)
    return loss, xg, [inputs.get(b) for b in blocks]


def _whole_backward(loss: torch.Tensor, x: torch.Tensor) -> Callable[[tuple[str, ...]], torch.Tensor]:
    return lambda route: torch.autograd.grad(loss, x, retain_graph=True)[0]


def _routed_norms(gate: ResidualGate, backward: Callable[[tuple[str, ...]], torch.Tensor],
                  routes: list[tuple[str, ...]], order: list[int], steps: _Steps) -> list[float]:
    """``_mean_norm`` of ``backward(route)`` per route, the gate routing as each backward runs.

    Routes go sorted by the units' routes from the last add back, so those agreeing on the later
    blocks follow each other (what ``_ChainBackward`` shares).
    """
    norms = [0.0] * len(routes)
    try:
        for i in sorted(range(len(routes)), key=lambda i: [routes[i][u] for u in reversed(order)]):
            gate.route = list(routes[i])
            with torch.enable_grad():
                norms[i] = _mean_norm(backward(routes[i]))
            steps()
    finally:
        gate.reset()
    return norms


def _mean_norm(grad: torch.Tensor) -> float:
    return grad.flatten(1).norm(dim=1).mean().item()


@contextlib.contextmanager
def _block_inputs(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The first tensor each named module is called with (first call), filled in as the model runs."""
    modules = dict(model.named_modules())
    found: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            given = tensors((args, kwargs))
            if given:
                found.setdefault(name, given[0])
        return hook

    handles = [modules[name].register_forward_pre_hook(keep(name), with_kwargs=True) for name in names]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


class _ChainBackward:
    """d loss / d x along a route, passed back from block input to block input.

    The cotangent at a block's input depends only on the routes of that block and the later ones,
    so one slot per block keeps it for the next route if they agree there (routes come sorted from
    the last block back). Exact where each block's input is the only way x reaches later blocks,
    which ``_checked`` compares with plain passes on two images before trusting it.
    """

    def __init__(self, loss: torch.Tensor, x: torch.Tensor, inputs: list[torch.Tensor],
                 block_units: list[list[int]]) -> None:
        self.loss, self.points, self.block_units = loss, [x, *inputs], block_units
        self.slots: list[tuple | None] = [None] * len(self.points)

    def __call__(self, route: tuple[str, ...]) -> torch.Tensor:
        return self._at(0, route)

    def _at(self, j: int, route: tuple[str, ...]) -> torch.Tensor:
        """Cotangent at points[j] (x for j = 0, else block j-1's input); blocks j-1.. decide it."""
        key = tuple(route[u] for units in self.block_units[max(j - 1, 0):] for u in units)
        slot = self.slots[j]
        if slot is not None and slot[0] == key:
            return slot[1]
        if j == len(self.points) - 1:
            (grad,) = torch.autograd.grad(self.loss, self.points[j], retain_graph=True)
        else:
            (grad,) = torch.autograd.grad(self.points[j + 1], self.points[j], self._at(j + 1, route),
                                          retain_graph=True)
        self.slots[j] = (key, grad)
        return grad


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
                         exact: bool, steps: _Steps, plan: "Plan | None" = None,
                         known: dict | None = None, score: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> tuple[pd.DataFrame, float | None]:
    """Weight of each order k: exact sum of ||Delta_S|| over |S| = k, and the gain estimate.

    ``known``, if given, receives ``score(outputs)`` of each mask (tuple of scales) on ``x``, the
    per-image scores the lesions need for the same images.
    """
    n = gate.n
    ks = np.arange(n + 1)
    table = pd.DataFrame({"k": ks})
    check = None
    if exact:
        masks = mask_bits(n).to(gate.mask.device)
        h = torch.stack(_masked_outputs(model, gate, x, masks, plan, steps, lambda out, _: out.double()))  # 2^n,B,K
        if known is not None and score is not None:
            known.update((mask, score(h_m)) for mask, h_m in zip(map(tuple, masks.tolist()), h))
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
    for column in table.columns[1:]:   # a column of zeros (an output that is zero under every mask) has no
        total = table[column].sum()        # shares to give: 0, which the log plots leave out and say so
        table[f"{column}_share"] = table[column] / total if total > 0 else 0.0
    return table, check


def _masked_outputs(model: nn.Module, gate: ResidualGate, x: torch.Tensor, masks: torch.Tensor,
                    plan: "Plan | None", steps: _Steps,
                    reduce: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                    aligned: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``reduce(logits, rows)`` on ``x`` with each row of ``masks`` as the gate's branch scales, in row
    order; ``rows`` are the rows of ``aligned`` (one per image of ``x``) for the images in the pass.

    With a plan several masks share a pass, stacked along the batch dimension (``gate.rows``), and
    the passes run in the order ``_mask_passes`` gives, so that passes agreeing on the first units
    follow each other and the memo carries that prefix from one to the next. Images beyond the
    memo's budget go chunk by chunk.
    """
    if plan is None or not plan.passes:
        outputs = []
        with torch.no_grad():
            for m in masks:
                gate.mask.copy_(m)
                outputs.append(reduce(_logits(model, x), aligned))
                steps()
        gate.reset()
        return outputs
    stacked = _stack_size(len(masks), len(x), plan.rows)
    passes = _mask_passes(masks.tolist(), plan.order, stacked)
    parts: list[list[torch.Tensor]] = [[] for _ in masks]
    size = max(1, plan.chunk // stacked)
    chunks = x.split(size)
    references = aligned.split(size) if aligned is not None else [None] * len(chunks)
    try:
        for chunk, reference in zip(chunks, references):
            tiled = chunk.repeat(stacked, *[1] * (chunk.ndim - 1))
            tiled_reference = None if reference is None else reference.repeat(stacked, *[1] * (reference.ndim - 1))
            with torch.no_grad(), plan.memo(model, gate) as memo:
                for rows in passes:
                    gate.rows = masks[rows].T.contiguous()
                    memo.start()
                    out = reduce(_logits(model, tiled), tiled_reference).split(len(chunk))
                    for row, i in enumerate(rows[:len(set(rows))]):   # not the padding
                        parts[i].append(out[row])
                    steps(len(set(rows)) / len(chunks))
    finally:
        gate.reset()
    return [torch.cat(p) for p in parts]


def _stack_size(masks: int, images: int, rows: int) -> int:
    """How many masks a pass stacks: a power of two, up to ``rows`` rows in all."""
    stacked = 1
    while stacked * 2 <= min(masks, rows // max(1, images)):
        stacked *= 2
    return stacked


def _mask_passes(scales: list[list[float]], order: list[int], stacked: int) -> list[list[int]]:
    """Mask indices grouped ``stacked`` to a pass, in the order that shares the most.

    Masks sort lexicographically by their scales, units in the order their adds run, except that
    the first log2(stacked) units count last: each pass then stacks every combination of those
    first units (for the 2^n masks of the decomposition) and the passes share prefixes in the
    memo. A short last pass repeats its last mask, so every pass has the same rows.
    """
    first = stacked.bit_length() - 1
    key = order[first:] + order[:first]
    ranked = sorted(range(len(scales)), key=lambda i: [-scales[i][u] for u in key])
    passes = [ranked[i:i + stacked] for i in range(0, len(ranked), stacked)]
    passes[-1] += passes[-1][-1:] * (stacked - len(passes[-1]))
    return passes


def _score(model: nn.Module, x: torch.Tensor, measure: Measure, reference: torch.Tensor) -> float:
    with torch.no_grad():
        return float(measure.per_image(_logits(model, x), reference).mean())


def _lesions(model: nn.Module, units: list[ResidualUnit], gate: ResidualGate, x: torch.Tensor,
             measure: Measure, reference: torch.Tensor, draws: int, rng: np.random.Generator, steps: _Steps,
             plan: "Plan | None" = None, known: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The score (``measure``: accuracy against ``reference`` classes, or cosine to the ``reference``
    outputs) with each unit's branch removed (skip kept), then with k random units removed.

    Where C(n, k) <= ``draws`` every k-subset is measured once instead of sampled (k = 1 reuses the
    single lesions), so the mean and sd are exact there and no forward pass is repeated. All sets
    are drawn first, so the passes can run in the order that shares the most. ``known`` holds the
    per-image scores on the first images under every mask (the decomposition's), which are not rerun.
    """
    n = gate.n
    drawn = [_subsets(n, k, draws, rng) for k in range(1, n + 1)]
    sets = list(dict.fromkeys([frozenset([l]) for l in range(n)] + [s for subsets in drawn for s in subsets]))
    masks = torch.ones(len(sets), n, device=gate.mask.device)
    for row, removed in enumerate(sets):
        masks[row, sorted(removed)] = 0
    per_image = _per_image_scores(model, gate, x, masks, plan, steps, known or {}, measure, reference)
    score = {removed: float(p.mean()) for removed, p in zip(sets, per_image)}
    single = [{"unit": unit.label, "depth": l, measure.column: score[frozenset([l])]}
              for l, unit in enumerate(units)]
    rows = []
    for k, subsets in enumerate(drawn, start=1):
        accs = [score[subset] for subset in subsets]
        rows.append({"k": k, "mean": float(np.mean(accs)), "sd": float(np.std(accs)), "draws": len(subsets)})
    return pd.DataFrame(single), pd.DataFrame(rows)


def _per_image_scores(model: nn.Module, gate: ResidualGate, x: torch.Tensor, masks: torch.Tensor,
                      plan: "Plan | None", steps: _Steps, known: dict[tuple, torch.Tensor], measure: Measure,
                      reference: torch.Tensor) -> list[torch.Tensor]:
    """Each image's score under each mask: ``known`` ones for the first images, passes for the rest."""
    first = [known.get(tuple(m)) for m in masks.tolist()]
    done = min((len(p) for p in first), default=0) if all(p is not None for p in first) else 0
    if done >= len(x):
        return [p[:len(x)] for p in first]
    rest = _masked_outputs(model, gate, x[done:], masks, plan, steps, measure.per_image, reference[done:])
    return [torch.cat([p[:done], r]) if done else r for p, r in zip(first, rest)]


def kendall_tau(order: list[int]) -> float:
    """Kendall's tau between ``order`` and the identity (1 = unchanged, -1 = reversed)."""
    n = len(order)
    if n < 2:
        return 1.0
    concordant = sum(1 if order[i] < order[j] else -1 for i in range(n) for j in range(i + 1, n))
    return concordant / (n * (n - 1) / 2)


def _reorder(model: nn.Module, units: list[ResidualUnit], x: torch.Tensor, measure: Measure,
             reference: torch.Tensor, trials: int, rng: np.random.Generator, steps: _Steps,
             plan: "Plan | None" = None, gate: ResidualGate | None = None,
             baseline: float | None = None) -> pd.DataFrame:
    """The score (accuracy, or cosine to the intact output) after swapping random pairs of
    interchangeable blocks, against Kendall's tau.

    Blocks are interchangeable when their module types and input and output shapes agree, so a
    swap keeps every tensor shape; the swapped modules trade places in their parents. The unswapped
    order's score is ``baseline`` where given (with a plan, called inside ``gated``, all scales 1;
    and always for the output, which is the reference itself), and with a plan the orders run
    sorted, so those agreeing on the first blocks share them through the memo.
    """
    blocks = list(dict.fromkeys(u.module for u in units))
    modules = dict(model.named_modules())
    pairs = _interchangeable_pairs(model, blocks, modules, x)
    identity = tuple(range(len(blocks)))
    drawn: list[tuple[int, list[int]]] = []
    seen = {identity}
    for _ in range(trials):
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
        drawn.append((swaps, order))
    first = baseline if baseline is not None else _score(model, x, measure, reference)
    scores = _reordered_scores(model, blocks, modules, [o for _, o in drawn], x, measure, reference, plan, gate)
    rows = [{"swaps": 0, "tau": 1.0, measure.column: first}]
    rows += [{"swaps": swaps, "tau": kendall_tau(order), measure.column: value}
             for (swaps, order), value in zip(drawn, scores)]
    return pd.DataFrame(rows)


def _interchangeable_pairs(model: nn.Module, blocks: list[str], modules: dict[str, nn.Module],
                           x: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs of block positions whose modules share a type and input and output shapes."""
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
    return [(a, b) for members in groups.values() for a, b in itertools.combinations(members, 2)]


def _reordered_scores(model: nn.Module, blocks: list[str], modules: dict[str, nn.Module],
                      orders: list[list[int]], x: torch.Tensor, measure: Measure, reference: torch.Tensor,
                      plan: "Plan | None", gate: ResidualGate | None) -> list[float]:
    """The score with the blocks placed in each order; with a plan, orders sorted and memo-shared."""
    if plan is None or not plan.passes:
        scores = []
        for order in orders:
            with _placed(model, blocks, order, modules):
                scores.append(_score(model, x, measure, reference))
        return scores
    parts: list[list[torch.Tensor]] = [[] for _ in orders]
    for chunk, rows in zip(x.split(plan.chunk), reference.split(plan.chunk)):
        with torch.no_grad(), plan.memo(model, gate) as memo:
            for i in sorted(range(len(orders)), key=lambda i: orders[i]):
                with _placed(model, blocks, orders[i], modules):
                    memo.start(tuple(orders[i]))
                    parts[i].append(measure.per_image(_logits(model, chunk), rows))
    return [float(torch.cat(p).mean()) for p in parts]


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


# --------------------------------------------------------------------------------------------------
# checking a reuse plan against plain passes


def _checked(plan: Plan, model: nn.Module, gate: ResidualGate, x: torch.Tensor,
             measure: Measure = Measure()) -> Plan:
    """Turn off what does not reproduce plain passes on ``x`` (two images): stacking, memo, chain.

    Whatever fails here (a model the probe misread) falls back to plain passes as well.
    """
    n = gate.n
    masks = torch.ones(4, n, device=gate.mask.device)
    masks[1, plan.order[-1]] = masks[2, plan.order[0]] = 0
    masks[3] = 0
    silent = _Steps(None, 0)
    plain = _masked_outputs(model, gate, x, masks, None, silent, lambda out, _: out)
    for rows in (2 * len(x), 1):   # two masks stacked a pass (batch dimension first), else one
        plan.rows = rows
        if _agrees(lambda: _masked_outputs(model, gate, x, masks, plan, silent, lambda out, _: out), plain):
            plan.rows = STACKED_ROWS if rows > 1 else 1
            break
    else:
        plan.passes = False
    if plan.chain:
        plan.chain = _chain_agrees(plan, model, gate, x, plain[0].argmax(1), silent, measure)
    return plan


def _chain_agrees(plan: Plan, model: nn.Module, gate: ResidualGate, x: torch.Tensor, classes: torch.Tensor,
                  steps: _Steps, measure: Measure = Measure()) -> bool:
    """Whether ``_ChainBackward`` gives the whole backward pass's gradient on a mixed route."""
    routes = [tuple(("branch", "skip")[u % 2] for u in range(gate.n))]
    loss, xg, inputs = _shared_forward(model, gate, x, classes, plan.blocks, measure)
    whole = torch.tensor(_routed_norms(gate, _whole_backward(loss, xg), routes, plan.order, steps))
    chain = _ChainBackward(loss, xg, inputs, plan.block_units)
    return _agrees(lambda: [torch.tensor(_routed_norms(gate, chain, routes, plan.order, steps))], [whole])


def _agrees(compute: Callable[[], list[torch.Tensor]], expected: list[torch.Tensor]) -> bool:
    """Whether ``compute()`` runs and matches ``expected`` to float rounding."""
    try:
        found = compute()
    except Exception:  # noqa: BLE001 - a reuse the model does not support: use plain passes
        return False
    return all(a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())))
               for a, b in zip(found, expected))
