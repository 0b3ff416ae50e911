"""Plain NumPy reference of the kernel contract: the executable specification.

Every compiled backend (``fastbp._kernels.numba``, ``fastbp._kernels.cython``)
exports these same names with these same signatures, and the tests compare each
of them with this module. Arguments arrive validated by ``fastbp.kernels``; the
caller allocates every output and the kernels only write into it.

Contract shared by all backends
-------------------------------
* dtypes are float32 or float64, the same for every floating argument of a call.
* ``gemm`` operands may have any strides (transposes are passed as views);
  every other 2-D array is C-contiguous.
* ``n_threads`` is the number of threads a parallel kernel may use. Results do
  not depend on it, bit for bit: reductions run in a fixed order.
* An output may alias an input only where a docstring says so.
"""

import math

import numpy as np

from . import registry as R

NAME = "reference"

# Every backend exports these names with these signatures (tests/test_backend.py checks it).
KERNELS = (
    "gemm",
    "activation_forward",
    "activation_backward",
    "dense_forward",
    "dense_backward",
    "mse",
    "softmax_cross_entropy",
    "softmax_cross_entropy_index",
    "binary_cross_entropy",
    "sgd_step",
    "rmsprop_step",
    "adam_step",
    "all_finite",
    "mlp_loss_and_grad",
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
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
)


def gemm(a, b, c, alpha, beta, n_threads):
    """c := alpha*a·b + beta*c.  IN a (m, k), b (k, n); IN/OUT c (m, n). c is not read when beta == 0."""
    product = alpha * (a @ b) if a.shape[1] else np.zeros(c.shape, c.dtype)
    if beta == 0.0:
        c[...] = product
    else:
        c[...] = product + beta * c


# ---------------------------------------------------------------- activations
def _sigmoid(z):
    # exp of a non-positive argument only: no overflow for any finite z.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype)


def _erf(x):
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x)


def _activation(act, z):
    if act == R.IDENTITY:
        return z.copy()
    if act == R.STEP:
        return (z > 0).astype(z.dtype)
    if act == R.HARDTANH:
        return np.clip(z, -1.0, 1.0)
    if act == R.SIGMOID:
        return _sigmoid(z)
    if act == R.TANH:
        return np.tanh(z)
    if act == R.RELU:
        return np.maximum(z, 0)
    if act == R.LEAKY_RELU:
        return np.where(z > 0, z, z * z.dtype.type(R.LEAKY_RELU_SLOPE))
    if act == R.ELU:
        return np.where(z > 0, z, R.ELU_ALPHA * np.expm1(np.minimum(z, 0))).astype(z.dtype)
    if act == R.SOFTPLUS:
        return (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))).astype(z.dtype)
    if act == R.GELU:
        return (0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))).astype(z.dtype)
    if act == R.SOFTMAX:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown activation id {act}")


def _derivative(act, z, a):
    """act'(z), computed from the output a except for gelu, which needs z."""
    if act == R.IDENTITY:
        return np.ones_like(a)
    if act == R.STEP:
        return np.zeros_like(a)  # zero almost everywhere; undefined at 0, taken as 0
    if act == R.HARDTANH:
        return ((a > -1) & (a < 1)).astype(a.dtype)
    if act == R.SIGMOID:
        return a * (1 - a)
    if act == R.TANH:
        return 1 - a * a
    if act == R.RELU:
        return (a > 0).astype(a.dtype)
    if act == R.LEAKY_RELU:
        return np.where(a > 0, 1.0, R.LEAKY_RELU_SLOPE).astype(a.dtype)
    if act == R.ELU:
        return np.where(a > 0, 1.0, a + R.ELU_ALPHA).astype(a.dtype)
    if act == R.SOFTPLUS:
        return (-np.expm1(-a)).astype(a.dtype)  # sigmoid(z) = 1 - exp(-softplus(z))
    if act == R.GELU:
        pdf = np.exp(-0.5 * z.astype(np.float64) ** 2) / np.sqrt(2 * np.pi)
        cdf = 0.5 * (1.0 + _erf(z / np.sqrt(2.0)))
        return (cdf + z * pdf).astype(z.dtype)
    raise ValueError(f"activation id {act} has no element-wise derivative")


def activation_forward(act, z, a, n_threads):
    """a := act(z), row-wise for softmax.  IN z (m, n); OUT a (m, n), may alias z."""
    a[...] = _activation(act, z)


def activation_backward(act, z, a, grad_a, grad_z, n_threads):
    """grad_z := grad_a ⊙ act'(z); for softmax the row Jacobian-vector product a ⊙ (g - Σ g⊙a).

    IN z, a (m, n): the pre-activation and the output; z is read only by gelu,
    so z may be ``a`` itself for every other activation. IN grad_a (m, n).
    OUT grad_z (m, n), may alias grad_a.
    """
    if act == R.SOFTMAX:
        dot = np.sum(grad_a * a, axis=1, keepdims=True)
        grad_z[...] = a * (grad_a - dot)
    else:
        grad_z[...] = grad_a * _derivative(act, z, a)


