"""Layers: one module per layer type, each a ``Layer`` (``base.py``, the protocol) registered by name.

``Network``, its workspace, the training loop, copies and save/load know
layers only through that protocol: adding a layer type is one module here
(plus its kernels); see README "Adding a layer".
"""

from .base import LAYER_TYPES, Gradient, Layer, LayerWorkspace, Parameter, layer_from_config, register_layer
from .conv import Conv2D
from .dense import Dense
from .flatten import Flatten
from .gated import GRU, LSTM
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .recurrent import RNN, ConvergenceError, FixedPoint

__all__ = ["Layer", "LayerWorkspace", "Parameter", "Gradient", "register_layer", "layer_from_config",
           "LAYER_TYPES", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten", "RNN",
           "LSTM", "GRU", "FixedPoint", "ConvergenceError"]
