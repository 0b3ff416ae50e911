"""A whole training step's loss and gradients for a stack of dense layers, in one jitted call.

Design: the layer loop of Network's forward and backward inside one jitted
function: one Python call per step instead of one per layer and pass (each
costs microseconds of argument unboxing, more than a small layer's
arithmetic). Every pass calls the same compiled kernels as the per-layer
wrappers, chosen by the same size thresholds (the serial or parallel twin of
the GEMM driver, activation, column-sum and loss kernels), so the results
equal the layer-by-layer calls bit for bit and, like them, do not depend on
n_threads. Shapes are checked in the jitted code before anything is written
(a loop over the layers costs nothing there); the wrapper turns a failed check
into a ValueError.

Layout: flat C-order buffers, layer after layer (reference.mlp_layout):
params/grads W_1, b_1, W_2, b_2, ...; outputs/deltas a_l/δ_l (m, n_l);
preactivations z_l of the gelu layers only (every other z_l is a_l).
"""

import threading

import numba
import numpy as np
from numba.extending import overload

from .. import registry as R
from ..reference import mlp_layout
from ._arrays import writable
from ._threads import backing_off, clamp_threads
from .activations import PARALLEL_MIN_ELEMENTS as ACTIVATION_PARALLEL_MIN_ELEMENTS
from .activations import (
    _activation_backward_parallel,
    _activation_backward_serial,
    _activation_forward_parallel,
    _activation_forward_serial,
)
from .dense import PARALLEL_MIN_ELEMENTS as COLUMN_SUMS_PARALLEL_MIN_ELEMENTS
from .dense import _column_sums_parallel, _column_sums_serial
from .gemm import NO_ACTIVATION, b_packer, driver, gemm_threads_jitted, packed_b_driver, rows_done
from .losses import PARALLEL_MIN_ELEMENTS as LOSS_PARALLEL_MIN_ELEMENTS
from .losses import (
    _binary_cross_entropy_parallel,
    _binary_cross_entropy_serial,
    _mse_parallel,
    _mse_serial,
    _softmax_cross_entropy_index_parallel,
    _softmax_cross_entropy_index_serial,
    _softmax_cross_entropy_parallel,
    _softmax_cross_entropy_serial,
)

_IDENTITY, _SOFTMAX = R.IDENTITY, R.SOFTMAX
_MSE, _SOFTMAX_CE, _SOFTMAX_CE_INDEX, _BCE = (R.MSE, R.SOFTMAX_CROSS_ENTROPY, R.SOFTMAX_CROSS_ENTROPY_INDEX,
                                              R.BINARY_CROSS_ENTROPY)
_N_ACTIVATIONS = len(R.ACTIVATIONS)
# keeps_z[act]: the activation's derivative needs z (gelu), so z_l has its own buffer.
_KEEPS_Z = np.array([name in R.NEEDS_PREACTIVATION for name in R.ACTIVATIONS])

# Status codes of the shape checks (0: all good): which argument is wrong.
_BAD_LAYER, _BAD_PARAMS, _BAD_GRADS, _BAD_OUTPUTS, _BAD_DELTAS, _BAD_PREACTIVATIONS, _BAD_LABEL = range(1, 8)

_jit = numba.njit(cache=True, nogil=True)


# ---------------------------------------------------------------- the per-layer kernels, jitted-callable
def _run_gemm(a, b, z, out, bias, beta, act, n_threads, work):
    """The GEMM driver of z's dtype, as ``gemm.run_driver`` picks it (see ``gemm._gemm``)."""


@overload(_run_gemm)
def _run_gemm_overload(a, b, z, out, bias, beta, act, n_threads, work):
    # The drivers are compiled per dtype with one explicit signature; the dtype is
    # known here, at typing time, so the call below is to that very compilation.
    dtype = np.dtype(str(z.dtype))
    parallel_driver, serial_driver = driver(dtype, True), driver(dtype, False)

    def impl(a, b, z, out, bias, beta, act, n_threads, work):
        m, k = a.shape
        threads = gemm_threads_jitted(m, b.shape[1], k, n_threads)
        if threads > 1:
            return parallel_driver(a, b, z, out, bias, 1.0, beta, act, threads, work)
        return serial_driver(a, b, z, out, bias, 1.0, beta, act, 1, work)

    return impl


def _pack_b_once(m, b, packed):
    """``gemm.pack_b_once`` of packed's dtype: (the buffer used, whether B is in it)."""