# ---------------------------------------------------------------- dense layer
def dense_forward(x, w, bias, act, z, a, n_threads):
    """z := x·w + bias; a := act(z).  IN x (m, k), w (k, n), bias (n,); OUT z, a (m, n), may alias."""
    pre = x @ w + bias
    z[...] = pre
    a[...] = _activation(act, pre)


def dense_backward(x, w, z, a, grad_a, act, grad_z, dw, db, dx, compute_dx, accumulate, n_threads):
    """Backward pass of a dense layer.

    grad_z := grad_a ⊙ act'(z)  (grad_z may alias grad_a)
    dw := xᵀ·grad_z  (+ dw if accumulate);  db := Σ_rows grad_z  (+ db if accumulate)
    dx := grad_z·wᵀ  when compute_dx (dx is not touched otherwise)
    IN x (m, k), w (k, n), z, a, grad_a (m, n); OUT grad_z (m, n), dw (k, n), db (n,), dx (m, k).
    """
    activation_backward(act, z, a, grad_a, grad_z, n_threads)
    beta = 1.0 if accumulate else 0.0
    gemm(x.T, grad_z, dw, 1.0, beta, n_threads)
    db[...] = grad_z.sum(axis=0) + (db if accumulate else 0)
    if compute_dx:
        gemm(grad_z, w.T, dx, 1.0, 0.0, n_threads)


# ---------------------------------------------------------------- losses
# Each loss returns its value as a Python float (accumulated in float64) and
# writes d loss / d output into grad. Definitions follow PyTorch.
def mse(output, target, grad, n_threads):
    """mean((output - target)²); grad := 2(output - target)/N."""
    diff = output.astype(np.float64) - target
    grad[...] = 2.0 * diff / diff.size
    return float(np.mean(diff * diff))


def _log_softmax(logits):
    z = logits.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, target, grad, n_threads):
    """Cross-entropy of softmax(logits) with probability rows target, mean over the batch.

    loss = -Σ_ij target_ij·log softmax(logits)_ij / m;
    grad := (softmax(logits)·Σ_j target_ij - target) / m.
    """
    m = logits.shape[0]
    logp = _log_softmax(logits)
    grad[...] = (np.exp(logp) * target.sum(axis=1, keepdims=True) - target) / m
    return float(-(target * logp).sum() / m)


def softmax_cross_entropy_index(logits, labels, grad, n_threads):
    """As softmax_cross_entropy with class indices labels (m,) int64 in [0, n_classes)."""
    m = logits.shape[0]
    logp = _log_softmax(logits)
    rows = np.arange(m)
    p = np.exp(logp)
    p[rows, labels] -= 1.0
    grad[...] = p / m
    return float(-logp[rows, labels].sum() / m)


def binary_cross_entropy(logits, target, grad, n_threads):
    """Binary cross-entropy from logits, mean over all elements (PyTorch's BCEWithLogitsLoss).

    loss = mean(max(z, 0) - z·y + log(1 + exp(-|z|)));  grad := (sigmoid(z) - y)/N.
    """
    z = logits.astype(np.float64)
    grad[...] = (_sigmoid(z) - target) / z.size
    return float(np.mean(np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))))


# ---------------------------------------------------------------- optimizers
# One call updates every parameter of a network at once: the network keeps its
# parameters, gradients and optimizer state in flat 1-D buffers (the layers'
# arrays are views into them). Update rules are torch.optim's, in the dtype of
# the parameters; hyperparameters arrive as Python floats.
# Every step is checked: when the gradient, a new parameter or a new state
# value is NaN or infinite, nothing is written and the step returns False
# (True when it was applied). The compiled backends compute the update twice,
# once to check it and once to write it, which costs less than the copy of the
# parameters that undoing it would need.
def _apply_if_finite(grad, *updates):
    """Write each (buffer, new values) pair if grad and every new value are finite; return whether."""
    if not (np.isfinite(grad).all() and all(np.isfinite(new).all() for _, new in updates)):
        return False
    for buffer, new in updates:
        buffer[...] = new
    return True


def _add_penalty(g, param, fisher, anchor, lam):
    """g + lam·(fisher·(param - anchor)): elastic weight consolidation's penalty gradient, which
    every step takes optionally (fisher None: g unchanged), after the weight decay."""
    if fisher is None:
        return g
    return g + param.dtype.type(lam) * (fisher * (param - anchor))


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay, n_threads, fisher=None, anchor=None,
             lam=0.0):
    """g = grad + wd·p; v := μ·v + g; p -= lr·(g + μ·v if nesterov else v)  (v unused when μ == 0).

    IN grad (n,); IN/OUT param (n,), velocity (n,). Returns whether the step was applied
    (False, with nothing written, if grad or a new value is not finite).
    """
    g = grad + weight_decay * param if weight_decay else grad.copy()
    g = _add_penalty(g, param, fisher, anchor, lam)
    updates = []
    if momentum:
        v = velocity * momentum
        v += g
        updates.append((velocity, v))
        g = g + momentum * v if nesterov else v
    return _apply_if_finite(grad, (param, param - lr * g), *updates)


