"""Public, validated entry points to the compiled kernels.

Each function checks its arguments (types, dtypes, shapes, ``out`` buffers),
then calls the same-named kernel of the current backend (see
``fastbp.set_backend``) with the current thread count. Outputs are written into
``out`` arguments when given, so a training loop can run without allocating.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

from . import _backend
from . import _geometry as G
from . import _validation as V
from . import losses as _losses
from ._kernels import registry as R
from ._kernels.reference import mlp_layout
from ._kernels.registry import ACTIVATIONS, LOSSES  # noqa: F401  (re-exported)

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "gemm",
    "dense_forward",
    "dense_backward",
    "activation",
    "activation_grad",
    "loss",
    "loss_and_grad",
    "mlp_loss_and_grad",
    "sgd_step",
    "rmsprop_step",
    "adam_step",
    "rnn_forward",
    "rnn_backward",
    "fixed_point_forward",
    "fixed_point_adjoint",
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "global_avg_pool2d_backward",
    "ConvergenceError",
]


MAX_INT64 = 2**63 - 1  # widths and step counts reach the kernels as int64


# The kernels take ndarrays only (no lists: a conversion would hide a copy), float32 or float64.
FloatArray = NDArray[np.floating]


def _readable(x, out):
    """``x``, copied if it overlaps ``out`` (the kernel reads x while writing out)."""
    return x.copy() if np.may_share_memory(x, out) else x


def gemm(a: FloatArray, b: FloatArray, out: Optional[FloatArray] = None, trans_a: bool = False,
         trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> FloatArray:
    """General matrix product ``out = alpha·op(a)·op(b) + beta·out``.

    Parameters
    ----------
    a : ndarray of shape (m, k), or (k, m) if ``trans_a``; float32 or float64
    b : ndarray of shape (k, n), or (n, k) if ``trans_b``; same dtype as ``a``
        Any memory layout: C-ordered, F-ordered or strided views.
    out : C-contiguous ndarray of shape (m, n), optional
        Written in place and returned. Required when ``beta != 0``; with
        ``beta == 0`` its previous content is ignored, NaN included.
    trans_a, trans_b : bool
        Use the transpose of ``a`` / ``b`` (no copy is made).
    alpha, beta : float
        Rounded to the operands' dtype, so in float32 they must lie within its
        range (``|alpha|, |beta| <= 3.4e38``); a ValueError names the one that does not.

    Returns
    -------
    out : ndarray of shape (m, n)
    """
    a = V.float_array("a", a)
    b = V.float_array("b", b, dtype=a.dtype)
    alpha, beta = V.scalar("alpha", alpha, a.dtype), V.scalar("beta", beta, a.dtype)
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    (m, k), (k_b, n) = op_a.shape, op_b.shape
    if k != k_b:
        raise ValueError(
            f"gemm: op(a) has shape {op_a.shape} and op(b) has shape {op_b.shape}; "
            f"their inner dimensions {k} and {k_b} differ"
        )
    if out is None and beta != 0.0:
        raise ValueError("gemm: beta != 0 needs an out array to accumulate into")
    out = V.output_array("out", out, (m, n), a.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:  # an empty sum: out = beta*out
        if beta == 0.0:
            out.fill(0)
        else:
            out *= beta
        return out
    backend, n_threads = _backend.runtime()
    backend.gemm(_readable(op_a, out), _readable(op_b, out), out, alpha, beta, n_threads)
    return out


def _activation_id(name):
    return R.activation_id(name)


def activation(name: str, z: FloatArray, out: Optional[FloatArray] = None) -> FloatArray:
    """Apply activation ``name`` to ``z``: element-wise, or row-wise for softmax.

    Parameters
    ----------
    name : str, one of ``ACTIVATIONS``
    z : ndarray of shape (n_samples, n_features), float32 or float64
    out : C-contiguous ndarray like ``z``, optional; may be ``z`` itself

    Returns
    -------
    out : ndarray of shape (n_samples, n_features)
    """
    act = _activation_id(name)
    z = V.contiguous_input("z", z, 2)
    out = V.output_array("out", out, z.shape, z.dtype, inputs={"z": z}, may_alias=("z",))
    if z.size:
        backend, n_threads = _backend.runtime()
        backend.activation_forward(act, z, out, n_threads)
    return out


def _checked_preactivation(name, output, preactivation):
    """The array the kernel reads as z: ``preactivation``, or ``output`` when z is not needed."""
    if preactivation is None:
        if name in R.NEEDS_PREACTIVATION:
            raise ValueError(f"the derivative of {name!r} needs the preactivation z, got None")
        return output
    z = V.contiguous_input("preactivation", preactivation, output.ndim, output.dtype)
    if z.shape != output.shape:
        raise ValueError(f"preactivation must have shape {output.shape}, got {z.shape}")
    return z


def _backward_outputs(x, w, output, z, grad_output, grad_preactivation_out, dw_out, db_out, dx_out,
                      compute_dx, accumulate):
    """Checked (δ, dw, db, dx) buffers of a dense or conv backward pass, none overlapping an input.

    δ has ``output``'s shape and may be ``grad_output`` itself; dw is shaped like
    w, db like w's last axis (the bias), dx like x (None unless ``compute_dx``).
    """
    if accumulate and (dw_out is None or db_out is None):
        raise ValueError("accumulate=True needs dw_out and db_out to add into")
    inputs = {"x": x, "w": w, "output": output, "preactivation": None if z is output else z,
              "grad_output": grad_output}
    delta = V.output_array("grad_preactivation_out", grad_preactivation_out, output.shape, x.dtype, inputs=inputs,
                           may_alias=("grad_output",))
    inputs["grad_preactivation_out"] = delta
    dw = V.output_array("dw_out", dw_out, w.shape, x.dtype, inputs=inputs)
    db = V.output_array("db_out", db_out, (w.shape[-1],), x.dtype, inputs=dict(inputs, dw_out=dw))
    dx = V.output_array("dx_out", dx_out, x.shape, x.dtype, inputs=dict(inputs, dw_out=dw, db_out=db)) \
        if compute_dx else None
    return delta, dw, db, dx


def _empty_batch_grads(dw, db, dx, accumulate):
    """The gradients of an empty batch: zero, or unchanged when accumulating."""
    if not accumulate:
        dw.fill(0)
        db.fill(0)
    return dw, db, dx


def activation_grad(name: str, grad_output: FloatArray, output: FloatArray,
                    preactivation: Optional[FloatArray] = None, out: Optional[FloatArray] = None) -> FloatArray:
    """Backpropagate through activation ``name``: ``out = grad_output ⊙ act'(z)``.

    For softmax this is the row-wise Jacobian-vector product
    ``a ⊙ (grad_output - Σ_j grad_output ⊙ a)``. The step function's
    derivative is zero everywhere (its value at 0 is taken as 0).

    Parameters
    ----------
    name : str, one of ``ACTIVATIONS``
    grad_output : ndarray of shape (n_samples, n_features): d loss / d a
    output : ndarray like ``grad_output``: a = act(z), from the forward pass
    preactivation : ndarray like ``grad_output``, optional
        z; needed only by activations in ``NEEDS_PREACTIVATION`` (gelu).
    out : C-contiguous ndarray like ``grad_output``, optional; may be ``grad_output``

    Returns
    -------
    out : ndarray of shape (n_samples, n_features): d loss / d z
    """
    act = _activation_id(name)
    grad_output = V.contiguous_input("grad_output", grad_output, 2)
    output = V.contiguous_input("output", output, 2, grad_output.dtype)
    if output.shape != grad_output.shape:
        raise ValueError(f"output must have shape {grad_output.shape}, got {output.shape}")
    z = _checked_preactivation(name, output, preactivation)
    inputs = {"grad_output": grad_output, "output": output, "preactivation": None if z is output else z}
    out = V.output_array("out", out, grad_output.shape, grad_output.dtype, inputs=inputs, may_alias=("grad_output",))
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.activation_backward(act, z, output, grad_output, out, n_threads)
    return out


def _dense_operands(x, w, b):
    x = V.float_array("x", x)
    w = V.float_array("w", w, dtype=x.dtype)
    b = V.contiguous_input("b", b, 1, x.dtype)
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"x has shape {x.shape} ({x.shape[1]} features) but w has shape {w.shape} ({w.shape[0]} inputs)"
        )
    if b.shape != (w.shape[1],):
        raise ValueError(f"b must have shape ({w.shape[1]},) to match w of shape {w.shape}, got {b.shape}")
    return x, w, b


def dense_forward(x: FloatArray, w: FloatArray, b: FloatArray, activation: str = "identity",
                  out: Optional[FloatArray] = None, preactivation_out: Optional[FloatArray] = None) -> FloatArray:
    """Fused dense layer ``a = act(x·w + b)``, one pass over each output tile.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_in), any layout
    w : ndarray of shape (n_in, n_out), same dtype, any layout
    b : ndarray of shape (n_out,)
    activation : str, one of ``ACTIVATIONS``
    out : C-contiguous ndarray of shape (n_samples, n_out), optional
    preactivation_out : C-contiguous ndarray of shape (n_samples, n_out), optional
        Receives z = x·w + b, which backward needs for gelu.

    Returns
    -------
    out : ndarray of shape (n_samples, n_out)
    """
    act = _activation_id(activation)
    x, w, b = _dense_operands(x, w, b)
    shape = (x.shape[0], w.shape[1])
    inputs = {"x": x, "w": w, "b": b}
    out = V.output_array("out", out, shape, x.dtype, inputs=inputs)
    z = V.output_array("preactivation_out", preactivation_out, shape, x.dtype, inputs=dict(inputs, out=out)) \
        if preactivation_out is not None else out
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.dense_forward(x, w, b, act, z, out, n_threads)
    return out


def dense_backward(x: FloatArray, w: FloatArray, output: FloatArray, grad_output: FloatArray,
                   activation: str = "identity", preactivation: Optional[FloatArray] = None, *,
                   grad_preactivation_out: Optional[FloatArray] = None, dw_out: Optional[FloatArray] = None,
                   db_out: Optional[FloatArray] = None, dx_out: Optional[FloatArray] = None,
                   compute_dx: bool = True,
                   accumulate: bool = False) -> Tuple[FloatArray, FloatArray, Optional[FloatArray]]:
    """Backward pass of a dense layer ``a = act(x·w + b)``.

    Computes ``δ = grad_output ⊙ act'(z)``, ``dw = xᵀ·δ``, ``db = Σ_rows δ`` and
    ``dx = δ·wᵀ``; with ``accumulate`` the gradients are added to ``dw_out`` and
    ``db_out`` instead of overwriting them (as backpropagation through time needs).

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_in): the layer's input
    w : ndarray of shape (n_in, n_out)
    output : ndarray of shape (n_samples, n_out): a, from the forward pass
    grad_output : ndarray of shape (n_samples, n_out): d loss / d a
    activation : str, one of ``ACTIVATIONS``
    preactivation : ndarray of shape (n_samples, n_out), optional: z, needed for gelu
    grad_preactivation_out : C-contiguous ndarray like ``output``, optional
        Receives δ; may be ``grad_output`` itself.
    dw_out, db_out, dx_out : C-contiguous ndarrays of shapes (n_in, n_out), (n_out,), (n_samples, n_in)
    compute_dx : bool
        False skips dx (the first layer needs none) and returns None for it.
    accumulate : bool
        Add to ``dw_out``/``db_out``, which must then be given.

    Returns
    -------
    dw, db, dx : ndarrays (dx is None when ``compute_dx`` is False)
    """
    act = _activation_id(activation)
    x = V.float_array("x", x)
    w = V.float_array("w", w, dtype=x.dtype)
    m, n_in = x.shape
    if w.shape[0] != n_in:
        raise ValueError(f"x has shape {x.shape} but w has shape {w.shape}; expected w with {n_in} rows")
    n_out = w.shape[1]
    output = V.contiguous_input("output", output, 2, x.dtype)
    grad_output = V.contiguous_input("grad_output", grad_output, 2, x.dtype)
    for name, arr in (("output", output), ("grad_output", grad_output)):
        if arr.shape != (m, n_out):
            raise ValueError(f"{name} must have shape {(m, n_out)} to match x {x.shape} and w {w.shape}, got {arr.shape}")
    z = _checked_preactivation(activation, output, preactivation)
    delta, dw, db, dx = _backward_outputs(x, w, output, z, grad_output, grad_preactivation_out, dw_out, db_out,
                                          dx_out, compute_dx, accumulate)
    if m == 0:
        return _empty_batch_grads(dw, db, dx, accumulate)
    backend, n_threads = _backend.runtime()
    backend.dense_backward(x, w, z, output, grad_output, act, delta, dw, db,
                           dx if compute_dx else delta, bool(compute_dx), bool(accumulate), n_threads)
    return dw, db, dx


def _loss_target(name, target, shape, dtype):
    """Checked ``target`` of loss ``name`` for an output of ``shape`` and ``dtype``, and its loss kernel."""
    R.check_loss(name)
    if not isinstance(target, np.ndarray):
        raise TypeError(f"target must be a numpy.ndarray, got {type(target).__name__}")
    if name == "softmax_cross_entropy" and target.ndim == 1:
        if target.dtype.kind not in "iu":
            raise TypeError(f"class-index targets must be integers, got dtype {target.dtype}")
        if target.shape[0] != shape[0]:
            raise ValueError(f"target has {target.shape[0]} labels but output has {shape[0]} rows")
        n_classes = shape[1]
        if target.size and (target.min() < 0 or target.max() >= n_classes):
            raise ValueError(
                f"class indices must lie in [0, {n_classes}), got values in [{target.min()}, {target.max()}]"
            )
        return np.ascontiguousarray(target, dtype=np.int64), "softmax_cross_entropy_index"
    if target.dtype.kind not in "fiub":
        raise TypeError(f"target must be numeric, got dtype {target.dtype}")
    if target.shape != tuple(shape):
        raise ValueError(f"target must have the shape of output {tuple(shape)}, got {target.shape}")
    _losses.check_target_rows(name, target, "target")
    return np.ascontiguousarray(target, dtype=dtype), name


def _loss_operands(name, output, target):
    R.check_loss(name)
    output = V.contiguous_input("output", output, 2)
    target, kernel = _loss_target(name, target, output.shape, output.dtype)
    return output, target, kernel


def loss_and_grad(name: str, output: FloatArray, target: np.ndarray,
                  grad_out: Optional[FloatArray] = None) -> Tuple[float, FloatArray]:
    """Loss ``name`` of ``output`` against ``target``, and its gradient with respect to ``output``.

    Losses follow PyTorch: ``mse`` is the mean over all elements of
    (output - target)²; ``softmax_cross_entropy`` takes logits and either class
    indices (int array of shape (n_samples,)) or probability rows, and averages
    over the batch; ``binary_cross_entropy`` takes logits and averages over all
    elements. Computed overflow-free (log-sum-exp with the max subtracted).

    Parameters
    ----------
    name : str, one of ``LOSSES``
    output : ndarray of shape (n_samples, n_outputs), float32 or float64
    target : ndarray of shape (n_samples, n_outputs), or (n_samples,) class indices
    grad_out : C-contiguous ndarray like ``output``, optional

    Returns
    -------
    loss : float
    grad : ndarray of shape (n_samples, n_outputs)
    """
    output, target, kernel = _loss_operands(name, output, target)
    grad = V.output_array("grad_out", grad_out, output.shape, output.dtype,
                          inputs={"output": output, "target": target})
    if output.size == 0:
        raise ValueError(f"output must not be empty, got shape {output.shape}")
    backend, n_threads = _backend.runtime()
    value = _losses.loss_kernel(backend, kernel)(output, target, grad, n_threads)
    return _loss_value(value), grad


def _loss_value(value):
    """The kernel's loss as a Python float; +0.0 for an exact zero.

    A one-output softmax cross-entropy is log 1 = 0 negated, which the kernels
    return as -0.0; torch.nn.functional.cross_entropy returns +0.0 for class indices.
    """
    return float(value) + 0.0


def loss(name: str, output: FloatArray, target: np.ndarray) -> float:
    """Loss ``name`` of ``output`` against ``target`` (see ``loss_and_grad``)."""
    return loss_and_grad(name, output, target)[0]


# ---------------------------------------------------------------- whole network
def mlp_loss_and_grad(x: FloatArray, target: np.ndarray, loss: str, widths: Sequence[int],
                      activations: Sequence[str], params: FloatArray, grads_out: Optional[FloatArray] = None, *,
                      outputs_out: Optional[FloatArray] = None, preactivations_out: Optional[FloatArray] = None,
                      deltas_out: Optional[FloatArray] = None) -> Tuple[float, FloatArray]:
    """Loss and every gradient of a stack of dense layers, in one kernel call.

    Layer l = 1..L maps ``widths[l-1]`` features to ``widths[l]``:
    ``a_l = act_l(a_{l-1}·W_l + b_l)`` with ``a_0 = x``; the loss compares a_L
    with ``target``; backward fills the gradient of every W_l and b_l. The same
    numbers as ``dense_forward``, ``loss_and_grad`` and ``dense_backward``
    called layer by layer (bit for bit), without returning to Python between
    them: what ``Network.fit`` runs for a stack of ``Dense`` layers.

    Parameters
    ----------
    x : ndarray of shape (n_samples, widths[0]), float32 or float64
    target : ndarray
        As for ``loss_and_grad`` with an output of shape (n_samples, widths[-1]).
    loss : str, one of ``LOSSES``
    widths : sequence of L + 1 ints >= 1
    activations : sequence of L names from ``ACTIVATIONS``
    params : C-contiguous ndarray of shape (n_params,), x's dtype
        W_1 (widths[0], widths[1]) in C order, b_1, W_2, b_2, ... one after the other
        (``fastbp.Network.params`` has this layout).
    grads_out : C-contiguous ndarray like ``params``, optional
    outputs_out, deltas_out : C-contiguous ndarrays of shape (Σ n_samples·widths[l],), optional
        Receive every layer's output a_l and d loss/d z_l, layer after layer.
    preactivations_out : C-contiguous ndarray, optional
        Receives z_l for the layers whose derivative needs it (gelu), layer after layer.

    Returns
    -------
    loss : float
    grads : ndarray of shape (n_params,), laid out like ``params``
    """
    x = V.contiguous_input("x", x, 2)
    widths = np.asarray(widths)
    if (widths.ndim != 1 or widths.size < 2 or widths.dtype.kind not in "iu" or widths.min() < 1
            or widths.max() > MAX_INT64):  # the kernels take int64 widths: uint64 beyond would wrap
        raise ValueError(f"widths must be a sequence of at least 2 integers in [1, 2**63 - 1], "
                         f"got {widths.tolist()!r}")
    widths = widths.astype(np.int64)
    if isinstance(activations, str) or len(activations) != widths.size - 1:
        raise ValueError(f"activations must name one activation per layer ({widths.size - 1}), got {activations!r}")
    act_ids = np.array([_activation_id(name) for name in activations], np.int64)
    m = x.shape[0]
    if m == 0 or x.shape[1] != widths[0]:
        raise ValueError(f"x must have shape (n_samples >= 1, {widths[0]}), got {x.shape}")
    target, kernel = _loss_target(loss, target, (m, int(widths[-1])), x.dtype)
    if kernel == "softmax_cross_entropy" and widths[-1] < 2:
        raise ValueError("softmax_cross_entropy needs at least 2 outputs")
    _, (n_params, n_outputs, n_preactivations) = mlp_layout(widths, act_ids, m)
    params = V.contiguous_input("params", params, 1, x.dtype)
    if params.shape != (n_params,):
        raise ValueError(f"params must have shape ({n_params},) for widths {widths.tolist()}, got {params.shape}")
    inputs = {"x": x, "target": target, "params": params}
    grads = V.output_array("grads_out", grads_out, (n_params,), x.dtype, inputs=inputs)
    inputs["grads_out"] = grads
    outputs = V.output_array("outputs_out", outputs_out, (n_outputs,), x.dtype, inputs=inputs)
    inputs["outputs_out"] = outputs
    deltas = V.output_array("deltas_out", deltas_out, (n_outputs,), x.dtype, inputs=inputs)
    inputs["deltas_out"] = deltas
    preacts = V.output_array("preactivations_out", preactivations_out, (n_preactivations,), x.dtype,
                             inputs=inputs)
    backend, n_threads = _backend.runtime()
    value = backend.mlp_loss_and_grad(x, target, R.LOSS_KERNEL_ID[kernel], widths, act_ids, params, grads,
                                      outputs, preacts, deltas, n_threads)
    return _loss_value(value), grads


# ---------------------------------------------------------------- optimizers
def _optimizer_buffers(param, grad, **state):
    param = V.float_array("param", param, ndim=1)
    if not param.flags.c_contiguous or not param.flags.writeable:
        raise ValueError("param must be a writable C-contiguous 1-D array")
    grad = V.contiguous_input("grad", grad, 1, param.dtype)
    if grad.shape != param.shape:
        raise ValueError(f"grad must have shape {param.shape}, got {grad.shape}")
    # Every buffer is read and written element by element: one array passed as two of them
    # (exp_avg as exp_avg_sq, grad as param) would mix their updates, so none may overlap another.
    V.no_overlap("param", param, {"grad": grad})
    buffers = {"param": param, "grad": grad}
    for name, buf in state.items():
        if buf is None:
            raise ValueError(f"{name} must be a buffer of shape {param.shape}, got None")
        buffers[name] = V.output_array(name, buf, param.shape, param.dtype, inputs=dict(buffers))
    return param, grad


def _penalty_buffers(param, fisher, anchor, lam):
    """The optimizer kernels' EWC keyword arguments, checked: {} without ``fisher``."""
    if fisher is None and anchor is None:
        return {}
    if fisher is None or anchor is None:
        raise ValueError("fisher and anchor go together: pass both or neither")
    lam = V.scalar("lam", lam, param.dtype)
    if not (lam >= 0.0):
        raise ValueError(f"lam must be >= 0, got {lam}")
    buffers = {"fisher": V.contiguous_input("fisher", fisher, 1, param.dtype),
               "anchor": V.contiguous_input("anchor", anchor, 1, param.dtype)}
    for name, buf in buffers.items():
        if buf.shape != param.shape:
            raise ValueError(f"{name} must have shape {param.shape}, got {buf.shape}")
    V.no_overlap("param", param, buffers)
    return dict(buffers, lam=lam)


