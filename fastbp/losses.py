"""Output-layer helpers: which activation may end a network for each loss,
what ``predict`` returns, and how targets are checked and converted.

The losses themselves are kernels (``fastbp.kernels.loss_and_grad``). The two
cross-entropies take logits and fuse the squashing with the loss, so their
gradient with respect to the raw output is simply ``(ŷ - y)/n`` (as
scikit-learn's output layer does). Hence the valid pairs:

================================  ==========================================
loss                              last layer's activation
================================  ==========================================
``"softmax_cross_entropy"``       anything but softmax/sigmoid (normally identity)
``"binary_cross_entropy"``        anything but softmax/sigmoid (normally identity)
``"mse"``                         any activation (identity for regression)
================================  ==========================================

Softmax or sigmoid before a cross-entropy would squash twice, which trains
badly and silently, so ``check_output_activation`` rejects it.
"""

import numpy as np

from ._kernels import registry as R

LOSSES = R.LOSSES

# What predict() applies to the raw output of the last layer (the loss rows' column).
PREDICT_ACTIVATION = {name: row.predict_activation for name, row in R.LOSS_ROWS.items()}

_SQUASHING = frozenset(row.predict_activation for row in R.LOSS_ROWS.values() if row.takes_logits)


def loss_kernel(backend, kernel):
    """The loss kernel named ``kernel`` (``registry.LOSS_KERNELS``) of ``backend``: the one dispatch by name."""
    return getattr(backend, kernel)


def check_loss(name):
    """Return ``name`` if it is a known loss, else raise ValueError listing the known ones."""
    return R.check_loss(name)


def check_output_activation(loss, activation, n_outputs):
    """Raise ValueError if ``activation`` cannot end a network trained with ``loss``."""
    if R.LOSS_ROWS[loss].takes_logits and activation in _SQUASHING:
        squash = PREDICT_ACTIVATION[loss]
        raise ValueError(
            f"the last layer has activation {activation!r} but loss {loss!r} takes logits and applies "
            f"{squash} itself; use activation=None (identity) on the last layer, and predict() "
            f"returns {squash} probabilities"
        )
    if n_outputs < R.LOSS_ROWS[loss].min_outputs:
        raise ValueError(
            "softmax_cross_entropy needs at least 2 outputs (one per class); for one output "
            "use loss='binary_cross_entropy'"
        )


def check_target_rows(loss, y, name="y"):
    """Raise ValueError if target rows ``y`` (same shape as the output) lie outside ``loss``'s target range.

    The one rule for target values, from the loss's registry row: binary
    cross-entropy targets in [0, 1], softmax cross-entropy rows non-negative
    probabilities. ``check_target`` (the network's boundary) and
    ``fastbp.kernels.loss_and_grad`` both apply it.
    """
    if not y.size:
        return
    low, high = R.LOSS_ROWS[loss].target_range
    if loss == "binary_cross_entropy" and (y.min() < low or y.max() > high):
        raise ValueError(f"{name}: binary_cross_entropy targets must lie in [0, 1], got values in "
                         f"[{y.min()}, {y.max()}]")
    if loss == "softmax_cross_entropy" and y.min() < low:
        raise ValueError(f"{name}: softmax_cross_entropy target rows must be non-negative "
                         f"probabilities, got a minimum of {y.min()}")


def check_target(loss, y, n_samples, n_outputs, dtype, name="y"):
    """Check targets ``y`` for ``loss`` and convert them, once, for the kernels.

    Parameters
    ----------
    loss : str, one of ``LOSSES``
    y : array-like
        ``softmax_cross_entropy``: class indices of shape (n_samples,) in
        [0, n_outputs) (integers, or floats with integral values), or
        probability/one-hot rows of shape (n_samples, n_outputs).
        ``binary_cross_entropy``: values in [0, 1] of shape (n_samples, n_outputs),
        or (n_samples,) when n_outputs == 1. ``mse``: any finite values, same shapes.
    n_samples, n_outputs : int
        Expected rows, and outputs of the network.
    dtype : float32 or float64
        The network's dtype.

    Returns
    -------
    y : C-contiguous ndarray: int64 of shape (n_samples,) for class indices,
        otherwise ``dtype`` of shape (n_samples, n_outputs)
    kernel : str
        Name of the backend loss kernel to call with it.
    """
    y = np.asarray(y) if not isinstance(y, np.ndarray) else y
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {y.dtype}")
    if y.ndim not in (1, 2) or y.shape[0] != n_samples:
        raise ValueError(
            f"{name} has shape {y.shape} but X has {n_samples} samples; {name} must have "
            f"{n_samples} rows"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if loss == "softmax_cross_entropy" and y.ndim == 1:
        if y.dtype.kind == "f":
            if not np.array_equal(y, np.round(y)):
                raise ValueError(f"{name}: class indices must be integers, got non-integral values")
        if y.size and (y.min() < 0 or y.max() >= n_outputs):
            raise ValueError(
                f"{name}: class indices must lie in [0, {n_outputs}) for a network with {n_outputs} "
                f"outputs, got values in [{y.min()}, {y.max()}]"
            )
        return np.ascontiguousarray(y, dtype=np.int64), "softmax_cross_entropy_index"
    if y.ndim == 1:
        if n_outputs != 1:
            raise ValueError(
                f"{name} has shape {y.shape} but the network has {n_outputs} outputs; "
                f"{name} must have shape ({n_samples}, {n_outputs})"
            )
        y = y.reshape(-1, 1)
    if y.shape[1] != n_outputs:
        raise ValueError(
            f"{name} has shape {y.shape} but the network has {n_outputs} outputs; "
            f"{name} must have shape ({n_samples}, {n_outputs})"
        )
    check_target_rows(loss, y, name)
    y = np.ascontiguousarray(y, dtype=dtype)
    if not np.isfinite(y).all():  # finite float64 may overflow float32
        raise ValueError(f"{name} contains values that overflow {np.dtype(dtype).name}")
    return y, loss