def rmsprop_step(param, grad, square_avg, lr, rho, eps, weight_decay, n_threads, fisher=None, anchor=None,
                 lam=0.0):
    """g = grad + wd·p; s := ρ·s + (1-ρ)·g²; p -= lr·g / (√s + eps).  IN grad; IN/OUT param, square_avg.

    Returns whether the step was applied (see sgd_step).
    """
    g = grad + weight_decay * param if weight_decay else grad
    g = _add_penalty(g, param, fisher, anchor, lam)
    s = square_avg * rho
    s += (1 - rho) * g * g
    return _apply_if_finite(grad, (param, param - lr * g / (np.sqrt(s) + eps)), (square_avg, s))


def adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, n_threads, fisher=None,
              anchor=None, lam=0.0):
    """Adam with bias correction at step t >= 1 (torch.optim.Adam, amsgrad=False).

    g = grad + wd·p; m := β1·m + (1-β1)·g; v := β2·v + (1-β2)·g²;
    p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps).   IN grad; IN/OUT param, exp_avg, exp_avg_sq.
    Returns whether the step was applied (see sgd_step).
    """
    g = grad + weight_decay * param if weight_decay else grad
    g = _add_penalty(g, param, fisher, anchor, lam)
    m = exp_avg * beta1
    m += (1 - beta1) * g
    v = exp_avg_sq * beta2
    v += (1 - beta2) * g * g
    # In the dtype of the parameters, as torch computes it (np.sqrt of a Python
    # float would be a float64 scalar and promote the whole denominator).
    dtype = param.dtype.type
    step_size = dtype(lr / (1 - beta1**step))
    denom = np.sqrt(v) / dtype(math.sqrt(1 - beta2**step)) + dtype(eps)
    return _apply_if_finite(grad, (param, param - step_size * m / denom), (exp_avg, m), (exp_avg_sq, v))


def all_finite(x, n_threads):
    """Whether every element of x is finite (no NaN, no ±inf).  IN x (n,) C-contiguous."""
    return bool(np.isfinite(x).all())


# ---------------------------------------------------------------- whole network
def mlp_layout(widths, activations, m):
    """Where mlp_loss_and_grad finds each layer in its flat buffers.

    Returns one tuple per layer l = 1..L: (w, b, a, z), the offsets of W_l and b_l
    in params/grads, of a_l (and δ_l) in outputs/deltas, and of z_l in
    preactivations, or -1 when z_l is a_l itself (its activation's derivative
    comes from a_l); followed by the three buffer lengths (n_params,
    n_outputs, n_preactivations).
    """
    offsets, w, a, z = [], 0, 0, 0
    for l, act in enumerate(activations):
        n_in, n_out = int(widths[l]), int(widths[l + 1])
        keeps_z = R.ACTIVATIONS[act] in R.NEEDS_PREACTIVATION
        offsets.append((w, w + n_in * n_out, a, z if keeps_z else -1))
        w += n_in * n_out + n_out
        a += m * n_out
        z += m * n_out if keeps_z else 0
    return offsets, (w, a, z)


def mlp_loss_and_grad(x, target, loss, widths, activations, params, grads, outputs, preactivations,
                      deltas, n_threads):
    """Loss and every gradient of a stack of dense layers in one call: forward, loss, backward.

    Layer l = 1..L maps widths[l-1] features to widths[l] with activation id
    activations[l-1]: z_l = a_{l-1}·W_l + b_l, a_l = act(z_l), a_0 = x; the loss
    (id ``loss`` in registry.LOSS_KERNELS) compares a_L with target. Then
    δ_l = d loss/d z_l from l = L down to 1, dW_l = a_{l-1}ᵀ·δ_l, db_l = Σ_rows δ_l
    (δ_1·W_1ᵀ, the gradient of x, is not computed). Each step is the kernel of
    the same name (dense_forward, the loss, dense_backward), so results equal
    the layer-by-layer calls bit for bit.
    Flat buffers, C order, layer after layer (offsets from ``mlp_layout``):
    params, grads (P,): W_1 (n_0, n_1), b_1 (n_1,), W_2, b_2, ...;
    outputs, deltas (Σ m·n_l,): a_l and δ_l, each (m, n_l);
    preactivations: z_l of the layers whose derivative needs it (gelu), each (m, n_l).
    IN x (m, n_0), target (m, n_L) or (m,) int64 labels, widths (L+1,) and
    activations (L,) int64, params; OUT grads, outputs, preactivations, deltas.
    Returns the loss.
    """
    m = x.shape[0]
    layout, _ = mlp_layout(widths, activations, m)
    layers = []
    for l, (w, b, a, z) in enumerate(layout):
        n_in, n_out = int(widths[l]), int(widths[l + 1])
        a_l = outputs[a:a + m * n_out].reshape(m, n_out)
        layers.append((n_in, n_out, int(activations[l]),
                       params[w:b].reshape(n_in, n_out), params[b:b + n_out],
                       grads[w:b].reshape(n_in, n_out), grads[b:b + n_out],
                       preactivations[z:z + m * n_out].reshape(m, n_out) if z >= 0 else a_l,
                       a_l, deltas[a:a + m * n_out].reshape(m, n_out)))
    inputs = [x] + [layer[8] for layer in layers[:-1]]
    for x_l, (_, _, act, w_l, b_l, _, _, z_l, a_l, _) in zip(inputs, layers):
        dense_forward(x_l, w_l, b_l, act, z_l, a_l, n_threads)
    last = layers[-1]
    value = globals()[R.LOSS_KERNELS[loss]](last[8], target, last[9], n_threads)
    for l in range(len(layers) - 1, -1, -1):
        _, _, act, w_l, _, dw_l, db_l, z_l, a_l, delta_l = layers[l]
        dx = layers[l - 1][9] if l else None
        dense_backward(inputs[l], w_l, z_l, a_l, delta_l, act, delta_l, dw_l, db_l, dx, l > 0, False, n_threads)
    return value


