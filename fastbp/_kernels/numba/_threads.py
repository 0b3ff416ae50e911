"""Threading layer, thread count and instruction set of the Numba backend.

Design: Numba's ``workqueue`` layer costs ~90 µs per ``parallel=True`` call and
OpenMP ~1-2 µs, so OpenMP is selected here, before any parallel kernel first
runs (this module is imported first by the package). If it cannot load (no
libgomp), the default layer is used with a warning. The ISA is read from
llvmlite's host CPU features, which is what Numba compiles for.
"""

import time as _time
import warnings

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel

from ..blocking import BACKOFF_MAX_CALLS, BACKOFF_MIN_CALLS, BACKOFF_SLACK_SECONDS


def _select_openmp():
    """Launch Numba's thread pool on the OpenMP layer, or the default one if that fails."""
    if not getattr(_parallel, "_is_initialized", False):
        previous = numba.config.THREADING_LAYER
        numba.config.THREADING_LAYER = "omp"
        try:
            _parallel._launch_threads()
        except (ValueError, ImportError, OSError) as exc:
            numba.config.THREADING_LAYER = previous
            warnings.warn(
                f"fastbp: Numba's OpenMP threading layer cannot load ({exc}); using the "
                "default layer, which adds ~0.1 ms to every parallel kernel call",
                RuntimeWarning,
                stacklevel=3,
            )
            _parallel._launch_threads()
    layer = numba.threading_layer()
    if layer != "omp":
        warnings.warn(
            f"fastbp: Numba runs on the {layer!r} threading layer, not 'omp'; parallel "
            "kernels pay a larger start-up cost per call",
            RuntimeWarning,
            stacklevel=3,
        )
    return layer


THREADING_LAYER = _select_openmp()
MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def clamp_threads(n_threads):
    """The thread count Numba can honour: ``n_threads`` within [1, NUMBA_NUM_THREADS]."""
    return max(1, min(int(n_threads), MAX_THREADS))


@intrinsic
def set_threads(typingctx, n_ty):
    """Use n threads in this thread's next parallel regions (n in [1, MAX_THREADS]: see ``clamp_threads``).

    ``numba.set_num_threads`` called in jitted code holds a ctypes pointer, which
    Numba cannot cache; this calls the threading layer's exported symbol instead,
    as Numba's own parfor code does.
    """
    if not isinstance(n_ty, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "set_num_threads"
        )
        builder.call(fn, [context.cast(builder, args[0], signature.args[0], types.int32)])
        return context.get_dummy_value()

    return types.void(n_ty), codegen