def sgd_step(param: FloatArray, grad: FloatArray, velocity: Optional[FloatArray], lr: float, momentum: float = 0.0,
             nesterov: bool = False, weight_decay: float = 0.0, fisher: Optional[FloatArray] = None,
             anchor: Optional[FloatArray] = None, lam: float = 0.0) -> bool:
    """One in-place SGD step on flat buffers, torch.optim.SGD's rule (dampening 0).

    ``g = grad + weight_decay·param``; with momentum μ ``velocity = μ·velocity + g`` and
    ``g = g + μ·velocity`` (Nesterov) or ``g = velocity``; then ``param -= lr·g``.

    Parameters
    ----------
    param : writable C-contiguous ndarray of shape (n_params,)
    grad : ndarray of shape (n_params,)
    velocity : writable C-contiguous ndarray of shape (n_params,), or None when momentum is 0
    fisher, anchor : ndarrays of shape (n_params,), optional
        Elastic weight consolidation (``fastbp.continual.EWC``): ``lam·fisher·(param - anchor)``
        is added to ``g`` after the weight decay, in the same kernel pass. Given together.
    lam : float >= 0
        The penalty's strength; used only with ``fisher``.

    Returns
    -------
    applied : bool
        False when ``grad`` or a new value of ``param`` or ``velocity`` would be NaN
        or infinite: then nothing is written (every optimizer step is checked so).
    """
    momentum = V.scalar("momentum", momentum)
    state = {"velocity": velocity} if momentum or velocity is not None else {}
    param, grad = _optimizer_buffers(param, grad, **state)
    backend, n_threads = _backend.runtime()
    penalty = _penalty_buffers(param, fisher, anchor, lam)
    return bool(backend.sgd_step(param, grad, velocity, V.scalar("lr", lr), momentum,
                                 bool(nesterov), V.scalar("weight_decay", weight_decay), n_threads, **penalty))


