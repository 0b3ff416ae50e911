"""Cython/OpenMP backend of fastbp's kernels: the names and signatures of
``fastbp._kernels.reference``, compiled.

``ISA`` is the instruction set whose GEMM micro-kernels run ("avx512", "avx2" or
"generic"), found at import by CPUID (``FASTBP_CYTHON_ISA=avx2|generic`` lowers
it, for testing). Block sizes are read from ``fastbp._kernels.blocking`` for that
ISA; import fails with an AssertionError if the table's MR, NR differ from the
compiled micro-kernels. ``OPENMP`` is False when the extensions were built
without OpenMP, in which case every kernel runs on one thread.
"""

from .. import blocking as _blocking_table
from .. import registry as _registry
from ..reference import KERNELS
from . import _gemm, _threads

_isa_id = _gemm._detect_isa()
ISA = _gemm.ISA_NAMES[_isa_id]
_gemm._configure(
    _isa_id,
    _blocking_table.block_sizes(ISA, "float32"),
    _blocking_table.block_sizes(ISA, "float64"),
)
_gemm._configure_threads(
    _blocking_table.GEMM_MADDS_PER_THREAD,
    _blocking_table.TASKS_PER_THREAD,
    _blocking_table.MIN_PART_COLUMNS,
    _blocking_table.B_WAVE_VALUES,
    _blocking_table.PRIVATE_MAX_VALUES,
)
_gemm._configure_direct(_blocking_table.DIRECT_MAX_MADDS, _blocking_table.DIRECT_MAX_PANELS,
                        _blocking_table.DIRECT_B_COPY_MAX)
_threads._configure(_blocking_table.BACKOFF_MIN_CALLS, _blocking_table.BACKOFF_MAX_CALLS,
                    _blocking_table.BACKOFF_SLACK_SECONDS)
OPENMP = _gemm._openmp()
NAME = "cython"

from ._activations import activation_backward, activation_forward  # noqa: E402
from ._conv import conv2d_backward, conv2d_forward  # noqa: E402
from ._dense import dense_backward, dense_forward  # noqa: E402
from ._gemm import gemm  # noqa: E402
from ._mlp import mlp_loss_and_grad  # noqa: E402
from ._losses import (  # noqa: E402
    binary_cross_entropy,
    mse,
    softmax_cross_entropy,
    softmax_cross_entropy_index,
)
from ._optim import adam_step, all_finite, rmsprop_step, sgd_step  # noqa: E402
from ._pool import (  # noqa: E402
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
)
from . import _conv, _optim, _pool  # noqa: E402

_optim._configure_threads(_blocking_table.OPTIMIZER_PARALLEL_MIN_VALUES)
_conv._configure(_blocking_table.CONV_BLOCK_VALUES, _blocking_table.CONV_ROW_ALIGN,
                 _blocking_table.PARALLEL_MIN_ELEMENTS, _blocking_table.CONV_BLOCKS_PER_THREAD,
                 _blocking_table.CONV_DW_GROUPS, _blocking_table.CONV_GATHER_MIN_CHANNELS)
_pool._configure(_blocking_table.PARALLEL_MIN_ELEMENTS)
from ._rnn import fixed_point_adjoint, fixed_point_forward, rnn_backward, rnn_forward  # noqa: E402
from ._gated import gru_backward, gru_forward, lstm_backward, lstm_forward  # noqa: E402
from . import _gated, _rnn  # noqa: E402

_rnn._configure(_blocking_table.PARALLEL_MIN_ELEMENTS)
_gated._configure(_blocking_table.RECURRENT_PARALLEL_MIN_ELEMENTS,
                  _blocking_table.GATED_COLUMN_SUMS_PARALLEL_MIN_ELEMENTS)

if _registry.SOFTMAX != 10 or len(_registry.ACTIVATIONS) != 11:  # ids compiled into _activations.pxd
    raise AssertionError("fastbp._kernels.registry's activation ids differ from _activations.pxd")
if _registry.LOSS_KERNEL_ID != {"mse": 0, "softmax_cross_entropy": 1, "softmax_cross_entropy_index": 2,
                                "binary_cross_entropy": 3}:  # ids compiled into _losses.pxd
    raise AssertionError("fastbp._kernels.registry's loss ids differ from _losses.pxd")

# The contract's kernels (one list, in reference.py) plus what describes this backend.
__all__ = ["NAME", "ISA", "OPENMP", *KERNELS]