# ---------------------------------------------------------------- recurrent layers
# Layout: sequences are batch-major, (batch, time, hidden), C-contiguous; the
# input projection x_proj = x·Wx + b is one GEMM over batch·time rows done by
# the caller (dense_forward), so the time loop only adds h_{t-1}·Wh. The
# activation is element-wise with a derivative taken from its output
# (registry.RECURRENT_ACTIVATIONS: not softmax, not gelu).
def rnn_forward(x_proj, wh, act, hs, n_threads):
    """hs[:, t] := act(x_proj[:, t] + hs[:, t-1]·wh) for t = 0..T-1, from h_{-1} = 0.

    IN x_proj (batch, T, hidden), wh (hidden, hidden); OUT hs (batch, T, hidden), may be x_proj.
    """
    h = np.zeros((x_proj.shape[0], x_proj.shape[2]), x_proj.dtype)
    for t in range(x_proj.shape[1]):
        h = _activation(act, x_proj[:, t] + h @ wh)
        hs[:, t] = h


def rnn_backward(hs, wh, act, grad_hs, truncate, delta, dwh, n_threads):
    """Backpropagation through time over the last ``truncate`` steps.

    With T steps and t0 = T - truncate (1 <= truncate <= T):
    δ_t := (grad_hs[:, t] + δ_{t+1}·whᵀ) ⊙ act'(h_t) for t = T-1 down to t0 (δ_T = 0),
    δ_t := 0 for t < t0;  dwh := Σ_{t>=1} h_{t-1}ᵀ·δ_t.
    This is the exact gradient when the states h_t, t < t0, are taken as
    constants: the weights used by the steps before t0 are not differentiated.
    The caller finishes with dwx = xᵀ·δ, db = Σ δ, dx = δ·wxᵀ over batch·T rows.
    IN hs, grad_hs (batch, T, hidden), wh (hidden, hidden);
    OUT delta (batch, T, hidden), may be grad_hs; OUT dwh (hidden, hidden).
    """
    n_steps = hs.shape[1]
    t0 = n_steps - truncate
    grads = grad_hs.copy()
    carry = np.zeros_like(grads[:, 0])
    delta[:, :t0] = 0
    for t in range(n_steps - 1, t0 - 1, -1):
        d = (grads[:, t] + carry) * _derivative(act, None, hs[:, t])
        delta[:, t] = d
        carry = d @ wh.T
    dwh[...] = np.einsum("btj,btk->jk", hs[:, :-1], delta[:, 1:]) if n_steps > 1 else 0


def fixed_point_forward(x_proj, wh, act, tol, max_iter, h, scratch, n_threads):
    """Relax h := act(x_proj + h·wh) from h = 0 until max|Δh| <= tol; returns (iterations, residual).

    Stops after at most max_iter updates; the caller checks residual <= tol.
    IN x_proj (m, n), wh (n, n); OUT h (m, n): the last iterate; scratch (m, n).
    """
    h[...] = 0
    residual = np.inf
    for it in range(1, max_iter + 1):
        new = _activation(act, x_proj + h @ wh)
        residual = float(np.max(np.abs(new - h))) if h.size else 0.0
        h[...] = new
        if residual <= tol:
            return it, residual
    return max_iter, residual


def fixed_point_adjoint(h, wh, act, grad_h, tol, max_iter, delta, scratch, n_threads):
    """Solve v = g + (v ⊙ D)·whᵀ, D = act'(h), by iteration from v = g; delta := v ⊙ D.

    Almeida–Pineda recurrent backpropagation at the fixed point h = act(x_proj + h·wh).
    Stops when max|Δv| <= tol or after max_iter updates; returns (iterations, residual).
    IN h, grad_h (m, n), wh (n, n); OUT delta (m, n); scratch (m, n).
    """
    d = _derivative(act, None, h)
    v = grad_h.copy()
    residual = 0.0 if max_iter else np.inf
    it = 0
    for it in range(1, max_iter + 1):
        new = grad_h + (v * d) @ wh.T
        residual = float(np.max(np.abs(new - v))) if v.size else 0.0
        v = new
        if residual <= tol:
            break
    delta[...] = v * d
    return it, residual