def rmsprop_step(param: FloatArray, grad: FloatArray, square_avg: FloatArray, lr: float, rho: float = 0.9,
                 eps: float = 1e-8, weight_decay: float = 0.0, fisher: Optional[FloatArray] = None,
                 anchor: Optional[FloatArray] = None, lam: float = 0.0) -> bool:
    """One in-place RMSprop step, torch.optim.RMSprop's rule (eps outside the root).

    ``g = grad + weight_decay·param; square_avg = ρ·square_avg + (1-ρ)·g²;
    param -= lr·g / (√square_avg + eps)``. Returns whether the step was applied; ``fisher``,
    ``anchor``, ``lam``: see ``sgd_step``.
    """
    param, grad = _optimizer_buffers(param, grad, square_avg=square_avg)
    penalty = _penalty_buffers(param, fisher, anchor, lam)
    backend, n_threads = _backend.runtime()
    return bool(backend.rmsprop_step(param, grad, square_avg, V.scalar("lr", lr), V.unit_interval("rho", rho),
                                     V.scalar("eps", eps), V.scalar("weight_decay", weight_decay), n_threads,
                                     **penalty))




def adam_step(param: FloatArray, grad: FloatArray, exp_avg: FloatArray, exp_avg_sq: FloatArray, step: int, lr: float,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              fisher: Optional[FloatArray] = None, anchor: Optional[FloatArray] = None, lam: float = 0.0) -> bool:
    """One in-place Adam step number ``step`` (1 <= step <= 2**63 - 1), torch.optim.Adam's rule with bias correction.

    ``m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
    param -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps)`` with ``g = grad + weight_decay·param``.
    Returns whether the step was applied; ``fisher``, ``anchor``, ``lam``: see ``sgd_step``.
    """
    param, grad = _optimizer_buffers(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    penalty = _penalty_buffers(param, fisher, anchor, lam)
    # The kernels take the step as a 64-bit integer; beta = 1 would divide by 1 - beta^t = 0.
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 1 <= step <= MAX_INT64:
        raise ValueError(f"step must be an integer in [1, 2**63 - 1], got {step!r}")
    beta1, beta2 = V.unit_interval("beta1", beta1), V.unit_interval("beta2", beta2)
    backend, n_threads = _backend.runtime()
    return bool(backend.adam_step(param, grad, exp_avg, exp_avg_sq, V.scalar("lr", lr), beta1,
                                  beta2, V.scalar("eps", eps),
                                  V.scalar("weight_decay", weight_decay), int(step), n_threads, **penalty))


# ---------------------------------------------------------------- recurrent layers
def _recurrent_activation(name):
    act = _activation_id(name)
    if name not in R.RECURRENT_ACTIVATIONS:
        raise ValueError(f"activation {name!r} cannot be used in a recurrent layer (it needs the "
                         f"preactivation or is row-wise); use one of {', '.join(R.RECURRENT_ACTIVATIONS)}")
    return act


def _sequence(name, x, dtype=None):
    if isinstance(x, np.ndarray) and x.ndim == 2:
        raise ValueError(f"{name} must be 3-D of shape (batch, time, hidden), got the 2-D shape {x.shape}")
    return V.contiguous_input(name, x, 3, dtype)


def _recurrent_weights(wh, n_hidden, dtype):
    wh = V.contiguous_input("wh", wh, 2, dtype)
    if wh.shape != (n_hidden, n_hidden):
        raise ValueError(f"wh must have shape {(n_hidden, n_hidden)} to match {n_hidden} hidden units, got {wh.shape}")
    return wh


def rnn_forward(x_proj: FloatArray, wh: FloatArray, activation: str = "tanh",
                out: Optional[FloatArray] = None) -> FloatArray:
    """Run a simple RNN over whole sequences: ``h_t = act(x_proj_t + h_{t-1}·wh)`` from ``h_{-1} = 0``.

    The input projection ``x_proj = x·wx + b`` is computed beforehand as one
    ``dense_forward`` over the batch·time rows; the kernel runs the time loop.

    Parameters
    ----------
    x_proj : ndarray of shape (batch, time, hidden), float32 or float64
    wh : ndarray of shape (hidden, hidden)
    activation : str, one of ``registry.RECURRENT_ACTIVATIONS``
    out : C-contiguous ndarray of shape (batch, time, hidden), optional
        Receives every state h_t; may be ``x_proj`` itself (in place).

    Returns
    -------
    hs : ndarray of shape (batch, time, hidden)
    """
    act = _recurrent_activation(activation)
    x_proj = _sequence("x_proj", x_proj)
    wh = _recurrent_weights(wh, x_proj.shape[2], x_proj.dtype)
    out = V.output_array("out", out, x_proj.shape, x_proj.dtype, inputs={"x_proj": x_proj, "wh": wh},
                         may_alias=("x_proj",))
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.rnn_forward(x_proj, wh, act, out, n_threads)
    return out


def rnn_backward(hs: FloatArray, wh: FloatArray, grad_hs: FloatArray, activation: str = "tanh",
                 truncate: Optional[int] = None, *, delta_out: Optional[FloatArray] = None,
                 dwh_out: Optional[FloatArray] = None) -> Tuple[FloatArray, FloatArray]:
    """Backpropagation through time for ``rnn_forward``, optionally truncated.

    With T steps and ``t0 = T - truncate``: ``δ_t = (grad_hs_t + δ_{t+1}·whᵀ) ⊙ act'(h_t)``
    for ``t >= t0`` (``δ_T = 0``), ``δ_t = 0`` for ``t < t0``, and
    ``dwh = Σ_{t>=1} h_{t-1}ᵀ·δ_t``. That is the exact gradient when the states
    before step t0 are held constant, i.e. gradients flow back at most
    ``truncate`` steps from the last step. ``δ`` is d loss / d x_proj, so the
    caller gets ``dwx = xᵀ·δ``, ``db = Σ δ`` and ``dx = δ·wxᵀ`` from
    ``dense_backward`` over the batch·time rows.

    Parameters
    ----------
    hs : ndarray of shape (batch, time, hidden): the states from ``rnn_forward``
    wh : ndarray of shape (hidden, hidden)
    grad_hs : ndarray of shape (batch, time, hidden): d loss / d h_t
    activation : str, as given to ``rnn_forward``
    truncate : int >= 1 or None
        Steps to backpropagate through; None (or >= time) is full BPTT.
    delta_out : C-contiguous ndarray of shape (batch, time, hidden), optional; may be ``grad_hs``
    dwh_out : C-contiguous ndarray of shape (hidden, hidden), optional

    Returns
    -------
    delta : ndarray of shape (batch, time, hidden)
    dwh : ndarray of shape (hidden, hidden)
    """
    act = _recurrent_activation(activation)
    hs = _sequence("hs", hs)
    grad_hs = _sequence("grad_hs", grad_hs, hs.dtype)
    if grad_hs.shape != hs.shape:
        raise ValueError(f"grad_hs must have the shape of hs {hs.shape}, got {grad_hs.shape}")
    m, n_steps, n = hs.shape
    wh = _recurrent_weights(wh, n, hs.dtype)
    if truncate is None:
        truncate = max(n_steps, 1)
    elif isinstance(truncate, bool) or not hasattr(truncate, "__index__") or int(truncate) < 1:
        raise ValueError(f"truncate must be an integer >= 1 or None, got {truncate!r}")
    truncate = min(int(truncate), max(n_steps, 1))
    delta = V.output_array("delta_out", delta_out, hs.shape, hs.dtype,
                           inputs={"hs": hs, "wh": wh, "grad_hs": grad_hs}, may_alias=("grad_hs",))
    dwh = V.output_array("dwh_out", dwh_out, (n, n), hs.dtype,
                         inputs={"hs": hs, "wh": wh, "grad_hs": grad_hs, "delta_out": delta})
    backend, n_threads = _backend.runtime()
    backend.rnn_backward(hs, wh, act, grad_hs, truncate, delta, dwh, n_threads)
    return delta, dwh


class ConvergenceError(ArithmeticError):
    """A fixed-point iteration did not reach its tolerance within its iteration limit."""


def _iteration_limits(tol, max_iter):
    tol = V.scalar("tol", tol)
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if isinstance(max_iter, bool) or not hasattr(max_iter, "__index__") or int(max_iter) < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    return tol, int(max_iter)


def fixed_point_forward(x_proj: FloatArray, wh: FloatArray, activation: str = "tanh", tol: float = 1e-6,
                        max_iter: int = 100, out: Optional[FloatArray] = None,
                        scratch: Optional[FloatArray] = None) -> Tuple[FloatArray, int]:
    """Relax ``h = act(x_proj + h·wh)`` from ``h = 0`` until ``max|Δh| <= tol``.

    Parameters
    ----------
    x_proj : ndarray of shape (n_samples, hidden): x·wx + b
    wh : ndarray of shape (hidden, hidden)
    activation : str, one of ``registry.RECURRENT_ACTIVATIONS``
    tol : float > 0
    max_iter : int >= 1
    out, scratch : C-contiguous ndarrays of shape (n_samples, hidden), optional

    Returns
    -------
    h : ndarray of shape (n_samples, hidden): the fixed point
    iterations : int

    Raises
    ------
    ConvergenceError
        When ``max|Δh| > tol`` after ``max_iter`` updates (message: iterations, residual).
    """
    act = _recurrent_activation(activation)
    tol, max_iter = _iteration_limits(tol, max_iter)
    x_proj = V.contiguous_input("x_proj", x_proj, 2)
    wh = _recurrent_weights(wh, x_proj.shape[1], x_proj.dtype)
    inputs = {"x_proj": x_proj, "wh": wh}
    h = V.output_array("out", out, x_proj.shape, x_proj.dtype, inputs=inputs)
    scratch = V.output_array("scratch", scratch, x_proj.shape, x_proj.dtype, inputs=dict(inputs, out=h))
    backend, n_threads = _backend.runtime()
    it, residual = backend.fixed_point_forward(x_proj, wh, act, tol, max_iter, h, scratch, n_threads)
    if not residual <= tol:
        raise ConvergenceError(f"fixed_point_forward did not converge: max|Δh| = {residual:.3g} > tol = {tol:g} "
                               f"after {it} iterations")
    return h, it


def fixed_point_adjoint(h: FloatArray, wh: FloatArray, grad_h: FloatArray, activation: str = "tanh",
                        tol: float = 1e-6, max_iter: int = 100, out: Optional[FloatArray] = None,
                        scratch: Optional[FloatArray] = None) -> Tuple[FloatArray, int]:
    """Recurrent backpropagation (Almeida–Pineda) at a fixed point ``h = act(x_proj + h·wh)``.

    Solves ``v = grad_h + (v ⊙ D)·whᵀ`` with ``D = act'(h)`` by iteration from
    ``v = grad_h`` and returns ``δ = v ⊙ D`` = d loss / d x_proj, so that
    ``dwx = xᵀ·δ``, ``dwh = hᵀ·δ``, ``db = Σ δ``, ``dx = δ·wxᵀ``.

    Parameters
    ----------
    h, grad_h : ndarrays of shape (n_samples, hidden)
    wh : ndarray of shape (hidden, hidden)
    activation, tol, max_iter : as for ``fixed_point_forward``
    out : C-contiguous ndarray of shape (n_samples, hidden), optional: receives δ
    scratch : C-contiguous ndarray of shape (2, n_samples, hidden), optional

    Returns
    -------
    delta : ndarray of shape (n_samples, hidden)
    iterations : int

    Raises
    ------
    ConvergenceError
        When the adjoint iteration does not reach ``tol`` within ``max_iter``.
    """
    act = _recurrent_activation(activation)
    tol, max_iter = _iteration_limits(tol, max_iter)
    h = V.contiguous_input("h", h, 2)
    grad_h = V.contiguous_input("grad_h", grad_h, 2, h.dtype)
    if grad_h.shape != h.shape:
        raise ValueError(f"grad_h must have the shape of h {h.shape}, got {grad_h.shape}")
    wh = _recurrent_weights(wh, h.shape[1], h.dtype)
    inputs = {"h": h, "wh": wh, "grad_h": grad_h}
    delta = V.output_array("out", out, h.shape, h.dtype, inputs=inputs)
    scratch = V.output_array("scratch", scratch, (2,) + h.shape, h.dtype, inputs=dict(inputs, out=delta))
    backend, n_threads = _backend.runtime()
    it, residual = backend.fixed_point_adjoint(h, wh, act, grad_h, tol, max_iter, delta, scratch, n_threads)
    if not residual <= tol:
        raise ConvergenceError(f"fixed_point_adjoint did not converge: max|Δv| = {residual:.3g} > tol = {tol:g} "
                               f"after {it} iterations")
    return delta, it


# ---------------------------------------------------------------- convolution and pooling
# Images are channels-last, (n_samples, height, width, channels); convolution
# weights are (kernel_h, kernel_w, in_channels, out_channels). Geometry
# arguments (stride, padding, dilation, pool_size) are turned into the kernels'
# integer tuples, and impossible ones rejected, by fastbp._geometry.
def _image(name, x, dtype=None):
    """A checked, C-contiguous (n_samples, height, width, channels) float array with pixels and channels."""
    if isinstance(x, np.ndarray) and x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (n_samples, height, width, channels), got shape {x.shape}")
    x = V.contiguous_input(name, x, 4, dtype)
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{name} must have at least one pixel and one channel, got shape {x.shape} "
                         "(n_samples, height, width, channels)")
    return x


