"""The univariate functions a KAN edge can be fixed to or fitted with, as pykan names them.

pykan stores a symbolic edge as a function *name* (in ``*_config.yml``) plus affine parameters
(a, b, c, d): phi(x) = c * f(a * x + b) + d. The same table serves reading those edges and
suggesting formulas; ``complexity`` follows pykan's SYMBOLIC_LIB so rankings agree with its
``auto_symbolic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class SymbolicFunction:
    name: str                        # pykan's name: "x^2", "sin", "gaussian"
    torch: Callable[[Tensor], Tensor]
    complexity: int
    template: str                    # how c*f(a*x+b)+d prints, "{u}" standing for a*x+b

    def __call__(self, u: Tensor) -> Tensor:
        return self.torch(u)


def _f(name: str, fn: Callable[[Tensor], Tensor], complexity: int, template: str) -> SymbolicFunction:
    return SymbolicFunction(name, fn, complexity, template)


FUNCTIONS: dict[str, SymbolicFunction] = {f.name: f for f in [
    _f("0", lambda u: u * 0, 0, "0"),
    _f("x", lambda u: u, 1, "{u}"),
    _f("x^2", lambda u: u ** 2, 2, "({u})^2"),
    _f("x^3", lambda u: u ** 3, 3, "({u})^3"),
    _f("x^4", lambda u: u ** 4, 3, "({u})^4"),
    _f("x^5", lambda u: u ** 5, 3, "({u})^5"),
    _f("1/x", lambda u: 1 / u, 2, "1/({u})"),
    _f("1/x^2", lambda u: 1 / u ** 2, 2, "1/({u})^2"),
    _f("1/x^3", lambda u: 1 / u ** 3, 3, "1/({u})^3"),
    _f("1/x^4", lambda u: 1 / u ** 4, 4, "1/({u})^4"),
    _f("1/x^5", lambda u: 1 / u ** 5, 5, "1/({u})^5"),
    _f("sqrt", torch.sqrt, 2, "sqrt({u})"),
    _f("x^1.5", lambda u: torch.sqrt(u) ** 3, 4, "({u})^1.5"),
    _f("1/x^0.5", lambda u: 1 / torch.sqrt(u), 2, "1/sqrt({u})"),
    _f("x^0.5", torch.sqrt, 2, "sqrt({u})"),
    _f("1/sqrt(x)", lambda u: 1 / torch.sqrt(u), 2, "1/sqrt({u})"),
    _f("exp", torch.exp, 2, "exp({u})"),
    _f("log", torch.log, 2, "log({u})"),
    _f("abs", torch.abs, 3, "|{u}|"),
    _f("sin", torch.sin, 2, "sin({u})"),
    _f("cos", torch.cos, 2, "cos({u})"),
    _f("tan", torch.tan, 3, "tan({u})"),
    _f("tanh", torch.tanh, 3, "tanh({u})"),
    _f("sgn", torch.sign, 3, "sgn({u})"),
    _f("arcsin", torch.arcsin, 4, "arcsin({u})"),
    _f("arccos", torch.arccos, 4, "arccos({u})"),
    _f("arctan", torch.arctan, 4, "arctan({u})"),
    _f("arctanh", torch.arctanh, 4, "arctanh({u})"),
    _f("gaussian", lambda u: torch.exp(-u ** 2), 3, "exp(-({u})^2)"),
]}