# ---------------------------------------------------------------- convolution and pooling
# Layout: images are channels-last, (n, height, width, channels), C-contiguous;
# convolution weights are (kh, kw, c_in, c_out), so that w.reshape(kh*kw*c_in,
# c_out) is the GEMM's B and a row of the image-to-column matrix holds one
# output pixel's receptive field in (kh, kw, c_in) order. ``geometry`` is
# (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w) for a
# convolution and (pool_h, pool_w, stride_h, stride_w, pad_top, pad_left) for a
# pooling; the bottom and right padding follow from the output's shape, which
# the caller (fastbp.kernels) computes: out = (in + pads - dilation*(k-1) - 1)
# // stride + 1. Padded pixels are zeros for a convolution and an average,
# -inf for a max.
def _windows(x, kh, kw, geometry, out_h, out_w, fill=0.0):
    """cols (n, out_h, out_w, kh, kw, c): each output pixel's receptive field, padding filled with ``fill``."""
    sh, sw, pt, pl, dh, dw = geometry
    n, h, w, c = x.shape
    rows = (out_h - 1) * sh + (kh - 1) * dh + 1  # padded extent the windows reach
    cols_ = (out_w - 1) * sw + (kw - 1) * dw + 1
    xp = np.full((n, max(rows, pt + h), max(cols_, pl + w), c), fill, x.dtype)
    xp[:, pt:pt + h, pl:pl + w] = x
    out = np.empty((n, out_h, out_w, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j] = xp[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw]
    return out


def _scatter_windows(cols, x_shape, geometry):
    """The adjoint of _windows (col2im): dx (x_shape) := Σ of each window's values at its pixels."""
    sh, sw, pt, pl, dh, dw = geometry
    n, out_h, out_w, kh, kw, c = cols.shape
    h, w = x_shape[1], x_shape[2]
    rows = (out_h - 1) * sh + (kh - 1) * dh + 1
    cols_ = (out_w - 1) * sw + (kw - 1) * dw + 1
    dxp = np.zeros((n, max(rows, pt + h), max(cols_, pl + w), c), cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw] += cols[:, :, :, i, j]
    return dxp[:, pt:pt + h, pl:pl + w]


def conv2d_forward(x, w, bias, geometry, act, z, a, n_threads):
    """z := conv(x, w) + bias; a := act(z) (softmax over the channels of each pixel).

    z[n, i, j, f] = Σ_{p, q, c} x[n, i·sh - pt + p·dh, j·sw - pl + q·dw, c]·w[p, q, c, f] + bias[f]
    (pixels outside x are zeros). IN x (n, h, w, c_in), w (kh, kw, c_in, c_out),
    bias (c_out,); OUT z, a (n, out_h, out_w, c_out), may be the same array.
    """
    kh, kw, c_in, c_out = w.shape
    n, out_h, out_w, _ = z.shape
    cols = _windows(x, kh, kw, geometry, out_h, out_w).reshape(n * out_h * out_w, kh * kw * c_in)
    pre = cols @ w.reshape(-1, c_out) + bias
    z[...] = pre.reshape(z.shape)
    a[...] = _activation(act, pre).reshape(a.shape)


def conv2d_backward(x, w, z, a, grad_a, act, geometry, grad_z, dw, db, dx, compute_dx, accumulate, n_threads):
    """Backward pass of conv2d_forward, as dense_backward with x's windows as the rows.

    grad_z := grad_a ⊙ act'(z) (may alias grad_a); dw := colsᵀ·grad_z (+ dw if
    accumulate); db := Σ_pixels grad_z (+ db); dx := col2im(grad_z·wᵀ) when
    compute_dx (untouched otherwise). IN x (n, h, w, c_in), w (kh, kw, c_in, c_out),
    z, a, grad_a (n, out_h, out_w, c_out); OUT grad_z like z, dw like w, db (c_out,), dx like x.
    """
    kh, kw, c_in, c_out = w.shape
    n, out_h, out_w, _ = z.shape
    m = n * out_h * out_w
    activation_backward(act, z.reshape(m, c_out), a.reshape(m, c_out), grad_a.reshape(m, c_out),
                        grad_z.reshape(m, c_out), n_threads)
    g = grad_z.reshape(m, c_out)
    cols = _windows(x, kh, kw, geometry, out_h, out_w).reshape(m, kh * kw * c_in)
    dw[...] = (cols.T @ g).reshape(w.shape) + (dw if accumulate else 0)
    db[...] = g.sum(axis=0) + (db if accumulate else 0)
    if compute_dx:
        dcols = (g @ w.reshape(-1, c_out).T).reshape(n, out_h, out_w, kh, kw, c_in)
        dx[...] = _scatter_windows(dcols, x.shape, geometry)


def _pool_windows(x, geometry, out_h, out_w, fill):
    ph, pw, sh, sw, pt, pl = geometry
    return _windows(x, ph, pw, (sh, sw, pt, pl, 1, 1), out_h, out_w, fill)


def max_pool2d_forward(x, geometry, out, argmax, n_threads):
    """out := the max of each window (padding is -inf); argmax := where it is, as row·width + column of x.

    Ties and NaN as torch.nn.functional.max_pool2d: the first maximum in row-major
    scan order wins, a NaN wins over any number (the last NaN of the window).
    IN x (n, h, w, c); OUT out, argmax (int64) (n, out_h, out_w, c).
    """
    ph, pw, sh, sw, pt, pl = geometry
    n, out_h, out_w, c = out.shape
    width = x.shape[2]
    win = _pool_windows(x, geometry, out_h, out_w, -np.inf).reshape(n, out_h, out_w, ph * pw, c)
    # Flat index in x of each window position (padding positions get -1, never chosen:
    # every window holds a pixel of x, and -inf never beats one).
    rows = np.arange(out_h)[:, None] * sh - pt + np.arange(ph)[None, :]
    cols_ = np.arange(out_w)[:, None] * sw - pl + np.arange(pw)[None, :]
    inside = ((rows >= 0) & (rows < x.shape[1]))[:, None, :, None] & ((cols_ >= 0) & (cols_ < width))[None, :, None, :]
    flat = np.where(inside, rows[:, None, :, None] * width + cols_[None, :, None, :], -1).reshape(out_h, out_w, ph * pw)
    best_val = np.full((n, out_h, out_w, c), -np.inf, x.dtype)
    # Initial position: the window's first pixel of x (torch starts there too).
    first = np.argmax(flat >= 0, axis=2)
    best_idx = np.broadcast_to(np.take_along_axis(flat, first[..., None], 2)[None], (n, out_h, out_w, 1))
    best_idx = np.repeat(best_idx, c, axis=3).astype(np.int64)
    for t in range(ph * pw):
        v = win[:, :, :, t]
        take = (v > best_val) | np.isnan(v)
        best_val = np.where(take, v, best_val)
        best_idx = np.where(take, flat[None, :, :, t, None], best_idx)
    out[...] = best_val
    argmax[...] = best_idx


def max_pool2d_backward(grad_out, argmax, dx, n_threads):
    """dx := 0; dx[n, argmax[n, i, j, c], c] += grad_out[n, i, j, c] (over i, j in row-major order).

    IN grad_out, argmax (n, out_h, out_w, c); OUT dx (n, h, w, c).
    """
    n, h, w, c = dx.shape
    flat = np.zeros((n, h * w, c), dx.dtype)
    m = argmax.shape[1] * argmax.shape[2]
    idx = argmax.reshape(n, m, c)
    g = grad_out.reshape(n, m, c)
    for b in range(n):
        for ch in range(c):
            np.add.at(flat[b, :, ch], idx[b, :, ch], g[b, :, ch])
    dx[...] = flat.reshape(dx.shape)


def _avg_divisors(x_shape, geometry, out_h, out_w, count_include_pad):
    """(out_h, out_w) divisors: ph·pw, or the number of pixels of x in the window."""
    ph, pw, sh, sw, pt, pl = geometry
    if count_include_pad:
        return np.full((out_h, out_w), ph * pw, np.int64)
    rows = np.arange(out_h) * sh - pt
    cols_ = np.arange(out_w) * sw - pl
    nr = np.minimum(rows + ph, x_shape[1]) - np.maximum(rows, 0)
    nc = np.minimum(cols_ + pw, x_shape[2]) - np.maximum(cols_, 0)
    return nr[:, None] * nc[None, :]


def avg_pool2d_forward(x, geometry, count_include_pad, out, n_threads):
    """out := the mean of each window, padding counted as zeros when count_include_pad (torch's default).

    IN x (n, h, w, c); OUT out (n, out_h, out_w, c).
    """
    ph, pw = geometry[:2]
    n, out_h, out_w, c = out.shape
    win = _pool_windows(x, geometry, out_h, out_w, 0.0)
    div = _avg_divisors(x.shape, geometry, out_h, out_w, count_include_pad)
    out[...] = win.sum(axis=(3, 4)) / div[None, :, :, None].astype(x.dtype)


def avg_pool2d_backward(grad_out, geometry, count_include_pad, dx, n_threads):
    """dx := the adjoint of avg_pool2d_forward applied to grad_out.  IN grad_out (n, out_h, out_w, c); OUT dx (n, h, w, c)."""
    ph, pw, sh, sw, pt, pl = geometry
    n, out_h, out_w, c = grad_out.shape
    div = _avg_divisors(dx.shape, geometry, out_h, out_w, count_include_pad)
    g = grad_out / div[None, :, :, None].astype(dx.dtype)
    cols = np.broadcast_to(g[:, :, :, None, None, :], (n, out_h, out_w, ph, pw, c))
    dx[...] = _scatter_windows(np.ascontiguousarray(cols), dx.shape, (sh, sw, pt, pl, 1, 1))


def global_avg_pool2d_forward(x, out, n_threads):
    """out[n, c] := mean over the pixels of x[n, :, :, c].  IN x (n, h, w, c); OUT out (n, c)."""
    n, h, w, c = x.shape
    out[...] = x.reshape(n, h * w, c).sum(axis=1) / x.dtype.type(h * w)


def global_avg_pool2d_backward(grad_out, dx, n_threads):
    """dx[n, :, :, c] := grad_out[n, c] / (h·w).  IN grad_out (n, c); OUT dx (n, h, w, c)."""
    n, h, w, c = dx.shape
    dx[...] = (grad_out / dx.dtype.type(h * w))[:, None, None, :]


# ---------------------------------------------------------------- gated recurrent layers
# PyTorch's gate equations and gate order, with fastbp's x·W layout (the
# transposes of torch's weight_ih_l0 / weight_hh_l0; see fastbp.kernels.lstm_forward).
# Sequences are batch-major (batch, T, ·), C-contiguous. The input projection
# x·w_ih + bias of all batch·T rows is one GEMM before the time loop, and
# dx, dw_ih, dbias (and dw_hh) single GEMMs/sums over all rows after it; the
# time loop does the recurrent product and one element-wise pass per step.
# ``work`` is caller-provided scratch (its length in GATED_WORK, in units of
# batch·hidden); kernels leave its content unspecified.
GATED_WORK = {("lstm", "forward"): 4, ("lstm", "backward"): 7, ("gru", "forward"): 3, ("gru", "backward"): 5}


def _truncation_start(n_steps, truncate):
    """t0: the first step BPTT goes back to (1 <= truncate <= T; states before t0 are constants)."""
    return n_steps - truncate


def lstm_forward(x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, work, n_threads):
    """LSTM over whole sequences (torch.nn.LSTM's equations, gate order i, f, g, o).

    gates_t = x_t·w_ih + bias + h_{t-1}·w_hh, split into four (batch, hidden) blocks;
    i, f, o = σ(·), g = tanh(·); c_t = f ⊙ c_{t-1} + i ⊙ g; h_t = o ⊙ tanh(c_t), from (h0, c0).
    IN x (batch, T, n_in), w_ih (n_in, 4H), w_hh (H, 4H), bias (4H,), h0, c0 (batch, H);
    OUT hs, cs (batch, T, H): h_t, c_t; gates (batch, T, 4H): i, f, g, o after their
    nonlinearity (the cache of lstm_backward); work (4·batch·H,) scratch.
    """
    m, n_steps, _ = x.shape
    n = h0.shape[1]
    pre = x @ w_ih + bias
    h, c = h0, c0
    for t in range(n_steps):
        z = pre[:, t] + h @ w_hh
        i, f, g, o = (z[:, k * n:(k + 1) * n] for k in range(4))
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)
        cs[:, t] = c
        hs[:, t] = h