def _conv_weights(x, w):
    if isinstance(w, np.ndarray) and w.ndim != 4:
        raise ValueError(f"w must be 4-D (kernel_h, kernel_w, in_channels, out_channels), got shape {w.shape}")
    w = V.contiguous_input("w", w, 4, x.dtype)
    if w.shape[2] != x.shape[3] or min(w.shape) < 1:
        raise ValueError(
            f"w has shape {w.shape} (kernel_h, kernel_w, in_channels, out_channels) but x has shape {x.shape} "
            f"with {x.shape[3]} channels; expected w of shape (kh, kw, {x.shape[3]}, out_channels), all positive")
    return w


def _conv_operands(x, w, b):
    x = _image("x", x)
    w = _conv_weights(x, w)
    b = V.contiguous_input("b", b, 1, x.dtype)
    if b.shape != (w.shape[3],):
        raise ValueError(f"b must have shape ({w.shape[3]},) to match w of shape {w.shape}, got {b.shape}")
    return x, w, b


def conv2d_forward(x, w, b, stride=1, padding="valid", dilation=1, activation="identity", out=None,
                   preactivation_out=None):
    """Fused 2-D convolution ``a = act(conv(x, w) + b)`` over channels-last images.

    ``z[n, i, j, f] = Σ_{p, q, c} x[n, i·sh - top + p·dh, j·sw - left + q·dw, c]·w[p, q, c, f] + b[f]``,
    pixels outside ``x`` being zeros: torch.nn.functional.conv2d (a cross-correlation)
    with the image and weight axes permuted. Computed as one GEMM over output
    pixels with the bias and activation applied to each output tile.

    Parameters
    ----------
    x : ndarray of shape (n_samples, height, width, in_channels), float32 or float64
    w : ndarray of shape (kernel_h, kernel_w, in_channels, out_channels), same dtype
    b : ndarray of shape (out_channels,)
    stride, dilation : int or (int, int), positive
    padding : "valid", "same", int, (pad_h, pad_w) or (top, bottom, left, right)
        "same" gives ceil(size / stride) outputs per axis (for stride 1 torch's
        padding="same"), the odd pixel at the bottom/right.
    activation : str, one of ``ACTIVATIONS`` (softmax is over the channels of each pixel)
    out : C-contiguous ndarray of shape (n_samples, out_h, out_w, out_channels), optional
    preactivation_out : C-contiguous ndarray like ``out``, optional
        Receives z = conv(x, w) + b, which backward needs for gelu.

    Returns
    -------
    out : ndarray of shape (n_samples, out_h, out_w, out_channels)
    """
    act = _activation_id(activation)
    x, w, b = _conv_operands(x, w, b)
    shape, geometry = G.conv2d(x.shape, w.shape, stride, padding, dilation)
    inputs = {"x": x, "w": w, "b": b}
    out = V.output_array("out", out, shape, x.dtype, inputs=inputs)
    z = V.output_array("preactivation_out", preactivation_out, shape, x.dtype, inputs=dict(inputs, out=out)) \
        if preactivation_out is not None else out
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.conv2d_forward(x, w, b, geometry, act, z, out, n_threads)
    return out