@intrinsic
def fetch_add(typingctx, counter_ty, increment_ty):
    """counter[0] += increment atomically; returns the value before (an int64 array of one).

    The task counter of dynamic scheduling: each thread takes the next task number.
    """
    if not (isinstance(counter_ty, types.Array) and counter_ty.dtype == types.int64
            and isinstance(increment_ty, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        counter = context.make_array(signature.args[0])(context, builder, args[0])
        increment = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", counter.data, increment, "seq_cst")

    return types.int64(counter_ty, increment_ty), codegen


@intrinsic
def monotonic_seconds(typingctx):
    """Seconds of CLOCK_MONOTONIC (clock_gettime, as the Cython kernels' fastbp_now): the
    back-off compares a call's wall time with its slack in seconds. The libc symbol is
    resolved when the code is loaded, so code from Numba's cache works in any process."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), timespec.as_pointer()]),
            "clock_gettime")
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(fn, [ir.Constant(ir.IntType(32), _time.CLOCK_MONOTONIC), ts])
        zero = ir.Constant(ir.IntType(32), 0)
        sec = builder.load(builder.gep(ts, [zero, zero]))
        nsec = builder.load(builder.gep(ts, [zero, ir.Constant(ir.IntType(32), 1)]))
        double = ir.DoubleType()
        return builder.fadd(builder.sitofp(sec, double),
                            builder.fmul(builder.sitofp(nsec, double), ir.Constant(double, 1e-9)))

    return types.float64(), codegen


# Busy-machine back-off (blocking.BACKOFF_*), the Cython backend's rule: a parallel
# GEMM that took longer than its work would have on one thread sends the next GEMMs
# to one thread, and while that lasts every kernel runs on one thread. The state,
# [GEMMs left on one thread, length of the next back-off], is one array per process;
# compiled code reaches it by symbol name, resolved when the code is loaded, so code
# from Numba's cache finds it in any process. A race between calling threads only
# changes a count, never a result.
BACKOFF = np.array([0, BACKOFF_MIN_CALLS], dtype=np.int64)
_BACKOFF_SYMBOL = "fastbp_numba_backoff_state"
llvm.add_symbol(_BACKOFF_SYMBOL, BACKOFF.ctypes.data)


def _backoff_slot(builder, index):
    module = builder.module
    state = module.globals.get(_BACKOFF_SYMBOL)
    if state is None:
        state = ir.GlobalVariable(module, ir.ArrayType(ir.IntType(64), 2), _BACKOFF_SYMBOL)
        state.linkage = "external"
    return builder.gep(state, [ir.Constant(ir.IntType(32), 0), index])


@intrinsic
def backoff_get(typingctx, index_ty):
    """BACKOFF[index] (0: GEMMs left on one thread, 1: length of the next back-off)."""
    if not isinstance(index_ty, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.load(_backoff_slot(builder, index))

    return types.int64(index_ty), codegen


@intrinsic
def backoff_set(typingctx, index_ty, value_ty):
    """BACKOFF[index] := value."""
    if not (isinstance(index_ty, types.Integer) and isinstance(value_ty, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[0], signature.args[0], types.int64)
        value = context.cast(builder, args[1], signature.args[1], types.int64)
        builder.store(value, _backoff_slot(builder, index))
        return context.get_dummy_value()

    return types.void(index_ty, value_ty), codegen


@numba.njit(cache=True, nogil=True)
def gemm_threads_now(n_threads):
    """n_threads, or 1 while a back-off lasts; counts one GEMM call of the back-off."""
    left = backoff_get(0)
    if n_threads > 1 and left > 0:
        backoff_set(0, left - 1)
        return 1
    return n_threads


@numba.njit(cache=True, nogil=True)
def backing_off():
    """Whether a back-off lasts (the kernels then run on one thread)."""
    return backoff_get(0) > 0


@numba.njit(cache=True, nogil=True)
def region_threads(values, min_values, n_threads):
    """Threads of a parallel region over ``values`` values: n_threads, or 1 below min_values
    (a blocking.py threshold) and while a back-off lasts (the Cython kernels' rule: a
    region whose second thread has no core stalls the call)."""
    if n_threads > 1 and values >= min_values and not backing_off():
        return n_threads
    return 1


@numba.njit(cache=True, nogil=True)
def judge_parallel_call(wall, busiest_time, busiest_tasks, n_tasks):
    """Back off when the call took longer than n_tasks x the busiest thread's mean task time
    by more than BACKOFF_SLACK_SECONDS (times in seconds): the other threads did not get a
    core in time, rather than waking up late."""
    if busiest_tasks == 0:
        return
    if wall > busiest_time / busiest_tasks * n_tasks + BACKOFF_SLACK_SECONDS:
        backoff_set(0, backoff_get(1))
        backoff_set(1, min(2 * backoff_get(1), BACKOFF_MAX_CALLS))
    else:
        backoff_set(1, BACKOFF_MIN_CALLS)


def _host_isa():
    """'avx512', 'avx2' or 'generic': the vector ISA Numba's generated code may use."""
    if numba.config.CPU_NAME not in (None, "host"):
        return "generic"  # portable code was asked for (NUMBA_CPU_NAME)
    features = llvm.get_host_cpu_features()
    if features.get("avx512f", False):
        return "avx512"
    if features.get("avx2", False) and features.get("fma", False):
        return "avx2"
    return "generic"


ISA = _host_isa()
# Lanes of one SIMD register for each dtype (used by the micro-kernel).
VECTOR_LANES = {
    "avx512": {"float32": 16, "float64": 8},
    "avx2": {"float32": 8, "float64": 4},
    "generic": {"float32": 4, "float64": 2},
}[ISA]
