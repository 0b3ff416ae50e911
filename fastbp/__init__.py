"""fastbp: backpropagation on the CPU, as fast as the hardware allows.

Kernels live in ``fastbp.kernels`` and run on one of two compiled backends,
Cython with OpenMP or Numba, chosen with ``set_backend``/``backend``. On them,
``Network`` of ``Dense`` layers (after an optional recurrent ``RNN``, or
with ``FixedPoint`` layers), the optimizers ``SGD``/``RMSprop``/``Adam``,
``EarlyStopping``, ``schedules``, ``gradcheck`` and ``save``/``load`` are what
a user trains with.
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
from .callbacks import EarlyStopping
from .gradcheck import gradcheck
from .layers import Dense
from .network import Network
from .recurrent import RNN, ConvergenceError, FixedPoint
from .optim import SGD, Adam, RMSprop
from .serialization import load, save

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
    "RNN",
    "FixedPoint",
    "ConvergenceError",
    "SGD",
    "RMSprop",
    "Adam",
    "EarlyStopping",
    "gradcheck",
    "save",
    "load",
    "callbacks",
    "init",
    "losses",
    "optim",
    "schedules",
]