def conv2d_backward(x, w, output, grad_output, stride=1, padding="valid", dilation=1, activation="identity",
                    preactivation=None, *, grad_preactivation_out=None, dw_out=None, db_out=None, dx_out=None,
                    compute_dx=True, accumulate=False):
    """Backward pass of ``a = act(conv(x, w) + b)``.

    Computes ``δ = grad_output ⊙ act'(z)``, ``dw = colsᵀ·δ`` (cols: each output
    pixel's receptive field), ``db = Σ_pixels δ`` and ``dx``, the transposed
    convolution of δ with w; with ``accumulate`` dw and db are added to
    ``dw_out`` and ``db_out``. Bitwise the same for any thread count.

    Parameters
    ----------
    x : ndarray of shape (n_samples, height, width, in_channels): the layer's input
    w : ndarray of shape (kernel_h, kernel_w, in_channels, out_channels)
    output : ndarray of shape (n_samples, out_h, out_w, out_channels): a, from the forward pass
    grad_output : ndarray like ``output``: d loss / d a
    stride, padding, dilation, activation : as in ``conv2d_forward``
    preactivation : ndarray like ``output``, optional: z, needed for gelu
    grad_preactivation_out : C-contiguous ndarray like ``output``, optional; may be ``grad_output``
    dw_out, db_out, dx_out : C-contiguous ndarrays shaped like w, (out_channels,) and x, optional
    compute_dx : bool
        False skips dx (a first layer needs none) and returns None for it.
    accumulate : bool
        Add to ``dw_out``/``db_out``, which must then be given.

    Returns
    -------
    dw, db, dx : ndarrays (dx is None when ``compute_dx`` is False)
    """
    act = _activation_id(activation)
    x = _image("x", x)
    w = _conv_weights(x, w)
    shape, geometry = G.conv2d(x.shape, w.shape, stride, padding, dilation)
    output = V.contiguous_input("output", output, 4, x.dtype)
    grad_output = V.contiguous_input("grad_output", grad_output, 4, x.dtype)
    for name, arr in (("output", output), ("grad_output", grad_output)):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match x {x.shape}, w {w.shape} and the "
                             f"stride, padding and dilation, got {arr.shape}")
    z = _checked_preactivation(activation, output, preactivation)
    delta, dw, db, dx = _backward_outputs(x, w, output, z, grad_output, grad_preactivation_out, dw_out, db_out,
                                          dx_out, compute_dx, accumulate)
    if x.shape[0] == 0:
        return _empty_batch_grads(dw, db, dx, accumulate)
    backend, n_threads = _backend.runtime()
    backend.conv2d_backward(x, w, z, output, grad_output, act, geometry, delta, dw, db, dx,
                            bool(compute_dx), bool(accumulate), n_threads)
    return dw, db, dx