@overload(_pack_b_once)
def _pack_b_once_overload(m, b, packed):
    packer = b_packer(np.dtype(str(packed.dtype)))

    def impl(m, b, packed):
        return packer(m, b, packed)

    return impl


def _run_gemm_packed_b(a, b, packed, is_packed, z, beta, n_threads, work, rows):
    """z := a·b + beta·z, B read from ``packed`` where ``_pack_b_once`` put it (is_packed), else from b
    by ``_run_gemm``; the packed-B driver's twin chosen as ``_run_gemm`` chooses; then
    ``gemm.rows_done(rows, ·)`` over every row of z: fused into the driver's tasks, or after
    ``_run_gemm``.  Returns the workspace."""


@overload(_run_gemm_packed_b)
def _run_gemm_packed_b_overload(a, b, packed, is_packed, z, beta, n_threads, work, rows):
    dtype = np.dtype(str(z.dtype))
    parallel_driver = packed_b_driver(dtype, True, rows)
    serial_driver = packed_b_driver(dtype, False, rows)

    def impl(a, b, packed, is_packed, z, beta, n_threads, work, rows):
        m, k = a.shape
        if not is_packed:
            work = _run_gemm(a, b, z, z, packed[:0], beta, NO_ACTIVATION, n_threads, work)
            rows_done(rows, 0, m)
            return work
        threads = gemm_threads_jitted(m, b.shape[1], k, n_threads)
        if threads > 1:
            return parallel_driver(a, b, packed, z, 1.0, beta, threads, work, rows)
        return serial_driver(a, b, packed, z, 1.0, beta, 1, work, rows)

    return impl


@_jit
def _dense_forward(x, w, bias, act, z, a, z_is_a, n_threads, work):
    """dense.dense_forward (k >= 1): z := x·w + bias; a := act(z), z_is_a when z is a.  Returns the GEMM workspace."""
    if act == _SOFTMAX or (act == _IDENTITY and z_is_a):
        work = _run_gemm(x, w, z, z, bias, 0.0, NO_ACTIVATION, n_threads, work)
    else:
        work = _run_gemm(x, w, z, a, bias, 0.0, act, n_threads, work)
    if act == _SOFTMAX:
        if z.size >= ACTIVATION_PARALLEL_MIN_ELEMENTS and not backing_off():
            _activation_forward_parallel(act, z, a, n_threads)
        else:
            _activation_forward_serial(act, z, a, 1)
    return work


@_jit
def _dense_backward(x, w, z, a, grad_a, act, grad_z, dw, db, dx, compute_dx, n_threads, work, no_bias):
    """dense.dense_backward (m, k, n >= 1, accumulate False).  Returns the GEMM workspace."""
    if a.size >= ACTIVATION_PARALLEL_MIN_ELEMENTS and not backing_off():
        _activation_backward_parallel(act, z, a, grad_a, grad_z, n_threads)
    else:
        _activation_backward_serial(act, z, a, grad_a, grad_z, 1)
    work = _run_gemm(x.T, grad_z, dw, dw, no_bias, 0.0, NO_ACTIVATION, n_threads, work)
    if grad_z.size >= COLUMN_SUMS_PARALLEL_MIN_ELEMENTS and not backing_off():
        _column_sums_parallel(grad_z, db, False, n_threads)
    else:
        _column_sums_serial(grad_z, db, False, 1)
    if compute_dx:
        work = _run_gemm(grad_z, w.T, dx, dx, no_bias, 0.0, NO_ACTIVATION, n_threads, work)
    return work


@_jit
def _loss(loss, output, target, labels, grad, n_threads):
    """The loss kernel of id ``loss`` (losses._run's choice of twin); grad := d loss/d output."""
    if grad.size >= LOSS_PARALLEL_MIN_ELEMENTS and not backing_off():
        if loss == _MSE:
            return _mse_parallel(output, target, grad, n_threads)
        if loss == _SOFTMAX_CE:
            return _softmax_cross_entropy_parallel(output, target, grad, n_threads)
        if loss == _SOFTMAX_CE_INDEX:
            return _softmax_cross_entropy_index_parallel(output, labels, grad, n_threads)
        return _binary_cross_entropy_parallel(output, target, grad, n_threads)
    if loss == _MSE:
        return _mse_serial(output, target, grad, 1)
    if loss == _SOFTMAX_CE:
        return _softmax_cross_entropy_serial(output, target, grad, 1)
    if loss == _SOFTMAX_CE_INDEX:
        return _softmax_cross_entropy_index_serial(output, labels, grad, 1)
    return _binary_cross_entropy_serial(output, target, grad, 1)


