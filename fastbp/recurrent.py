"""The recurrent layers, ``RNN``, ``LSTM``, ``GRU`` and ``FixedPoint``: kept importable here; they live in
``fastbp.layers.recurrent`` and ``fastbp.layers.gated``."""

from .layers.gated import GRU, LSTM
from .layers.recurrent import RNN, ConvergenceError, FixedPoint

__all__ = ["RNN", "LSTM", "GRU", "FixedPoint", "ConvergenceError"]
