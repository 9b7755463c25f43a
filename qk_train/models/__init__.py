"""The networks of the unified Query-Kontext model."""
from .unified import Batch, QKModel

__all__ = ["Batch", "QKModel"]
