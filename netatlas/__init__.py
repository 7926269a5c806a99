"""netatlas: explore neural networks and the datasets they see."""

from netatlas.backend.errors import NetatlasError

__all__ = ["NetatlasError"]
__version__ = "0.1.0"