def _input_shape(input_shape, grad_output):
    """``input_shape`` as a 4-tuple (n, h, w, c) agreeing with grad_output's batch and channels."""
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a tuple of 4 ints, got {input_shape!r}") from None
    if len(shape) != 4 or min(shape[1:]) < 1 or shape[0] < 0:
        raise ValueError(f"input_shape must be (n_samples, height, width, channels) with positive sizes, "
                         f"got {input_shape!r}")
    if (shape[0], shape[3]) != (grad_output.shape[0], grad_output.shape[-1]):
        raise ValueError(f"input_shape {shape} and grad_output {grad_output.shape} differ in batch or channels")
    return shape


def max_pool2d_forward(x, pool_size, stride=None, padding=0, out=None, argmax_out=None):
    """2-D max pooling over channels-last images, with the arg-max for backward.

    As torch.nn.functional.max_pool2d (padding is -inf, ties go to the first
    maximum in row-major scan order, a NaN propagates); ``argmax`` holds
    torch's ``return_indices``: row·width + column of the chosen pixel of x.

    Parameters
    ----------
    x : ndarray of shape (n_samples, height, width, channels), float32 or float64
    pool_size : int or (int, int)
    stride : int or (int, int), optional; default ``pool_size``
    padding : int, (pad_h, pad_w), (top, bottom, left, right), "valid" or "same";
        each smaller than the pool size along its axis
    out : C-contiguous ndarray of shape (n_samples, out_h, out_w, channels), optional
    argmax_out : C-contiguous int64 ndarray like ``out``, optional

    Returns
    -------
    out : ndarray of shape (n_samples, out_h, out_w, channels)
    argmax : int64 ndarray of the same shape
    """
    x = _image("x", x)
    shape, geometry = G.pool2d("max_pool2d", x.shape, pool_size, stride, padding)
    out = V.output_array("out", out, shape, x.dtype, inputs={"x": x})
    argmax = V.output_array("argmax_out", argmax_out, shape, np.dtype(np.int64), inputs={"x": x, "out": out})
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.max_pool2d_forward(x, geometry, out, argmax, n_threads)
    return out, argmax


def max_pool2d_backward(grad_output, argmax, input_shape, dx_out=None):
    """Gradient of max pooling: each grad_output value goes to its arg-max pixel.

    Parameters
    ----------
    grad_output : ndarray of shape (n_samples, out_h, out_w, channels)
    argmax : int64 ndarray of the same shape, from ``max_pool2d_forward``
    input_shape : (n_samples, height, width, channels) of the forward's x
    dx_out : C-contiguous ndarray of shape ``input_shape``, optional

    Returns
    -------
    dx : ndarray of shape ``input_shape``
    """
    grad_output = _image("grad_output", grad_output)
    shape = _input_shape(input_shape, grad_output)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64 or argmax.shape != grad_output.shape:
        raise ValueError(f"argmax must be an int64 ndarray of shape {grad_output.shape}, got "
                         f"{getattr(argmax, 'dtype', type(argmax).__name__)} {np.shape(argmax)}")
    argmax = np.ascontiguousarray(argmax)
    if argmax.size and (argmax.min() < 0 or argmax.max() >= shape[1] * shape[2]):
        raise ValueError(f"argmax values must lie in [0, {shape[1] * shape[2]}) for input_shape {shape}, "
                         f"got [{argmax.min()}, {argmax.max()}]")
    dx = V.output_array("dx_out", dx_out, shape, grad_output.dtype, inputs={"grad_output": grad_output, "argmax": argmax})
    if dx.size:
        backend, n_threads = _backend.runtime()
        backend.max_pool2d_backward(grad_output, argmax, dx, n_threads)
    return dx


def avg_pool2d_forward(x, pool_size, stride=None, padding=0, count_include_pad=True, out=None):
    """2-D average pooling over channels-last images (torch.nn.functional.avg_pool2d).

    Parameters
    ----------
    x : ndarray of shape (n_samples, height, width, channels), float32 or float64
    pool_size, stride, padding : as in ``max_pool2d_forward``
    count_include_pad : bool
        Divide by the whole window (padding counted as zeros, torch's default)
        rather than by the pixels of x in it.
    out : C-contiguous ndarray of shape (n_samples, out_h, out_w, channels), optional

    Returns
    -------
    out : ndarray of shape (n_samples, out_h, out_w, channels)
    """
    x = _image("x", x)
    shape, geometry = G.pool2d("avg_pool2d", x.shape, pool_size, stride, padding)
    out = V.output_array("out", out, shape, x.dtype, inputs={"x": x})
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.avg_pool2d_forward(x, geometry, bool(count_include_pad), out, n_threads)
    return out


def avg_pool2d_backward(grad_output, input_shape, pool_size, stride=None, padding=0, count_include_pad=True,
                        dx_out=None):
    """Gradient of average pooling: each grad_output value spread over its window, divided as forward.

    Parameters
    ----------
    grad_output : ndarray of shape (n_samples, out_h, out_w, channels)
    input_shape : (n_samples, height, width, channels) of the forward's x
    pool_size, stride, padding, count_include_pad : as in ``avg_pool2d_forward``
    dx_out : C-contiguous ndarray of shape ``input_shape``, optional

    Returns
    -------
    dx : ndarray of shape ``input_shape``
    """
    grad_output = _image("grad_output", grad_output)
    shape = _input_shape(input_shape, grad_output)
    expected, geometry = G.pool2d("avg_pool2d", shape, pool_size, stride, padding)
    if grad_output.shape != expected:
        raise ValueError(f"grad_output must have shape {expected} for input_shape {shape}, got {grad_output.shape}")
    dx = V.output_array("dx_out", dx_out, shape, grad_output.dtype, inputs={"grad_output": grad_output})
    if dx.size:
        backend, n_threads = _backend.runtime()
        backend.avg_pool2d_backward(grad_output, geometry, bool(count_include_pad), dx, n_threads)
    return dx


def global_avg_pool2d_forward(x, out=None):
    """Mean over the pixels of each channel: (n_samples, height, width, channels) -> (n_samples, channels).

    Parameters
    ----------
    x : ndarray of shape (n_samples, height, width, channels), float32 or float64
    out : C-contiguous ndarray of shape (n_samples, channels), optional

    Returns
    -------
    out : ndarray of shape (n_samples, channels)
    """
    x = _image("x", x)
    out = V.output_array("out", out, (x.shape[0], x.shape[3]), x.dtype, inputs={"x": x})
    if out.size:
        backend, n_threads = _backend.runtime()
        backend.global_avg_pool2d_forward(x, out, n_threads)
    return out


def global_avg_pool2d_backward(grad_output, input_shape, dx_out=None):
    """Gradient of global average pooling: dx[n, :, :, c] = grad_output[n, c] / (height·width).

    Parameters
    ----------
    grad_output : ndarray of shape (n_samples, channels)
    input_shape : (n_samples, height, width, channels) of the forward's x
    dx_out : C-contiguous ndarray of shape ``input_shape``, optional

    Returns
    -------
    dx : ndarray of shape ``input_shape``
    """
    grad_output = V.contiguous_input("grad_output", grad_output, 2)
    shape = _input_shape(input_shape, grad_output)
    dx = V.output_array("dx_out", dx_out, shape, grad_output.dtype, inputs={"grad_output": grad_output})
    if dx.size:
        backend, n_threads = _backend.runtime()
        backend.global_avg_pool2d_backward(grad_output, dx, n_threads)
    return dx


# ---------------------------------------------------------------- gated recurrent layers (LSTM, GRU)
# One block, appended: validation of the gated kernels' arguments and their
# wrappers. Layout: fastbp multiplies x·W, so its weights are the transposes of
# torch's, and the gates keep torch's order along the columns:
#
#   LSTM (gates i, f, g, o)            GRU (gates r, z, n)
#   w_ih = weight_ih_l0.T  (n_in, 4H)  w_ih = weight_ih_l0.T  (n_in, 3H)
#   w_hh = weight_hh_l0.T  (H, 4H)     w_hh = weight_hh_l0.T  (H, 3H)
#   bias = bias_ih_l0 + bias_hh_l0     bias = bias_ih_l0 + (bias_hh_l0[:2H], 0)
#                                      bias_hn = bias_hh_l0[2H:]  (inside r ⊙ (·), as torch)
#
# Gradients map back the same way: d weight_ih_l0 = dw_ih.T, d weight_hh_l0 =
# dw_hh.T; LSTM: d bias_ih_l0 = d bias_hh_l0 = dbias; GRU: d bias_ih_l0 = dbias,
# d bias_hh_l0 = (dbias[:2H], dbias_hn).
from ._kernels.reference import GATED_WORK  # noqa: E402  (work length per kernel, in units of batch·hidden)