# ---------------------------------------------------------------- the whole step
@_jit
def _check(m, loss, labels, widths, activations, params, grads, outputs, preactivations, deltas):
    """(status, index): 0 if the buffers fit the layers, else the _BAD_* code and the layer or row."""
    n_layers = activations.shape[0]
    n_params, n_outputs, n_z = 0, 0, 0
    for l in range(n_layers):
        n_in, n_out, act = widths[l], widths[l + 1], activations[l]
        if n_out < 1 or act < 0 or act >= _N_ACTIVATIONS:
            return _BAD_LAYER, l
        n_params += n_in * n_out + n_out
        n_outputs += m * n_out
        if _KEEPS_Z[act]:
            n_z += m * n_out
    if params.shape[0] != n_params:
        return _BAD_PARAMS, 0
    if grads.shape[0] != n_params:
        return _BAD_GRADS, 0
    if outputs.shape[0] != n_outputs:
        return _BAD_OUTPUTS, 0
    if deltas.shape[0] != n_outputs:
        return _BAD_DELTAS, 0
    if preactivations.shape[0] != n_z:
        return _BAD_PREACTIVATIONS, 0
    if loss == _SOFTMAX_CE_INDEX:
        n_classes = widths[n_layers]
        for i in range(m):
            if labels[i] < 0 or labels[i] >= n_classes:
                return _BAD_LABEL, i
    return 0, 0


@_jit
def _mlp_loss_and_grad(x, target, labels, loss, widths, activations, params, grads, outputs, preactivations,
                       deltas, n_threads, work):
    """Forward, loss, backward (see reference.mlp_loss_and_grad); target is (0, 0) for labels, labels (0,) for rows.

    Returns (loss, status, index, workspace): status != 0 (nothing written) when a check fails.
    """
    m = x.shape[0]
    status, index = _check(m, loss, labels, widths, activations, params, grads, outputs, preactivations, deltas)
    if status != 0:
        return 0.0, status, index, work
    n_layers = activations.shape[0]
    no_bias = params[:0]
    # offsets[l] = (W, b in params/grads; a, δ in outputs/deltas; z in preactivations, -1: z is a)
    offsets = np.empty((n_layers, 3), np.int64)
    w_off, a_off, z_off = 0, 0, 0
    for l in range(n_layers):
        n_in, n_out = widths[l], widths[l + 1]
        offsets[l, 0], offsets[l, 1], offsets[l, 2] = w_off, a_off, z_off if _KEEPS_Z[activations[l]] else -1
        w_off += n_in * n_out + n_out
        a_off += m * n_out
        z_off += m * n_out if _KEEPS_Z[activations[l]] else 0
    # forward: a_l := act(a_{l-1}·W_l + b_l)
    x_l = x
    for l in range(n_layers):
        n_in, n_out, act = widths[l], widths[l + 1], activations[l]
        w, a, z = offsets[l, 0], offsets[l, 1], offsets[l, 2]
        a_l = outputs[a:a + m * n_out].reshape(m, n_out)
        z_l = preactivations[z:z + m * n_out].reshape(m, n_out) if z >= 0 else a_l
        b = w + n_in * n_out
        work = _dense_forward(x_l, params[w:b].reshape(n_in, n_out), params[b:b + n_out], act, z_l, a_l,
                              z < 0, n_threads, work)
        x_l = a_l
    # loss: δ_L := d loss/d a_L (the last layer's backward turns it into d loss/d z_L)
    n_out, a = widths[n_layers], offsets[n_layers - 1, 1]
    value = _loss(loss, outputs[a:a + m * n_out].reshape(m, n_out), target, labels,
                  deltas[a:a + m * n_out].reshape(m, n_out), n_threads)
    # backward: δ_l := δ_l ⊙ act'(z_l); dW_l, db_l; δ_{l-1} := δ_l·W_lᵀ (not for l = 1)
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, act = widths[l], widths[l + 1], activations[l]
        w, a, z = offsets[l, 0], offsets[l, 1], offsets[l, 2]
        b = w + n_in * n_out
        a_l = outputs[a:a + m * n_out].reshape(m, n_out)
        z_l = preactivations[z:z + m * n_out].reshape(m, n_out) if z >= 0 else a_l
        delta_l = deltas[a:a + m * n_out].reshape(m, n_out)
        if l > 0:
            a_prev = offsets[l - 1, 1]
            x_l = outputs[a_prev:a_prev + m * n_in].reshape(m, n_in)
            dx = deltas[a_prev:a_prev + m * n_in].reshape(m, n_in)
        else:
            x_l = x
            dx = delta_l  # not written (compute_dx is False)
        work = _dense_backward(x_l, params[w:b].reshape(n_in, n_out), z_l, a_l, delta_l, act, delta_l,
                               grads[w:b].reshape(n_in, n_out), grads[b:b + n_out], dx, l > 0, n_threads, work,
                               no_bias)
    return value, 0, 0, work