def lstm_backward(x, w_ih, w_hh, h0, c0, hs, cs, gates, grad_hs, truncate, dgates, dx, dw_ih, dw_hh, dbias,
                  dh0, dc0, work, n_threads):
    """Backpropagation through time for lstm_forward over the last ``truncate`` steps.

    With t0 = T - truncate (1 <= truncate <= T), from t = T-1 down to t0, with the
    carries dh = dc = 0 at t = T:  dh_t = grad_hs_t + dgates_{t+1}·w_hhᵀ;
    dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o_t ⊙ (1 - tanh²c_t); dgates_t = (dc_t⊙g_t⊙i_t(1-i_t),
    dc_t⊙c_{t-1}⊙f_t(1-f_t), dc_t⊙i_t⊙(1-g_t²), dh_t⊙tanh(c_t)⊙o_t(1-o_t)); dgates_t = 0 for t < t0.
    Then over all batch·T rows: dx = dgates·w_ihᵀ, dw_ih = xᵀ·dgates, dbias = Σ dgates,
    dw_hh = Σ_t h_{t-1}ᵀ·dgates_t (h_{-1} = h0); dh0 = dgates_0·w_hhᵀ, dc0 = dc_0 ⊙ f_0 when
    t0 = 0, else 0. This is the exact gradient when the states (h, c) before step
    t0 are taken as constants. The gradient of c_{T-1} from above is taken as 0.
    IN x, w_ih, w_hh, h0, c0 as given to lstm_forward; hs, cs, gates its outputs; grad_hs (batch, T, H).
    OUT dgates (batch, T, 4H): d loss / d gate pre-activations; dx (batch, T, n_in);
    dw_ih, dw_hh, dbias, dh0, dc0 of the shapes of their parameters; work (7·batch·H,) scratch.
    """
    m, n_steps, _ = x.shape
    n = h0.shape[1]
    t0 = _truncation_start(n_steps, truncate)
    dgates[...] = 0
    dh_next = np.zeros((m, n), x.dtype)
    dc_next = np.zeros((m, n), x.dtype)
    for t in range(n_steps - 1, t0 - 1, -1):
        i, f, g, o = (gates[:, t, k * n:(k + 1) * n] for k in range(4))
        c_prev = cs[:, t - 1] if t else c0
        tanh_c = np.tanh(cs[:, t])
        dh = grad_hs[:, t] + dh_next
        dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
        dgates[:, t] = np.concatenate([dc * g * (i * (1 - i)), dc * c_prev * (f * (1 - f)),
                                       dc * i * (1 - g * g), dh * tanh_c * (o * (1 - o))], axis=1)
        dh_next = dgates[:, t] @ w_hh.T
        dc_next = dc * f
    if t0 == 0:
        dh0[...], dc0[...] = dh_next, dc_next
    else:
        dh0[...], dc0[...] = 0, 0
    flat = dgates.reshape(m * n_steps, 4 * n)
    dx[...] = (flat @ w_ih.T).reshape(dx.shape)
    dw_ih[...] = x.reshape(m * n_steps, -1).T @ flat
    dbias[...] = flat.sum(axis=0)
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1).reshape(m * n_steps, n)
    dw_hh[...] = h_prev.T @ flat


