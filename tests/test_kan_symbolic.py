"""Formula suggestions for an edge's curve, checked against the generating formula, numpy and pykan itself."""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
import pytest
import torch
from kan import KAN
from kan.spline import curve2coef
from kan.utils import fit_params

from netatlas.backend.kan.library import FUNCTIONS
from netatlas.backend.kan.symbolic import FormulaFit, fit_formula, suggest_formulas
from netatlas.backend.errors import NetatlasError

NUMPY = {"x": lambda u: u, "x^2": np.square, "sin": np.sin, "tanh": np.tanh, "exp": np.exp, "log": np.log,
         "1/x": lambda u: 1 / u, "gaussian": lambda u: np.exp(-u ** 2), "abs": np.abs}


def noisy(f, a, b, c, d, x, noise=1e-3, seed=0):
    """c*f(a*x+b)+d by numpy, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return c * NUMPY[f](a * x + b) + d + noise * rng.standard_normal(x.shape)


def uniform(low, high, n=300, seed=1):
    return np.random.default_rng(seed).uniform(low, high, n)


# (f, a, b, c, d, x range): parameters already in the canonical form the fit reports
CASES = [("sin", 3.0, 0.5, 1.5, -0.2, (-1, 1)), ("sin", 2.0, 1.0, 0.7, 0.3, (-3, 2)),
         ("tanh", 4.0, -1.0, 1.0, 0.0, (-1, 1)), ("gaussian", 3.0, -0.5, 2.0, 0.3, (-1, 1)),
         ("exp", 1.3, 0.0, 0.5, 0.1, (-1, 1)), ("x^2", 1.0, -0.3, 2.0, 1.0, (-1, 1)),
         ("log", 1.0, 1.5, 1.0, 0.0, (-1, 1)), ("1/x", 1.0, 1.8, 1.0, 0.0, (-1, 1)),
         ("abs", 1.0, -0.2, 1.0, 0.0, (-1, 1)), ("tanh", 1.5, 2.0, -0.8, 0.1, (-4, 0))]


@pytest.mark.parametrize("f, a, b, c, d, span", CASES)
def test_recovers_the_generating_function_and_its_parameters(f, a, b, c, d, span):
    x = uniform(*span)
    fits = suggest_formulas(x, noisy(f, a, b, c, d, x))
    best = fits[0]
    assert best.name == f
    assert [fit.score for fit in fits] == sorted(fit.score for fit in fits)
    assert best.r2 > 0.9999
    np.testing.assert_allclose([best.a, best.b, best.c, best.d], [a, b, c, d], atol=0.02, rtol=0.02)
    grid = np.linspace(*span, 50)
    np.testing.assert_allclose(best(grid), c * NUMPY[f](a * grid + b) + d, atol=5e-3 * max(1, abs(c)))


# the search is pykan's fit_params exactly for unit-variance y over x spanning [-1, 1]
CURVES = [("sin", lambda x: 1.5 * np.sin(3 * x + 0.5)), ("exp", lambda x: 0.7 * np.exp(1.3 * x - 0.4)),
          ("x^2", lambda x: 2 * (x - 0.3) ** 2), ("log", lambda x: np.log(x + 1.5)),
          ("1/x", lambda x: 1 / (x + 1.8)), ("sqrt", lambda x: np.sqrt(x + 1.2)),
          ("tanh", lambda x: np.tanh(4 * x - 1)), ("gaussian", lambda x: np.exp(-(2 * x - 0.3) ** 2))]


def standardised_sample(curve, seed):
    x = np.linspace(-1, 1, 100)
    y = curve(x) + 0.01 * np.random.default_rng(seed).standard_normal(100)
    return x, (y - y.mean()) / y.std()


def pykan_fit(x, y, name, iterations):
    """pykan's fitted curve and its r2 by numpy (pykan reports r2 with a 1e-4 in the denominator)."""
    params, _ = fit_params(torch.from_numpy(x), torch.from_numpy(y), FUNCTIONS[name].torch,
                           grid_number=101, iteration=iterations, verbose=False)
    a, b, c, d = params.tolist()
    fitted = c * FUNCTIONS[name].torch(torch.from_numpy(a * x + b)).numpy() + d
    return fitted, 1 - np.square(y - fitted).sum() / np.square(y - y.mean()).sum()