# Packing buffers, one per calling thread and dtype, grown on demand and kept
# (separate from gemm's: the two only ever differ in when they grow).
_workspaces = threading.local()
_no_targets = {}


def _placeholders(dtype):
    """(rows (0, 0) of dtype, labels (0,) int64): the target argument a loss does not use."""
    pair = _no_targets.get(dtype)
    if pair is None:
        pair = _no_targets[dtype] = (np.empty((0, 0), dtype), np.empty(0, np.int64))
    return pair


def _raise(status, index, m, target, widths, activations, sizes):
    """Raise the ValueError of a failed check of ``_check``."""
    if status == _BAD_LAYER:
        raise ValueError(f"mlp_loss_and_grad: layer {index} has width {widths[index + 1]} "
                         f"and activation id {activations[index]}")
    if status == _BAD_LABEL:
        raise ValueError(f"mlp_loss_and_grad: label {target[index]} of row {index} is not in [0, {widths[-1]})")
    name = ("params", "grads", "outputs", "deltas", "preactivations")[status - _BAD_PARAMS]
    expected = mlp_layout(widths, activations, m)[1][(0, 0, 1, 1, 2)[status - _BAD_PARAMS]]
    raise ValueError(f"mlp_loss_and_grad: {name} has {sizes[name]} elements, the layers need {expected}")


def mlp_loss_and_grad(x, target, loss, widths, activations, params, grads, outputs, preactivations, deltas,
                      n_threads):
    """Loss and every gradient of a stack of dense layers: forward, loss, backward in one call.

    IN x (m, n_0), target (m, n_L) rows or (m,) int64 labels (loss id 2), widths (L+1,),
    activations (L,) int64, params (P,); OUT grads (P,), outputs, deltas (Σ m·n_l,), preactivations
    (Σ m·n_l over gelu layers). Returns the loss. See reference.mlp_loss_and_grad.
    """
    n_layers = activations.shape[0]
    m = x.shape[0]
    if n_layers < 1 or widths.shape[0] != n_layers + 1:
        raise ValueError(f"mlp_loss_and_grad: {widths.shape[0]} widths for {n_layers} layers; "
                         f"expected {n_layers + 1} and at least one layer")
    if not 0 <= loss < len(R.LOSS_KERNELS):
        raise ValueError(f"mlp_loss_and_grad: unknown loss id {loss}")
    if m == 0 or widths[0] < 1 or x.shape[1] != widths[0]:
        raise ValueError(f"mlp_loss_and_grad: x has shape {x.shape}, expected (m >= 1, {widths[0]})")
    rows, labels = _placeholders(x.dtype)
    if loss == _SOFTMAX_CE_INDEX:
        if target.shape != (m,):
            raise ValueError(f"mlp_loss_and_grad: target has shape {target.shape}, expected ({m},) labels")
        labels = writable(target)
    else:
        if target.shape != (m, widths[-1]):
            raise ValueError(f"mlp_loss_and_grad: target has shape {target.shape}, expected {(m, int(widths[-1]))}")
        rows = writable(target)
    key = x.dtype
    cache = _workspaces.__dict__
    work = cache.get(key)
    if work is None:
        work = np.empty(0, key)
    value, status, index, cache[key] = _mlp_loss_and_grad(
        writable(x), rows, labels, loss, widths, activations, writable(params), grads, outputs, preactivations,
        deltas, clamp_threads(n_threads), work)
    if status:
        _raise(status, index, m, target, widths, activations,
               {"params": params.size, "grads": grads.size, "outputs": outputs.size, "deltas": deltas.size,
                "preactivations": preactivations.size})
    return float(value)
