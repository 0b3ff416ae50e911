"""The recurrent layers, ``RNN`` and ``FixedPoint``: kept importable here; they live in ``fastbp.layers.recurrent``."""

from .layers.recurrent import RNN, ConvergenceError, FixedPoint

__all__ = ["RNN", "FixedPoint", "ConvergenceError"]
