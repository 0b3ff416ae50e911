# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""A whole training step's loss and gradients for a stack of dense layers, in one call."""
# Design: the layer loop of Network's forward and backward, moved below the
# GIL: one Python call per step instead of one per layer and pass (each costs
# 1.5-4 us of argument boxing, more than a small layer's arithmetic). Every
# pass is the pointer-level kernel the per-layer kernels run (dense_forward_nogil,
# loss_nogil, dense_backward_nogil), so the results equal the layer-by-layer
# calls bit for bit and, like them, do not depend on n_threads.
# Layout: flat C-order buffers, layer after layer (reference.mlp_layout):
# params/grads W_1, b_1, W_2, b_2, ...; outputs/deltas a_l/δ_l (m, n_l);
# preactivations z_l of the gelu layers only (every other z_l is a_l).

from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from fastbp._kernels.cython._activations cimport N_ACTIVATIONS
from fastbp._kernels.cython._dense cimport dense_backward_nogil, dense_forward_nogil
from fastbp._kernels.cython._losses cimport (
    LOSS_SOFTMAX_CROSS_ENTROPY_INDEX, N_LOSSES, check_labels, loss_nogil,
)

from fastbp._kernels.registry import ACTIVATIONS, NEEDS_PREACTIVATION

# Activation ids whose derivative needs z (gelu), as a C test.
cdef bint _KEEPS_Z[N_ACTIVATIONS]
for _id, _name in enumerate(ACTIVATIONS):
    _KEEPS_Z[_id] = _name in NEEDS_PREACTIVATION


cdef struct Layer:
    Py_ssize_t n_in, n_out
    int act
    Py_ssize_t w, b, a, z  # offsets: W, b in params/grads; a, δ in outputs/deltas; z (-1: z is a)


cdef int _run(Py_ssize_t m, const floating* x, const floating* target, const int64_t* labels,
              int loss, const Layer* layers, Py_ssize_t n_layers, const floating* params,
              floating* grads, floating* outputs, floating* preactivations, floating* deltas,
              int n_threads, double* value) noexcept nogil:
    """Forward, loss, backward. Returns 0, or -1 when a workspace cannot be allocated."""
    cdef Py_ssize_t l
    cdef const Layer* L
    cdef const floating* x_l
    cdef floating* z_l
    cdef int status
    # forward: a_l := act(a_{l-1}·W_l + b_l)
    for l in range(n_layers):
        L = &layers[l]
        x_l = x if l == 0 else outputs + layers[l - 1].a
        z_l = preactivations + L.z if L.z >= 0 else outputs + L.a
        status = dense_forward_nogil(m, L.n_out, L.n_in, x_l, L.n_in, 1, params + L.w, L.n_out, 1,
                                     params + L.b, L.act, z_l, outputs + L.a, n_threads)
        if status != 0:
            return status
    # loss: δ_L := d loss/d a_L (the last layer's backward turns it into d loss/d z_L)
    L = &layers[n_layers - 1]
    status = loss_nogil(loss, outputs + L.a, target, labels, deltas + L.a, m, L.n_out, n_threads, value)
    if status != 0:
        return status
    # backward: δ_l := δ_l ⊙ act'(z_l); dW_l, db_l; δ_{l-1} := δ_l·W_lᵀ (not for l = 1)
    for l in range(n_layers - 1, -1, -1):
        L = &layers[l]
        x_l = x if l == 0 else outputs + layers[l - 1].a
        z_l = preactivations + L.z if L.z >= 0 else outputs + L.a
        status = dense_backward_nogil(m, L.n_out, L.n_in, x_l, L.n_in, 1, params + L.w, L.n_out, 1,
                                      z_l, outputs + L.a, deltas + L.a, L.act, deltas + L.a,
                                      grads + L.w, grads + L.b,
                                      deltas + layers[l - 1].a if l > 0 else NULL, False, n_threads)
        if status != 0:
            return status
    return 0


cdef int _check_size(str name, Py_ssize_t size, Py_ssize_t expected) except -1:
    if size != expected:
        raise ValueError(f"mlp_loss_and_grad: {name} has {size} elements, the layers need {expected}")
    return 0