def gru_forward(x, w_ih, w_hh, bias, bias_hn, h0, hs, gates, hn, work, n_threads):
    """GRU over whole sequences (torch.nn.GRU's equations, gate order r, z, n).

    With x_t·w_ih + bias and h_{t-1}·w_hh split into (r, z, n) blocks:
    r = σ(xr + hr), z = σ(xz + hz), hn_t = h_{t-1}·w_hn + bias_hn,
    n = tanh(xn + r ⊙ hn_t), h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}, from h0. torch's b_hn
    stays inside the r product: it is ``bias_hn``; ``bias`` is b_ih + (b_hr, b_hz, 0).
    IN x (batch, T, n_in), w_ih (n_in, 3H), w_hh (H, 3H), bias (3H,), bias_hn (H,), h0 (batch, H);
    OUT hs (batch, T, H); gates (batch, T, 3H): r, z, n after their nonlinearity;
    hn (batch, T, H): hn_t (gates and hn are the cache of gru_backward); work (3·batch·H,) scratch.
    """
    m, n_steps, _ = x.shape
    n = h0.shape[1]
    pre = x @ w_ih + bias
    h = h0
    for t in range(n_steps):
        rec = h @ w_hh
        r = _sigmoid(pre[:, t, :n] + rec[:, :n])
        z = _sigmoid(pre[:, t, n:2 * n] + rec[:, n:2 * n])
        hn_t = rec[:, 2 * n:] + bias_hn
        cand = np.tanh(pre[:, t, 2 * n:] + r * hn_t)
        h = (1 - z) * cand + z * h
        gates[:, t] = np.concatenate([r, z, cand], axis=1)
        hn[:, t] = hn_t
        hs[:, t] = h


