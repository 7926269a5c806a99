"""Suggest formulas for one edge's curve: fit c*f(a*x+b)+d for library functions and rank them.

The search is pykan's ``fit_params``: r2 of f(a*x+b) against y on an (a, b) grid, zoomed three
times around the best cell, with c and d by least squares; the ranking is its ``suggest_symbolic``
rule, score = w*complexity + (1-w)*log2(1 + 1e-5 - r2), lowest first. Two deliberate differences,
both the identity for x spanning [-1, 1] with unit-variance y (so results match pykan there):
(a, b) are searched on x rescaled to [-1, 1], so the same ranges suit any edge's domain, and
pykan's 1e-4 guard against near-constant f(a*x+b) is applied to y scaled to unit variance, so the
ranking does not depend on the curve's amplitude. Each fit is then rewritten in a canonical form
(a > 0 for odd and even f, a = 1 for powers, b within half a period of sin) so expressions read simply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from netatlas.backend.kan.library import FUNCTIONS, SymbolicFunction
from netatlas.backend.errors import NetatlasError

DEFAULT_FUNCTIONS = ("x", "x^2", "x^3", "x^4", "1/x", "1/x^2", "sqrt", "exp", "log", "abs",
                     "sin", "tanh", "arctan", "gaussian")
MIN_POINTS = 8
POOR_R2 = 0.9

_POWERS = {"x": 1, "x^2": 2, "x^3": 3, "x^4": 4, "x^5": 5, "1/x": -1, "1/x^2": -2}
_ABS_POWERS = {"abs": 1.0, "sqrt": 0.5, "x^0.5": 0.5, "1/sqrt(x)": -0.5}   # f(s*u) = s^p * f(u), s > 0
_ODD = {"sin", "tan", "tanh", "arctan", "arcsin", "arctanh", "sgn"}
_EVEN = {"cos", "gaussian", "abs"}
_SHIFTS = {"sin": (math.pi, -1), "cos": (math.pi, -1), "tan": (math.pi, 1)}   # f(u + s) = sign * f(u)


@dataclass(frozen=True)
class FormulaFit:
    """phi(x) ~ c * f(a*x + b) + d for library function ``name``, how well it fits and its rank score.

    ``note`` flags a result to read with care (a constant curve, a poor fit); empty otherwise.
    """

    name: str
    a: float
    b: float
    c: float
    d: float
    r2: float
    complexity: int
    score: float
    note: str = ""

    @property
    def function(self) -> SymbolicFunction:
        return FUNCTIONS[self.name]

    def __call__(self, x: Tensor | np.ndarray | float) -> Tensor | np.ndarray:
        """The fitted formula at ``x``: a tensor for a tensor, a NumPy array otherwise."""
        t = torch.as_tensor(x, dtype=torch.float64)
        value = self.c * self.function(self.a * t + self.b) + self.d
        return value if isinstance(x, Tensor) else value.numpy()

    def expression(self, var: str = "x", digits: int = 3) -> str:
        """The formula as text with ``digits`` significant digits, trivial factors and terms left out."""
        a, b, c, d = (float(_number(v, digits)) for v in (self.a, self.b, self.c, self.d))
        if self.name == "0" or c == 0:
            return _number(d, digits)
        b = 0.0 if abs(b) < 10.0 ** -digits * max(1.0, abs(a)) else b      # negligible next to a*x
        d = 0.0 if abs(d) < 10.0 ** -digits * abs(c) else d                # negligible next to c*f
        u = _affine(var, a, b, digits)
        template = self.function.template
        if u == var:
            template = template.replace("({u})", "{u}")
        if template == "{u}" and u != var and c != 1:
            template = "({u})"
        body = template.format(u=u)
        if c == 1:
            text = body
        elif c == -1:
            text = "-" + body
        elif body.startswith("1/"):
            text = _number(c, digits) + body[1:]
        else:
            text = f"{_number(c, digits)}*{body}"
        return text + _term(d, digits)


def suggest_formulas(x: Tensor | np.ndarray, y: Tensor | np.ndarray, functions: Sequence[str] | None = None,
                     top: int = 5, weight_simple: float = 0.8, a_range: tuple[float, float] = (-10.0, 10.0),
                     b_range: tuple[float, float] = (-10.0, 10.0), grid: int = 41, iterations: int = 3,
                     max_points: int = 256) -> list[FormulaFit]:
    """The ``top`` formulas c*f(a*x+b)+d for the curve (x, y), best (lowest score) first.

    ``functions`` are library names (``DEFAULT_FUNCTIONS`` by default); ``weight_simple`` trades
    simplicity for fit as in pykan's ``suggest_symbolic``. The grid search runs on at most
    ``max_points`` points spread over x; c, d and r2 use every point. A constant curve gives one
    constant fit, flagged in its ``note``.
    """
    names = _check_names(functions)
    xs, ys = _as_curve(x, y)
    if _is_constant(ys):
        return [_constant_fit(ys, weight_simple)]
    fits = [_fit(name, xs, ys, weight_simple, a_range, b_range, grid, iterations, max_points) for name in names]
    return sorted(fits, key=lambda fit: fit.score)[:top]


def fit_formula(x: Tensor | np.ndarray, y: Tensor | np.ndarray, name: str, weight_simple: float = 0.8,
                a_range: tuple[float, float] = (-10.0, 10.0), b_range: tuple[float, float] = (-10.0, 10.0),
                grid: int = 41, iterations: int = 3, max_points: int = 256) -> FormulaFit:
    """The best c*f(a*x+b)+d for one library function ``name``: pykan's ``fit_params``.

    A constant curve gives the flagged constant fit (function "0"), as in ``suggest_formulas``.
    """
    _check_names([name])
    xs, ys = _as_curve(x, y)
    if _is_constant(ys):
        return _constant_fit(ys, weight_simple)
    return _fit(name, xs, ys, weight_simple, a_range, b_range, grid, iterations, max_points)


def score(r2: float, complexity: int, weight_simple: float) -> float:
    """pykan's ranking loss: complexity in bits against log2 of the unexplained variance (+1e-5)."""
    return weight_simple * complexity + (1 - weight_simple) * math.log2(1 + 1e-5 - r2)