def mlp_loss_and_grad(const floating[:, ::1] x, target, int loss, const int64_t[::1] widths,
                      const int64_t[::1] activations, const floating[::1] params, floating[::1] grads,
                      floating[::1] outputs, floating[::1] preactivations, floating[::1] deltas,
                      int n_threads):
    """Loss and every gradient of a stack of dense layers: forward, loss, backward in one call.

    IN x (m, n_0), target (m, n_L) rows or (m,) int64 labels (loss id 2), widths (L+1,),
    activations (L,), params (P,); OUT grads (P,), outputs, deltas (Σ m·n_l,), preactivations
    (Σ m·n_l over gelu layers). Returns the loss. See reference.mlp_loss_and_grad.
    """
    cdef Py_ssize_t n_layers = activations.shape[0], m = x.shape[0], l
    cdef Py_ssize_t w = 0, a = 0, z = 0, n_out
    cdef const floating[:, ::1] target_rows
    cdef const int64_t[::1] labels
    cdef const floating* pt = NULL
    cdef const int64_t* pl = NULL
    if n_layers < 1 or widths.shape[0] != n_layers + 1:
        raise ValueError(f"mlp_loss_and_grad: {widths.shape[0]} widths for {n_layers} layers; "
                         f"expected {n_layers + 1} and at least one layer")
    if loss < 0 or loss >= N_LOSSES:
        raise ValueError(f"mlp_loss_and_grad: unknown loss id {loss}")
    if m == 0 or widths[0] < 1 or x.shape[1] != widths[0]:
        raise ValueError(f"mlp_loss_and_grad: x has shape {(x.shape[0], x.shape[1])}, "
                         f"expected (m >= 1, {widths[0]})")
    cdef Layer* layers = <Layer*>malloc(n_layers * sizeof(Layer))
    if layers == NULL:
        raise MemoryError(f"mlp_loss_and_grad: cannot allocate {n_layers} layer descriptors")
    cdef double value = 0.0
    cdef int status
    try:
        for l in range(n_layers):
            if widths[l + 1] < 1 or activations[l] < 0 or activations[l] >= N_ACTIVATIONS:
                raise ValueError(f"mlp_loss_and_grad: layer {l} has width {widths[l + 1]} "
                                 f"and activation id {activations[l]}")
            layers[l].n_in, layers[l].n_out, layers[l].act = widths[l], widths[l + 1], activations[l]
            layers[l].w, layers[l].b, layers[l].a = w, w + widths[l] * widths[l + 1], a
            layers[l].z = z if _KEEPS_Z[activations[l]] else -1
            w += widths[l] * widths[l + 1] + widths[l + 1]
            a += m * widths[l + 1]
            z += m * widths[l + 1] if _KEEPS_Z[activations[l]] else 0
        _check_size("params", params.shape[0], w)
        _check_size("grads", grads.shape[0], w)
        _check_size("outputs", outputs.shape[0], a)
        _check_size("deltas", deltas.shape[0], a)
        _check_size("preactivations", preactivations.shape[0], z)
        n_out = widths[n_layers]
        if loss == LOSS_SOFTMAX_CROSS_ENTROPY_INDEX:
            labels = target
            if labels.shape[0] != m:
                raise ValueError(f"mlp_loss_and_grad: {labels.shape[0]} labels for {m} rows")
            check_labels("mlp_loss_and_grad", &labels[0], m, n_out)
            pl = &labels[0]
        else:
            target_rows = target
            if target_rows.shape[0] != m or target_rows.shape[1] != n_out:
                raise ValueError(f"mlp_loss_and_grad: target has shape "
                                 f"{(target_rows.shape[0], target_rows.shape[1])}, expected {(m, n_out)}")
            pt = &target_rows[0, 0]
        with nogil:
            status = _run(m, &x[0, 0], pt, pl, loss, layers, n_layers, &params[0], &grads[0],
                          &outputs[0], &preactivations[0] if z > 0 else NULL, &deltas[0],
                          n_threads, &value)
    finally:
        free(layers)
    if status != 0:
        raise MemoryError("mlp_loss_and_grad: cannot allocate a GEMM workspace or the loss's partial sums")
    return value