@pytest.mark.parametrize("name, curve", CURVES)
def test_one_grid_agrees_with_pykans_fit_params(name, curve):
    x, y = standardised_sample(curve, seed=3)
    theirs, their_r2 = pykan_fit(x, y, name, iterations=1)
    ours = fit_formula(x, y, name, grid=101, iterations=1)
    assert ours.r2 == pytest.approx(their_r2, abs=1e-6)      # pykan's grid is float32
    np.testing.assert_allclose(ours(x), theirs, atol=1e-4)


@pytest.mark.parametrize("name, curve", CURVES)
def test_zoomed_search_fits_at_least_as_well_as_pykans(name, curve):
    # pykan's zoom can end on the edge of its window, short of the optimum; ours moves the window
    x, y = standardised_sample(curve, seed=3)
    theirs, their_r2 = pykan_fit(x, y, name, iterations=3)
    ours = fit_formula(x, y, name, grid=101, iterations=3)
    assert ours.r2 >= their_r2 - 1e-9


def pykan_edge(target, x):
    """A one-edge pykan KAN whose spline is ``target``, and pykan's own suggest_symbolic on it."""
    model = KAN(width=[1, 1], grid=10, k=3, auto_save=False, seed=0)
    layer = model.act_fun[0]
    knots_x = torch.linspace(-1, 1, 201)[:, None]
    layer.coef.data = curve2coef(knots_x, target(knots_x)[:, :, None], layer.grid, layer.k)
    model(x[:, None])
    with contextlib.redirect_stdout(io.StringIO()):
        name, _, r2, _ = model.suggest_symbolic(0, 0, 0, lib=list(LIB), verbose=False)
    return model.acts[0][:, 0].detach(), model.spline_postacts[0][:, 0, 0].detach(), name, r2


LIB = ("x", "x^2", "x^3", "sin", "tanh", "exp", "gaussian", "abs")


@pytest.mark.parametrize("target", [lambda x: 0.8 * torch.sin(2.5 * x + 0.3), lambda x: torch.tanh(0.8 * x),
                                    lambda x: torch.exp(1.2 * x) - 1, lambda x: 0.5 * x ** 2 - 0.2 * x])
def test_ranking_matches_pykans_suggest_symbolic(target):
    # tanh(0.8 x): sin fits nearly as well as tanh and is simpler, so pykan's rule picks sin
    x, y, their_name, their_r2 = pykan_edge(target, torch.linspace(-1, 1, 150))
    best = suggest_formulas(x, y, functions=LIB)[0]
    assert best.name == their_name
    assert best.r2 == pytest.approx(their_r2, abs=1e-5)
    expected = 0.8 * best.complexity + 0.2 * np.log2(1 + 1e-5 - best.r2)
    assert best.score == pytest.approx(expected)


def test_r2_and_least_squares_use_every_point_when_the_search_is_subsampled():
    x = uniform(-1, 1, n=5000)
    y = noisy("sin", 3.0, 0.5, 1.5, -0.2, x, noise=0.05)
    fit = fit_formula(x, y, "sin", max_points=128)
    f = np.sin(fit.a * x + fit.b)
    design = np.stack([f, np.ones_like(f)], 1)
    (c, d), *_ = np.linalg.lstsq(design, y, rcond=None)
    r2 = 1 - np.square(y - c * f - d).sum() / np.square(y - y.mean()).sum()
    assert (fit.c, fit.d, fit.r2) == pytest.approx((c, d, r2), rel=1e-9)
    assert abs(fit.a - 3.0) < 0.02


def test_tiny_curves_fit_like_unit_ones():
    # pykan's 1e-4 guard is absolute, so a curve of amplitude 1e-4 would score poorly there
    x = uniform(-1, 1)
    y = noisy("sin", 3.0, 0.5, 1.5, -0.2, x)
    unit = suggest_formulas(x, y)[0]
    tiny = suggest_formulas(torch.from_numpy(x).requires_grad_(), torch.from_numpy(y * 1e-4))[0]
    assert (tiny.name, tiny.a, tiny.b, tiny.r2) == pytest.approx((unit.name, unit.a, unit.b, unit.r2))
    assert (tiny.c, tiny.d) == pytest.approx((unit.c * 1e-4, unit.d * 1e-4))
    assert tiny.expression() == "0.00015*sin(3*x + 0.5) - 2e-05"