__all__ += ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "GATED_WORK"]
_GATES = {"lstm": 4, "gru": 3}


def _gated_input(kernel, x):
    """x checked as a non-empty (batch, time, n_in) sequence."""
    x = _sequence("x", x)
    if 0 in x.shape:
        raise ValueError(f"{kernel}: x has shape {x.shape}; batch, time (the sequence length) and n_in "
                         "must all be >= 1")
    return x


def _gated_weights(kernel, x, w_ih, w_hh):
    """(w_ih, w_hh, hidden) checked against x and the kernel's gate count."""
    n_gates = _GATES[kernel[:kernel.index("_")]]
    n_in = x.shape[2]
    w_ih = V.contiguous_input("w_ih", w_ih, 2, x.dtype)
    if w_ih.shape[0] != n_in or w_ih.shape[1] % n_gates or w_ih.shape[1] == 0:
        raise ValueError(f"{kernel}: w_ih must have shape (n_in, {n_gates}·hidden) with n_in = {n_in}, the "
                         f"features of x {x.shape}; got {w_ih.shape}")
    n = w_ih.shape[1] // n_gates
    w_hh = V.contiguous_input("w_hh", w_hh, 2, x.dtype)
    if w_hh.shape != (n, n_gates * n):
        raise ValueError(f"{kernel}: w_hh must have shape {(n, n_gates * n)} to match w_ih {w_ih.shape} "
                         f"({n} hidden units), got {w_hh.shape}")
    return w_ih, w_hh, n


def _gated_vector(kernel, name, v, size, dtype):
    v = V.contiguous_input(name, v, 1, dtype)
    if v.shape != (size,):
        raise ValueError(f"{kernel}: {name} must have shape {(size,)}, got {v.shape}")
    return v


def _gated_state(kernel, name, state, shape, dtype):
    """An initial state (batch, hidden), zeros when None."""
    if state is None:
        return np.zeros(shape, dtype)
    state = V.contiguous_input(name, state, 2, dtype)
    if state.shape != shape:
        raise ValueError(f"{kernel}: {name} must have shape {shape} (batch, hidden), got {state.shape}")
    return state


def _gated_cache(kernel, name, a, shape, dtype):
    a = V.contiguous_input(name, a, 3, dtype)
    if a.shape != shape:
        raise ValueError(f"{kernel}: {name} must have shape {shape}, got {a.shape}")
    return a


def _gated_truncate(truncate, n_steps):
    if truncate is None:
        return n_steps
    if isinstance(truncate, bool) or not hasattr(truncate, "__index__") or int(truncate) < 1:
        raise ValueError(f"truncate must be an integer >= 1 or None, got {truncate!r}")
    return min(int(truncate), n_steps)


def _gated_work(kernel, work, size, dtype, inputs):
    if work is None:
        return np.empty(size, dtype)
    if not isinstance(work, np.ndarray):
        raise TypeError(f"{kernel}: work must be a numpy.ndarray or None, got {type(work).__name__}")
    work = V.output_array("work", work, work.shape, dtype, inputs=inputs)
    if work.ndim != 1 or work.shape[0] < size:
        raise ValueError(f"{kernel}: work must be 1-D with at least {size} elements, got shape {work.shape}")
    return work


def lstm_forward(x, w_ih, w_hh, bias, h0=None, c0=None, *, out=None, cell_out=None, gates_out=None, work=None):
    """Run an LSTM over whole sequences (``torch.nn.LSTM``'s equations, gate order i, f, g, o).

    ``gates_t = x_t·w_ih + bias + h_{t-1}·w_hh`` split into four blocks of
    ``hidden`` columns; ``i, f, o = σ(·)``, ``g = tanh(·)``;
    ``c_t = f ⊙ c_{t-1} + i ⊙ g``; ``h_t = o ⊙ tanh(c_t)``. The input projection
    of all batch·time rows is one GEMM; the time loop runs in compiled code.
    For the mapping from ``torch.nn.LSTM``'s parameters see the comment above
    (``w_ih = weight_ih_l0.T``, ``w_hh = weight_hh_l0.T``, ``bias = bias_ih_l0 + bias_hh_l0``).

    Parameters
    ----------
    x : ndarray of shape (batch, time, n_in), float32 or float64; time >= 1
    w_ih : ndarray of shape (n_in, 4·hidden)
    w_hh : ndarray of shape (hidden, 4·hidden)
    bias : ndarray of shape (4·hidden,)
    h0, c0 : ndarrays of shape (batch, hidden), optional
        Initial hidden and cell states; zeros when None.
    out, cell_out : C-contiguous ndarrays of shape (batch, time, hidden), optional
        Receive h_t and c_t.
    gates_out : C-contiguous ndarray of shape (batch, time, 4·hidden), optional
        Receives the gates after their nonlinearity (the cache ``lstm_backward`` reads).
    work : C-contiguous 1-D ndarray of at least 4·batch·hidden elements, optional
        Scratch, so that repeated calls allocate nothing.

    Returns
    -------
    hs, cs : ndarrays of shape (batch, time, hidden)
    gates : ndarray of shape (batch, time, 4·hidden)
    """
    x = _gated_input("lstm_forward", x)
    w_ih, w_hh, n = _gated_weights("lstm_forward", x, w_ih, w_hh)
    bias = _gated_vector("lstm_forward", "bias", bias, 4 * n, x.dtype)
    m, n_steps, _ = x.shape
    h0 = _gated_state("lstm_forward", "h0", h0, (m, n), x.dtype)
    c0 = _gated_state("lstm_forward", "c0", c0, (m, n), x.dtype)
    inputs = dict(x=x, w_ih=w_ih, w_hh=w_hh, bias=bias, h0=h0, c0=c0)
    hs = V.output_array("out", out, (m, n_steps, n), x.dtype, inputs=inputs)
    cs = V.output_array("cell_out", cell_out, (m, n_steps, n), x.dtype, inputs=dict(inputs, out=hs))
    gates = V.output_array("gates_out", gates_out, (m, n_steps, 4 * n), x.dtype,
                           inputs=dict(inputs, out=hs, cell_out=cs))
    work = _gated_work("lstm_forward", work, GATED_WORK["lstm", "forward"] * m * n, x.dtype,
                       dict(inputs, out=hs, cell_out=cs, gates_out=gates))
    backend, n_threads = _backend.runtime()
    backend.lstm_forward(x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, work, n_threads)
    return hs, cs, gates


def lstm_backward(x, w_ih, w_hh, hs, cs, gates, grad_hs, h0=None, c0=None, truncate=None, *, dx_out=None,
                  dw_ih_out=None, dw_hh_out=None, dbias_out=None, dh0_out=None, dc0_out=None, dgates_out=None,
                  work=None):
    """Backpropagation through time for ``lstm_forward``, optionally truncated.

    With T steps and ``t0 = T - truncate``, gradients flow back from every step
    t >= t0 and stop there: the exact gradient when the states (h, c) before
    step t0 are held constant (``dh0 = dc0 = 0`` unless ``t0 == 0``). The
    gradient reaching the last cell state from above is taken as 0 (a loss on
    the outputs h_t). dx, dw_ih, dbias and dw_hh are single GEMMs / sums over
    all batch·time rows after the recurrence.

    Parameters
    ----------
    x, w_ih, w_hh, h0, c0 : as given to ``lstm_forward``
    hs, cs, gates : the outputs of ``lstm_forward``
    grad_hs : ndarray of shape (batch, time, hidden): d loss / d h_t
    truncate : int >= 1 or None
        Steps to backpropagate through; None (or >= time) is full BPTT.
    dx_out, dw_ih_out, dw_hh_out, dbias_out, dh0_out, dc0_out : optional outputs
        C-contiguous, of the shapes of x, w_ih, w_hh, bias, h0, c0.
    dgates_out : C-contiguous ndarray of shape (batch, time, 4·hidden), optional
        Receives d loss / d gate pre-activations.
    work : C-contiguous 1-D ndarray of at least 7·batch·hidden elements, optional

    Returns
    -------
    dx : ndarray of shape (batch, time, n_in)
    dw_ih : ndarray of shape (n_in, 4·hidden)
    dw_hh : ndarray of shape (hidden, 4·hidden)
    dbias : ndarray of shape (4·hidden,)
    dh0, dc0 : ndarrays of shape (batch, hidden)
    """
    kernel = "lstm_backward"
    x = _gated_input(kernel, x)
    w_ih, w_hh, n = _gated_weights(kernel, x, w_ih, w_hh)
    m, n_steps, k = x.shape
    dtype = x.dtype
    hs = _gated_cache(kernel, "hs", hs, (m, n_steps, n), dtype)
    cs = _gated_cache(kernel, "cs", cs, (m, n_steps, n), dtype)
    gates = _gated_cache(kernel, "gates", gates, (m, n_steps, 4 * n), dtype)
    grad_hs = _gated_cache(kernel, "grad_hs", grad_hs, (m, n_steps, n), dtype)
    h0 = _gated_state(kernel, "h0", h0, (m, n), dtype)
    c0 = _gated_state(kernel, "c0", c0, (m, n), dtype)
    truncate = _gated_truncate(truncate, n_steps)
    inputs = dict(x=x, w_ih=w_ih, w_hh=w_hh, hs=hs, cs=cs, gates=gates, grad_hs=grad_hs, h0=h0, c0=c0)
    outs = {}
    for name, buf, shape in (("dx_out", dx_out, x.shape), ("dw_ih_out", dw_ih_out, w_ih.shape),
                             ("dw_hh_out", dw_hh_out, w_hh.shape), ("dbias_out", dbias_out, (4 * n,)),
                             ("dh0_out", dh0_out, (m, n)), ("dc0_out", dc0_out, (m, n)),
                             ("dgates_out", dgates_out, gates.shape)):
        outs[name] = V.output_array(name, buf, shape, dtype, inputs=dict(inputs, **outs))
    dx, dw_ih, dw_hh, dbias, dh0, dc0, dgates = outs.values()
    work = _gated_work(kernel, work, GATED_WORK["lstm", "backward"] * m * n, dtype, dict(inputs, **outs))
    backend, n_threads = _backend.runtime()
    backend.lstm_backward(x, w_ih, w_hh, h0, c0, hs, cs, gates, grad_hs, truncate, dgates, dx, dw_ih, dw_hh,
                          dbias, dh0, dc0, work, n_threads)
    return dx, dw_ih, dw_hh, dbias, dh0, dc0


