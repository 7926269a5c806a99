"""netatlas: explore neural networks and the datasets they see.

In a notebook: ``import netatlas as na; atlas = na.open("model.pt", "images/", arch="resnet18")``, then
``atlas.neurons("layer4", unit=7)``, ``atlas.dendromap()``, ``atlas.map()``, ``atlas.diagram()``,
``atlas.residual()``, ``atlas.facets(...)``, ``atlas.activations([...])``, ``atlas.app()``; ``na.kan(path)``.
"""

from netatlas.backend.errors import NetatlasError

__all__ = ["open", "kan", "NetatlasError", "__version__"]
__version__ = "0.1.0"
_LAZY = ("open", "kan")   # in netatlas.notebook, which imports Panel and torch: loaded on first use


def __getattr__(name: str) -> object:
    """``open`` and ``kan`` import Panel and torch on first use, so ``import netatlas`` stays light."""
    if name in _LAZY:
        from netatlas import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'netatlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What ``dir(netatlas)`` and tab completion offer: the public names (``open`` and ``kan`` before their
    first use too), not the subpackages and helpers that importing happens to bind."""
    return sorted(__all__)