def test_out_of_domain_cells_give_poor_fits_never_nan_or_warnings():
    x = np.linspace(-1, 1, 100)
    y = np.sin(3 * x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hopeless = fit_formula(x, y, "log", a_range=(1, 2), b_range=(-0.5, 0.5))   # log(u), u < 0 somewhere
        fits = suggest_formulas(x, y, functions=[name for name in FUNCTIONS if name != "0"], top=100)
    assert (hopeless.r2, hopeless.c) == (0.0, 0.0)
    assert hopeless.d == pytest.approx(y.mean())
    assert hopeless.note.startswith("poor fit")
    values = np.array([[fit.a, fit.b, fit.c, fit.d, fit.r2, fit.score] for fit in fits])
    assert np.isfinite(values).all() and len(fits) == len(FUNCTIONS) - 1


@pytest.mark.parametrize("x, y, message", [
    (np.linspace(0, 1, 20), np.r_[np.zeros(19), np.nan], "NaN or infinite values at 1 of 20"),
    (np.linspace(0, 1, 5), np.zeros(5), "at least"),
    (np.linspace(0, 1, 20), np.zeros(19), "same number of points"),
    (np.ones(20), np.arange(20.0), "same x"),
])
def test_garbage_input_raises_a_netatlas_error(x, y, message):
    with pytest.raises(NetatlasError, match=message):
        suggest_formulas(x, y)


def test_unknown_function_names_are_refused():
    with pytest.raises(NetatlasError, match="unknown symbolic function.*cosh"):
        suggest_formulas(np.linspace(0, 1, 20), np.linspace(0, 1, 20) ** 2, functions=["sin", "cosh"])


def test_a_constant_curve_gives_one_flagged_constant_fit():
    x = np.linspace(-1, 1, 50)
    fits = suggest_formulas(x, np.full(50, 0.25))
    assert len(fits) == 1 and fits[0].note == "constant curve"
    np.testing.assert_array_equal(fits[0](x), np.full(50, 0.25))
    assert fits[0].expression() == "0.25"


def formula_fit(name, a, b, c, d):
    return FormulaFit(name, a, b, c, d, r2=1.0, complexity=FUNCTIONS[name].complexity, score=0.0)


@pytest.mark.parametrize("formula, text", [
    (formula_fit("sin", math.pi, 0.0, 1.0, 0.0), "sin(3.14*x)"),
    (formula_fit("sin", 3.0, -0.5, 2.0, 0.7), "2*sin(3*x - 0.5) + 0.7"),
    (formula_fit("x^2", 1.0, 0.0, -1.0, 0.0), "-x^2"),
    (formula_fit("x^2", 1.0, 0.3, 1.25, -2.0), "1.25*(x + 0.3)^2 - 2"),
    (formula_fit("1/x", 1.0, 1.8, 2.5, 0.0), "2.5/(x + 1.8)"),
    (formula_fit("gaussian", 2.0, 0.0, 1.0, 0.1), "exp(-(2*x)^2) + 0.1"),
    (formula_fit("abs", 1.0, -0.2, 1.0, 0.0), "|x - 0.2|"),
    (formula_fit("x", 1.0, 0.0, 0.5, 1e-5), "0.5*x"),
    (formula_fit("tanh", 2.0, 1e-5, 1e-4, 1e-8), "0.0001*tanh(2*x)"),
])
def test_expressions_read_simply(formula, text):
    assert formula.expression() == text


@pytest.mark.parametrize("name", ["sin", "x^2", "1/x", "gaussian", "exp", "tanh", "x"])
def test_expression_evaluates_to_the_formula(name):
    formula = formula_fit(name, -1.7, 0.45, -2.3, 0.8)
    x = np.linspace(0.1, 0.9, 9)
    namespace = {"x": x, "sin": np.sin, "exp": np.exp, "tanh": np.tanh}
    value = eval(formula.expression(digits=12).replace("^", "**"), namespace)
    np.testing.assert_allclose(value, -2.3 * NUMPY[name](-1.7 * x + 0.45) + 0.8, rtol=1e-9)
    np.testing.assert_allclose(formula(torch.from_numpy(x)).numpy(), value, rtol=1e-9)
