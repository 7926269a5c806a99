"""netatlas: explore neural networks and the datasets they see.

In a notebook: ``import netatlas as na; atlas = na.open("model.pt", "images/", arch="resnet18")``, then
``atlas.neurons("layer4", unit=7)``, ``atlas.dendromap()``, ``atlas.map()``, ``atlas.diagram()``,
``atlas.residual()``, ``atlas.facets(...)``, ``atlas.activations([...])``, ``atlas.app()``; ``na.kan(path)``.
"""

from typing import Any

from netatlas.backend.errors import NetatlasError

__all__ = ["NetatlasError", "open", "kan"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``open`` and ``kan`` import Panel and torch on first use, so ``import netatlas`` stays light."""
    if name in ("open", "kan"):
        from netatlas import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'netatlas' has no attribute {name!r}")