def _fit(name: str, x: Tensor, y: Tensor, weight_simple: float, a_range: tuple[float, float],
         b_range: tuple[float, float], grid: int, iterations: int, max_points: int) -> FormulaFit:
    """Search (a, b) on x rescaled to [-1, 1], map back to x, then fit c, d on every point."""
    fn = FUNCTIONS[name]
    centre, half = (x.max() + x.min()).item() / 2, (x.max() - x.min()).item() / 2
    ts, tys = _search_points(x, y, max_points)
    a, b = _grid_search(fn, (ts - centre) / half, tys, a_range, b_range, grid, iterations)
    a, b = a / half, b - a * centre / half
    c, d, r2 = _linear_fit(fn(a * x + b), y)
    a, b, c, d = _canonical(name, a, b, c, d)
    note = f"poor fit (r2 < {POOR_R2})" if r2 < POOR_R2 else ""
    return FormulaFit(name, a, b, c, d, r2, fn.complexity, score(r2, fn.complexity, weight_simple), note)


@torch.no_grad()
def _grid_search(fn: SymbolicFunction, t: Tensor, y: Tensor, a_range: tuple[float, float],
                 b_range: tuple[float, float], grid: int, iterations: int) -> tuple[float, float]:
    """(a, b) maximising pykan's r2 of f(a*t+b) against y over ``iterations`` zooms of the grid.

    Each round is one batched evaluation over a [grid, grid, n] block; cells where f leaves its
    domain anywhere (NaN, inf) score 0, as pykan's ``nan_to_num`` makes them. A round zooms to the
    best cell's neighbours, as pykan does, unless the best lies on an edge of a zoomed window: then
    the window moves to centre it first (pykan stays stuck there, short of the optimum).
    """
    n = t.numel()
    y = (y - y.mean()) / (y - y.mean()).norm() * math.sqrt(n)   # unit variance: Syy = n
    windows = (a_range, b_range)
    zooms = rounds = 0
    while zooms < iterations and rounds < 3 * iterations:
        a_values, b_values = (torch.linspace(lo, hi, grid, dtype=torch.float64) for lo, hi in windows)
        values = fn(a_values[:, None, None] * t + b_values[None, :, None])     # [grid, grid, n]
        mean = values.mean(-1)
        sff = (values.square().sum(-1) - n * mean.square()).clamp_min(0)
        r2 = torch.nan_to_num((values @ y).square() / (sff * n + 1e-4), nan=0.0, posinf=0.0, neginf=0.0)
        best = divmod(int(r2.argmax()), grid)
        axes = list(zip((a_values, b_values), best, (a_range, b_range)))
        zoom = not any(_on_inner_edge(*axis) for axis in axes)
        windows = tuple(_next_window(*axis, zoom) for axis in axes)
        zooms, rounds = zooms + zoom, rounds + 1
    return a_values[best[0]].item(), b_values[best[1]].item()


def _on_inner_edge(values: Tensor, k: int, limits: tuple[float, float]) -> bool:
    """Is the best value ``values[k]`` an edge of the window that is not an edge of the whole range?"""
    tolerance = 1e-9 * (limits[1] - limits[0])
    return (k == 0 and values[0] > limits[0] + tolerance) or (k == len(values) - 1 and values[-1] < limits[1] - tolerance)


def _next_window(values: Tensor, k: int, limits: tuple[float, float], zoom: bool) -> tuple[float, float]:
    """The neighbours of ``values[k]`` (a zoom), or the same width centred on it within ``limits``."""
    if zoom:
        return values[max(k - 1, 0)].item(), values[min(k + 1, len(values) - 1)].item()
    half = (values[-1] - values[0]).item() / 2
    centre = min(max(values[k].item(), limits[0] + half), limits[1] - half)
    return centre - half, centre + half