def gru_forward(x, w_ih, w_hh, bias, bias_hn, h0=None, *, out=None, gates_out=None, hn_out=None, work=None):
    """Run a GRU over whole sequences (``torch.nn.GRU``'s equations, gate order r, z, n).

    With ``x_t·w_ih + bias`` and ``h_{t-1}·w_hh`` split into blocks (r, z, n):
    ``r = σ(x_r + h_r)``, ``z = σ(x_z + h_z)``, ``hn_t = h_n + bias_hn``,
    ``n = tanh(x_n + r ⊙ hn_t)``, ``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}``. As in torch,
    the recurrent bias of the n gate stays inside the product with r: that is
    ``bias_hn``; ``bias = bias_ih_l0 + (bias_hh_l0[:2H], 0)`` (see the comment above).

    Parameters
    ----------
    x : ndarray of shape (batch, time, n_in), float32 or float64; time >= 1
    w_ih : ndarray of shape (n_in, 3·hidden)
    w_hh : ndarray of shape (hidden, 3·hidden)
    bias : ndarray of shape (3·hidden,)
    bias_hn : ndarray of shape (hidden,)
    h0 : ndarray of shape (batch, hidden), optional; zeros when None
    out : C-contiguous ndarray of shape (batch, time, hidden), optional: receives h_t
    gates_out : C-contiguous ndarray of shape (batch, time, 3·hidden), optional
        Receives r, z, n after their nonlinearity.
    hn_out : C-contiguous ndarray of shape (batch, time, hidden), optional: receives hn_t
        (gates and hn are the cache ``gru_backward`` reads).
    work : C-contiguous 1-D ndarray of at least 3·batch·hidden elements, optional

    Returns
    -------
    hs : ndarray of shape (batch, time, hidden)
    gates : ndarray of shape (batch, time, 3·hidden)
    hn : ndarray of shape (batch, time, hidden)
    """
    kernel = "gru_forward"
    x = _gated_input(kernel, x)
    w_ih, w_hh, n = _gated_weights(kernel, x, w_ih, w_hh)
    bias = _gated_vector(kernel, "bias", bias, 3 * n, x.dtype)
    bias_hn = _gated_vector(kernel, "bias_hn", bias_hn, n, x.dtype)
    m, n_steps, _ = x.shape
    h0 = _gated_state(kernel, "h0", h0, (m, n), x.dtype)
    inputs = dict(x=x, w_ih=w_ih, w_hh=w_hh, bias=bias, bias_hn=bias_hn, h0=h0)
    hs = V.output_array("out", out, (m, n_steps, n), x.dtype, inputs=inputs)
    gates = V.output_array("gates_out", gates_out, (m, n_steps, 3 * n), x.dtype, inputs=dict(inputs, out=hs))
    hn = V.output_array("hn_out", hn_out, (m, n_steps, n), x.dtype, inputs=dict(inputs, out=hs, gates_out=gates))
    work = _gated_work(kernel, work, GATED_WORK["gru", "forward"] * m * n, x.dtype,
                       dict(inputs, out=hs, gates_out=gates, hn_out=hn))
    backend, n_threads = _backend.runtime()
    backend.gru_forward(x, w_ih, w_hh, bias, bias_hn, h0, hs, gates, hn, work, n_threads)
    return hs, gates, hn


def gru_backward(x, w_ih, w_hh, hs, gates, hn, grad_hs, h0=None, truncate=None, *, dx_out=None, dw_ih_out=None,
                 dw_hh_out=None, dbias_out=None, dbias_hn_out=None, dh0_out=None, dgates_out=None, dghh_out=None,
                 work=None):
    """Backpropagation through time for ``gru_forward``, optionally truncated.

    Truncation as in ``lstm_backward``: gradients flow back from every step
    t >= t0 = T - truncate and stop there (``dh0 = 0`` unless ``t0 == 0``).

    Parameters
    ----------
    x, w_ih, w_hh, h0 : as given to ``gru_forward``
    hs, gates, hn : the outputs of ``gru_forward``
    grad_hs : ndarray of shape (batch, time, hidden): d loss / d h_t
    truncate : int >= 1 or None; None (or >= time) is full BPTT
    dx_out, dw_ih_out, dw_hh_out, dbias_out, dbias_hn_out, dh0_out : optional outputs
        C-contiguous, of the shapes of x, w_ih, w_hh, bias, bias_hn, h0.
    dgates_out, dghh_out : C-contiguous ndarrays of shape (batch, time, 3·hidden), optional
        Receive d loss / d (input-side, recurrent-side) gate pre-activations.
    work : C-contiguous 1-D ndarray of at least 5·batch·hidden elements, optional

    Returns
    -------
    dx : ndarray of shape (batch, time, n_in)
    dw_ih : ndarray of shape (n_in, 3·hidden)
    dw_hh : ndarray of shape (hidden, 3·hidden)
    dbias : ndarray of shape (3·hidden,)
    dbias_hn : ndarray of shape (hidden,)
    dh0 : ndarray of shape (batch, hidden)
    """
    kernel = "gru_backward"
    x = _gated_input(kernel, x)
    w_ih, w_hh, n = _gated_weights(kernel, x, w_ih, w_hh)
    m, n_steps, k = x.shape
    dtype = x.dtype
    hs = _gated_cache(kernel, "hs", hs, (m, n_steps, n), dtype)
    gates = _gated_cache(kernel, "gates", gates, (m, n_steps, 3 * n), dtype)
    hn = _gated_cache(kernel, "hn", hn, (m, n_steps, n), dtype)
    grad_hs = _gated_cache(kernel, "grad_hs", grad_hs, (m, n_steps, n), dtype)
    h0 = _gated_state(kernel, "h0", h0, (m, n), dtype)
    truncate = _gated_truncate(truncate, n_steps)
    inputs = dict(x=x, w_ih=w_ih, w_hh=w_hh, hs=hs, gates=gates, hn=hn, grad_hs=grad_hs, h0=h0)
    outs = {}
    for name, buf, shape in (("dx_out", dx_out, x.shape), ("dw_ih_out", dw_ih_out, w_ih.shape),
                             ("dw_hh_out", dw_hh_out, w_hh.shape), ("dbias_out", dbias_out, (3 * n,)),
                             ("dbias_hn_out", dbias_hn_out, (n,)), ("dh0_out", dh0_out, (m, n)),
                             ("dgates_out", dgates_out, gates.shape), ("dghh_out", dghh_out, gates.shape)):
        outs[name] = V.output_array(name, buf, shape, dtype, inputs=dict(inputs, **outs))
    dx, dw_ih, dw_hh, dbias, dbias_hn, dh0, dgates, dghh = outs.values()
    work = _gated_work(kernel, work, GATED_WORK["gru", "backward"] * m * n, dtype, dict(inputs, **outs))
    backend, n_threads = _backend.runtime()
    backend.gru_backward(x, w_ih, w_hh, h0, hs, gates, hn, grad_hs, truncate, dgates, dghh, dx, dw_ih, dw_hh,
                         dbias, dbias_hn, dh0, work, n_threads)
    return dx, dw_ih, dw_hh, dbias, dbias_hn, dh0
