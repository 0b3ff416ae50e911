"""fastbp: backpropagation on the CPU, as fast as the hardware allows.

Kernels live in ``fastbp.kernels`` and run on one of two compiled backends,
Cython with OpenMP or Numba, chosen with ``set_backend``/``backend``.
"""

from . import kernels
from ._backend import (
    available_backends,
    backend,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
)

__version__ = "0.1.0"

__all__ = [
    "kernels",
    "available_backends",
    "backend",
    "get_backend",
    "set_backend",
    "get_num_threads",
    "set_num_threads",
]
