"""Numba backend of the kernel contract (see ``fastbp._kernels.reference``).

Importing this package selects Numba's OpenMP threading layer (``_threads``)
and nothing else: every kernel compiles, or loads from Numba's on-disk cache,
on its first call. Modules: ``microkernel`` (LLVM-IR register tile),
``packing``, ``gemm`` (the five loops and the fused epilogue), ``activations``,
``dense``, ``losses``, ``mlp`` (a whole dense stack's step), ``optim``,
``rnn``, ``gated`` (LSTM, GRU).
"""

from ..reference import KERNELS
from ._threads import ISA
from .activations import activation_backward, activation_forward
from .dense import dense_backward, dense_forward
from .gemm import gemm
from .losses import binary_cross_entropy, mse, softmax_cross_entropy, softmax_cross_entropy_index
from .mlp import mlp_loss_and_grad
from .optim import adam_step, all_finite, rmsprop_step, sgd_step
from .rnn import fixed_point_adjoint, fixed_point_forward, rnn_backward, rnn_forward
from .gated import gru_backward, gru_forward, lstm_backward, lstm_forward

NAME = "numba"

# The contract's kernels (one list, in reference.py) plus what describes this backend.
__all__ = ["NAME", "ISA", *KERNELS]