def gru_backward(x, w_ih, w_hh, h0, hs, gates, hn, grad_hs, truncate, dgates, dghh, dx, dw_ih, dw_hh, dbias,
                 dbias_hn, dh0, work, n_threads):
    """Backpropagation through time for gru_forward over the last ``truncate`` steps.

    From t = T-1 down to t0 = T - truncate, with dh_T-carry 0:
    dh_t = grad_hs_t + dghh_{t+1}·w_hhᵀ + dh_{t+1} ⊙ z_{t+1};
    dan = dh_t⊙(1-z)⊙(1-n²); dar = dan⊙hn_t⊙r(1-r); daz = dh_t⊙(h_{t-1} - n)⊙z(1-z);
    dgates_t = (dar, daz, dan) (input side), dghh_t = (dar, daz, dan⊙r) (recurrent side);
    both 0 for t < t0. Then over all batch·T rows: dx = dgates·w_ihᵀ, dw_ih = xᵀ·dgates,
    dbias = Σ dgates, dw_hh = Σ_t h_{t-1}ᵀ·dghh_t (h_{-1} = h0), dbias_hn = Σ (dan⊙r);
    dh0 = dghh_0·w_hhᵀ + dh_0 ⊙ z_0 when t0 = 0, else 0.
    IN x, w_ih, w_hh, h0 as given to gru_forward; hs, gates, hn its outputs; grad_hs (batch, T, H).
    OUT dgates, dghh (batch, T, 3H); dx (batch, T, n_in); dw_ih, dw_hh, dbias, dbias_hn, dh0
    of the shapes of their parameters; work (5·batch·H,) scratch.
    """
    m, n_steps, _ = x.shape
    n = h0.shape[1]
    t0 = _truncation_start(n_steps, truncate)
    dgates[...] = 0
    dghh[...] = 0
    carry = np.zeros((m, n), x.dtype)
    for t in range(n_steps - 1, t0 - 1, -1):
        r, z, cand = (gates[:, t, k * n:(k + 1) * n] for k in range(3))
        h_prev = hs[:, t - 1] if t else h0
        dh = grad_hs[:, t] + carry
        dan = dh * (1 - z) * (1 - cand * cand)
        dar = dan * hn[:, t] * (r * (1 - r))
        daz = dh * (h_prev - cand) * (z * (1 - z))
        dgates[:, t] = np.concatenate([dar, daz, dan], axis=1)
        dghh[:, t] = np.concatenate([dar, daz, dan * r], axis=1)
        carry = dghh[:, t] @ w_hh.T + dh * z
    dh0[...] = carry if t0 == 0 else 0
    flat = dgates.reshape(m * n_steps, 3 * n)
    flat_hh = dghh.reshape(m * n_steps, 3 * n)
    dx[...] = (flat @ w_ih.T).reshape(dx.shape)
    dw_ih[...] = x.reshape(m * n_steps, -1).T @ flat
    dbias[...] = flat.sum(axis=0)
    dbias_hn[...] = flat_hh[:, 2 * n:].sum(axis=0)
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1).reshape(m * n_steps, n)
    dw_hh[...] = h_prev.T @ flat_hh
