"""fastbp: backpropagation on the CPU, as fast as the hardware allows.

Kernels live in ``fastbp.kernels`` and run on one of two compiled backends,
Cython with OpenMP or Numba, chosen with ``set_backend``/``backend``. On them,
``Network`` of ``Dense`` layers (after recurrent ``RNN``/``LSTM``/``GRU`` layers,
with ``FixedPoint`` layers, or after ``Conv2D``/pooling layers over images),
the optimizers ``SGD``/``RMSprop``/``Adam``,
``EarlyStopping``, ``ModelCheckpoint``, ``schedules``, ``gradcheck``,
``save``/``load``/``load_checkpoint`` and ``export_onnx`` are what a user
trains and ships with.
"""

from . import _threadpool, callbacks, init, kernels, losses, optim, schedules
from ._backend import (
    available_backends,
    backend,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
)
from .callbacks import EarlyStopping, ModelCheckpoint
from .checkpoint import Checkpoint, load_checkpoint
from .onnx_export import export_onnx  # imports onnx only when called
from .gradcheck import gradcheck
from .layers import AvgPool2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, Layer, MaxPool2D, register_layer
from .network import Network
from .layers.gated import GRU, LSTM
from .layers.recurrent import RNN, ConvergenceError, FixedPoint
from .optim import SGD, Adam, RMSprop
from .serialization import load, save
from .continual import EWC, Rehearsal, load_guard

__version__ = "0.1.0"

# threadpoolctl (when installed) lists and limits fastbp's thread pool.
_threadpool.register()

__all__ = [
    "kernels",
    "available_backends",
    "backend",
    "get_backend",
    "set_backend",
    "get_num_threads",
    "set_num_threads",
    "Network",
    "Dense",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "Flatten",
    "Layer",
    "register_layer",
    "RNN",
    "LSTM",
    "GRU",
    "FixedPoint",
    "ConvergenceError",
    "SGD",
    "RMSprop",
    "Adam",
    "EarlyStopping",
    "ModelCheckpoint",
    "Checkpoint",
    "load_checkpoint",
    "export_onnx",
    "gradcheck",
    "save",
    "load",
    "EWC",
    "Rehearsal",
    "load_guard",
    "callbacks",
    "init",
    "losses",
    "optim",
    "schedules",
]