def _linear_fit(f: Tensor, y: Tensor) -> tuple[float, float, float]:
    """c, d minimising |y - (c*f + d)|^2 and the r2 of that fit; an unusable f fits as c = 0, r2 = 0."""
    fc, yc = f - f.mean(), y - y.mean()
    sff, sfy, syy = fc.square().sum().item(), (fc * yc).sum().item(), yc.square().sum().item()
    if not (math.isfinite(sff) and math.isfinite(sfy)) or sff <= 0:
        return 0.0, y.mean().item(), 0.0
    c = sfy / sff
    return c, (y.mean() - c * f.mean()).item(), min(max(sfy * sfy / (sff * syy), 0.0), 1.0)


def _canonical(name: str, a: float, b: float, c: float, d: float) -> tuple[float, float, float, float]:
    """The same function written simply: |a| = 1 where f scales out, b = 0 for exp and x, a > 0 by
    symmetry, b within half a period for sin, cos and tan."""
    if a == 0:
        return a, b, c, d
    if name in _POWERS:                              # c*(a*x+b)^p = c*a^p * (x + b/a)^p
        a, b, c = 1.0, b / a, c * a ** _POWERS[name]
    elif name in _ABS_POWERS:                        # sqrt(a*x+b) = |a|^0.5 * sqrt(x*a/|a| + b/|a|)
        scale = abs(a)
        a, b, c = a / scale, b / scale, c * scale ** _ABS_POWERS[name]
    elif name == "log":
        scale = abs(a)
        a, b, d = a / scale, b / scale, d + c * math.log(scale)
    elif name == "exp" and abs(b) < 700 and math.isfinite(c * math.exp(b)):
        b, c = 0.0, c * math.exp(b)
    if a < 0 and name in _ODD | _EVEN:
        a, b, c = -a, -b, (-c if name in _ODD else c)
    if name in _SHIFTS:                              # b into [-s/2, s/2): sin(u + pi) = -sin(u)
        shift, sign = _SHIFTS[name]
        turns = math.floor(b / shift + 0.5)
        b, c = b - turns * shift, c * sign ** turns
    if name == "x":
        b, d = 0.0, d + c * b
    return a, b, c, d


def _search_points(x: Tensor, y: Tensor, max_points: int) -> tuple[Tensor, Tensor]:
    """At most ``max_points`` points spread evenly over sorted x: the grid search's cost is linear in n."""
    if x.numel() <= max_points:
        return x, y
    order = torch.argsort(x)[torch.linspace(0, x.numel() - 1, max_points).round().long()]
    return x[order], y[order]


def _as_curve(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """x and y as float64 vectors, or a NetatlasError saying what is wrong with them."""
    xs, ys = _vector(x), _vector(y)
    if xs.numel() != ys.numel():
        raise NetatlasError(f"x and y must have the same number of points, got {xs.numel()} and {ys.numel()}")
    bad = int((~torch.isfinite(xs) | ~torch.isfinite(ys)).sum())
    if bad:
        raise NetatlasError(f"the curve has NaN or infinite values at {bad} of {xs.numel()} points; "
                            "draw it over a range where the edge is finite")
    if xs.numel() < MIN_POINTS:
        raise NetatlasError(f"a formula needs at least {MIN_POINTS} points of the curve, got {xs.numel()}")
    if xs.max() == xs.min():
        raise NetatlasError("every point of the curve has the same x; sample the edge over a range of inputs")
    return xs, ys


def _vector(values: Tensor | np.ndarray) -> Tensor:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().flatten()
    return torch.from_numpy(np.asarray(values, dtype=np.float64).ravel())


def _is_constant(y: Tensor) -> bool:
    return bool(y.std() <= 1e-9 * max(1.0, y.abs().max().item()))


def _constant_fit(y: Tensor, weight_simple: float) -> FormulaFit:
    """y = mean(y) exactly, as pykan's function "0" plus d; flagged so callers can say the edge is constant."""
    complexity = FUNCTIONS["0"].complexity
    return FormulaFit("0", 1.0, 0.0, 0.0, y.mean().item(), 1.0, complexity,
                      score(1.0, complexity, weight_simple), "constant curve")


def _check_names(names: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(DEFAULT_FUNCTIONS if names is None else names)
    unknown = [name for name in names if name not in FUNCTIONS]
    if unknown or not names:
        raise NetatlasError(f"unknown symbolic function(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(FUNCTIONS)}")
    return names


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def _term(value: float, digits: int) -> str:
    """`` + v`` / `` - v`` for an added constant, nothing for 0."""
    if value == 0:
        return ""
    return f" {'-' if value < 0 else '+'} {_number(abs(value), digits)}"


def _affine(var: str, a: float, b: float, digits: int) -> str:
    scaled = var if a == 1 else f"-{var}" if a == -1 else f"{_number(a, digits)}*{var}"
    return scaled + _term(b, digits)
