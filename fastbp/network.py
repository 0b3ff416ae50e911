"""Network: a chain of layers, its flat parameter buffers, and the training loop.

Orchestration only: every array operation of a training step is a kernel call
on a preallocated buffer.

Memory layout
-------------
* ``params`` and ``grads``: one flat vector each, of the network's dtype; each
  layer's ``W``, ``b``, ``dW``, ``db`` are views into them (layer 0's W, then
  its b, then layer 1's W, ...). An optimizer step is one kernel call.
* A ``_Workspace`` per batch size: for each layer its output ``a``, its
  pre-activation ``z`` (the same array as ``a`` unless backward needs z:
  gelu; for a recurrent layer, its cache of states) and its ``delta`` (d
  loss/d a, turned into d loss/d z in place). ``fit`` uses at most two batch
  sizes (the batch and the last, smaller one), so after the first batch of
  each size a training step allocates nothing. When it shuffles, ``fit``
  gathers the rows of several batches per call (about 1 MB of X and y) into
  one pair of buffers kept on the network, and trains on slices of them.

Sequences
---------
A network whose first layer is an ``RNN`` takes X of shape (n_samples,
n_steps, n_in); workspaces are then keyed by (n_samples, n_steps). With
``return_sequences=True`` the RNN's output is a (n_samples·n_steps, n_hidden)
view of its states, so the following layers run once over every time step of
every sample, the targets have shape (n_samples, n_steps, ...) and the loss
averages over samples and steps; outputs come back as (n_samples, n_steps,
n_outputs).

Hot path
--------
``fit`` validates and converts X and y once, then calls the current backend's
kernels (``fastbp._backend.backend_module()``) directly with the current thread
count; no per-step checks, no per-step allocations.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _backend
from . import kernels as _public_kernels
from . import losses as _losses
from ._interrupt import DeferredInterrupt
from ._kernels import registry as _registry
from ._kernels.reference import mlp_layout
from .layers import Dense
from .recurrent import RNN, FixedPoint
from .optim import Adam, Optimizer

__all__ = ["Network"]

_EVAL_CHUNK = 1024  # rows per forward pass when predicting/evaluating, to bound memory
_LAYER_TYPES = (Dense, RNN, FixedPoint)
Layer = Union[Dense, RNN, FixedPoint]
_MAX_WORKSPACES = 6  # batch sizes kept: fit needs 2 for training and 2 for validation
_GATHER_BYTES = 1 << 20  # about this much of X and y gathered per np.take when fit shuffles
_GATHER_MAX_ROWS = 4096


class _NonFinite(ArithmeticError):
    """Raised by a training step, before its update, when the loss or a gradient is not finite."""


class _Workspace:
    """Per-batch-size buffers: activations, pre-activations and deltas.

    For a stack of Dense layers (``mlp`` given) the per-layer buffers are views
    into the three flat buffers that ``mlp_loss_and_grad`` takes, so the
    whole-network kernel and the layer-by-layer passes share them.
    """

    def __init__(self, layers, n_samples, dtype, n_steps=None, mlp=None):
        self.n_samples = n_samples
        self.preactivations, self.activations, self.deltas = [], [], []
        self.flat = None  # (outputs, preactivations, deltas) for mlp_loss_and_grad
        if mlp is not None:
            self._flat_buffers(layers, n_samples, dtype, *mlp)
        else:
            rows = n_samples
            for layer in layers:
                z, a, delta = layer._buffers(rows, n_steps, dtype)
                rows = layer._output_rows(rows, n_steps)
                self.preactivations.append(z)
                self.activations.append(a)
                self.deltas.append(delta)

    def _flat_buffers(self, layers, m, dtype, widths, activations):
        offsets, (_, n_outputs, n_preactivations) = mlp_layout(widths, activations, m)
        self.flat = outputs, preactivations, deltas = (
            np.empty(n_outputs, dtype), np.empty(n_preactivations, dtype), np.empty(n_outputs, dtype))
        for layer, (_, _, a, z) in zip(layers, offsets):
            shape, size = (m, layer.n_out), m * layer.n_out
            self.activations.append(outputs[a:a + size].reshape(shape))
            self.deltas.append(deltas[a:a + size].reshape(shape))
            self.preactivations.append(preactivations[z:z + size].reshape(shape) if z >= 0
                                       else self.activations[-1])


def _all_finite(flat, kernels, n_threads):
    """Whether every element of the 1-D array ``flat`` is finite, without a temporary array.

    The backend's ``all_finite`` kernel: one vectorised pass over the bits,
    ~2x faster than NumPy's float32 sum (the previous test), and no BLAS: a
    threaded BLAS call here would leave BLAS threads spinning on the cores the
    kernels' OpenMP threads need, which slowed 2-thread training 5-fold.
    """
    return kernels.all_finite(flat, n_threads)


def _check_count(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class Network:
    """A feed-forward network of ``Dense`` layers trained by backpropagation.

    Parameters
    ----------
    layers : list of Dense, RNN, FixedPoint
        Consecutive layers must chain: ``layers[i].n_out == layers[i+1].n_in``.
        A layer belongs to one network only. An ``RNN`` may only come first
        (X is then 3-D, (n_samples, n_steps, n_in)); see "Sequences" above.
    loss : str
        ``"mse"``, ``"softmax_cross_entropy"`` or ``"binary_cross_entropy"``, as
        PyTorch defines them (the cross-entropies take logits: the last layer
        normally has no activation; see ``fastbp.losses`` for the valid pairs).
    dtype : float32 or float64
        Dtype of the parameters and of every computation. Inputs of other
        dtypes are converted, once, on entry.
    seed : int, numpy.random.Generator or None
        Seeds the Generator that draws the initial weights and the shuffling
        order, so a seed makes a whole run reproducible bit for bit, for any
        thread count.

    Attributes
    ----------
    layers : list of Dense
    params, grads : ndarrays of shape (n_params,)
        Every parameter, and every gradient, in one flat vector.
    n_inputs, n_outputs : int

    Examples
    --------
    >>> net = Network([Dense(64, 128, activation="relu"), Dense(128, 10)],
    ...               loss="softmax_cross_entropy", dtype=np.float32, seed=0)
    >>> history = net.fit(X, y, optimizer=Adam(net, lr=1e-3), epochs=30)  # doctest: +SKIP
    """

    def __init__(self, layers: Union[Layer, Iterable[Layer]], loss: str = "mse", dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        layers = list(layers) if not isinstance(layers, _LAYER_TYPES) else [layers]
        if not layers:
            raise ValueError("a Network needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, _LAYER_TYPES):
                raise TypeError(f"layer {i} must be a fastbp.Dense, RNN or FixedPoint, got {type(layer).__name__}")
            if i and layer.sequence_input:
                raise ValueError(f"layer {i} {layer!r} takes sequences; a recurrent RNN layer must be the first layer")
        for i, (before, after) in enumerate(zip(layers, layers[1:])):
            if before.n_out != after.n_in:
                raise ValueError(
                    f"layer sizes do not chain: layer {i} {before!r} has {before.n_out} outputs "
                    f"but layer {i + 1} {after!r} expects {after.n_in} inputs"
                )
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("the same layer object appears twice in layers; create one per position")
        self.loss = _losses.check_loss(loss)
        _losses.check_output_activation(self.loss, layers[-1].activation, layers[-1].n_out)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.seed = seed if isinstance(seed, (int, np.integer)) or seed is None else None
        self._rng = np.random.default_rng(seed)

        n_params = sum(layer.n_params for layer in layers)
        self.params = np.zeros(n_params, self.dtype)
        self.grads = np.zeros(n_params, self.dtype)
        offset = 0
        for layer in layers:
            end = offset + layer.n_params
            layer._bind(self.params[offset:end], self.grads[offset:end])
            offset = end
        self.layers = layers
        # A stack of Dense layers trains through one whole-network kernel call per step.
        self._mlp = None
        if all(type(layer) is Dense for layer in layers):
            self._mlp = (np.array([layers[0].n_in] + [layer.n_out for layer in layers], np.int64),
                         np.array([layer._act_id for layer in layers], np.int64))
        for layer in layers:  # in layer order, from one Generator: reproducible
            layer._initialize(self._rng)
        self._workspaces = OrderedDict()
        self._cache = None  # (workspace, x) of the last public forward, for backward
        self._gather = None  # fit's buffers for shuffled rows of X and y

    # ------------------------------------------------------------ structure
    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def sequence_input(self) -> bool:
        """Whether X is a batch of sequences, (n_samples, n_steps, n_inputs) (the first layer is an RNN)."""
        return self.layers[0].sequence_input

    @property
    def sequence_output(self) -> bool:
        """Whether outputs and targets are per time step, (n_samples, n_steps, ...)."""
        return self.sequence_input and self.layers[0].return_sequences

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].n_out

    @property
    def n_params(self) -> int:
        return self.params.size

    def parameters(self) -> Tuple[NDArray[np.floating], NDArray[np.floating]]:
        """The flat (params, grads) pair, each an ndarray of shape (n_params,); optimizers take it."""
        return self.params, self.grads

    def named_parameters(self) -> List[Tuple[str, NDArray[np.floating], NDArray[np.floating]]]:
        """List of (name, param, grad) for every layer's W and b, e.g. ("layers.0.W", W, dW)."""
        named = []
        for i, layer in enumerate(self.layers):
            named.extend((f"layers.{i}.{name}", param, grad) for name, param, grad in layer._parameters())
        return named

    def zero_grad(self) -> None:
        """Set every gradient to zero (backward overwrites them; training never needs this)."""
        self.grads.fill(0)

    def get_config(self) -> Dict[str, Any]:
        """The architecture as a JSON-serialisable dict (what ``save`` stores besides the weights)."""
        return {"layers": [layer.get_config() for layer in self.layers], "loss": self.loss,
                "dtype": self.dtype.name, "seed": None if self.seed is None else int(self.seed)}

    # ------------------------------------------------------------ copies (pickle, deepcopy, joblib)
    def __getstate__(self):
        """State without the layers' views nor the scratch buffers.

        Pickle and deepcopy would copy each layer's W/b/dW/db view as an array of
        its own, cut off from ``params``/``grads``: the copy would train ``params``
        while predicting with the stale copies. So the layers travel unbound and
        ``__setstate__`` binds them to the copied flat buffers again. Workspaces,
        gathered rows and the forward cache are scratch, made again on demand.
        """
        state = self.__dict__.copy()
        state["layers"] = [self._unbound(layer) for layer in self.layers]
        state["_workspaces"], state["_cache"], state["_gather"] = OrderedDict(), None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        offset = 0
        for layer in self.layers:
            end = offset + layer.n_params
            layer._bind(self.params[offset:end], self.grads[offset:end])
            offset = end

    def _unbound(self, layer):
        """A shallow copy of ``layer`` whose views into params/grads are None (what ``_bind`` fills)."""
        unbound = object.__new__(type(layer))
        # Memory bounds, not ``.base``: an unpickled params array may itself be a view of a buffer.
        unbound.__dict__.update({name: None if isinstance(value, np.ndarray) and (
                                 np.may_share_memory(value, self.params) or np.may_share_memory(value, self.grads))
                                 else value for name, value in vars(layer).items()})
        return unbound

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return f"Network([\n    {inner}],\n  loss={self.loss!r}, dtype={self.dtype.name})"

    # ------------------------------------------------------------ boundary checks
    def _check_X(self, X, name="X"):
        """X as a C-contiguous array of the network's dtype, shape (n_samples, n_inputs); one copy at most."""
        if not isinstance(X, np.ndarray):
            try:
                X = np.asarray(X)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be a numeric 2-D array: {exc}") from None
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
        if self.sequence_input:
            if X.ndim != 3:
                hint = ("; a single sequence is X[None], one feature per step is X[..., None]"
                        if X.ndim == 2 else "")
                raise ValueError(f"{name} must be 3-D of shape (n_samples, n_steps, {self.n_inputs}) for a "
                                 f"network starting with {self.layers[0]!r}, got shape {X.shape}{hint}")
            if X.shape[0] == 0 or X.shape[1] == 0:
                raise ValueError(f"{name} is empty: shape {X.shape} (sequences need at least one step)")
            if X.shape[2] != self.n_inputs:
                raise ValueError(f"{name} has {X.shape[2]} features per step but the network expects {self.n_inputs}")
        else:
            if X.ndim != 2:
                hint = "; for one sample use X.reshape(1, -1)" if X.ndim == 1 else ""
                raise ValueError(f"{name} must be 2-D of shape (n_samples, {self.n_inputs}), got shape {X.shape}{hint}")
            if X.shape[0] == 0:
                raise ValueError(f"{name} is empty: shape {X.shape}")
            if X.shape[1] != self.n_inputs:
                raise ValueError(f"{name} has {X.shape[1]} features but the network expects {self.n_inputs}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinity (or values that overflow {self.dtype.name})")
        return X

    def _check_y(self, y, n_samples, name="y", n_steps=None):
        """Checked targets; for per-step outputs y is (n_samples, n_steps, ...) and is returned so."""
        if not self.sequence_output:
            return _losses.check_target(self.loss, y, n_samples, self.n_outputs, self.dtype, name)
        y = np.asarray(y) if not isinstance(y, np.ndarray) else y
        if y.ndim not in (2, 3) or y.shape[:2] != (n_samples, n_steps):
            raise ValueError(f"{name} has shape {y.shape} but the network outputs one target per step: "
                             f"{name} must have shape ({n_samples}, {n_steps}) (class indices or one output) "
                             f"or ({n_samples}, {n_steps}, {self.n_outputs})")
        flat, kernel = _losses.check_target(self.loss, y.reshape((n_samples * n_steps,) + y.shape[2:]),
                                            n_samples * n_steps, self.n_outputs, self.dtype, name)
        return flat.reshape((n_samples, n_steps) + flat.shape[1:]), kernel

    def _n_steps(self, X):
        return X.shape[1] if self.sequence_input else None

    def _output_shape(self, X):
        return (X.shape[0], X.shape[1], self.n_outputs) if self.sequence_output else (X.shape[0], self.n_outputs)

    # ------------------------------------------------------------ buffers
    def _workspace(self, n_samples, n_steps=None):
        """The buffers for batches of ``n_samples`` rows (of ``n_steps`` steps): made once, then reused
        (least recent evicted)."""
        key = n_samples if n_steps is None else (n_samples, n_steps)
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
            ws = self._workspaces[key] = _Workspace(self.layers, n_samples, self.dtype, n_steps, self._mlp)
        else:
            self._workspaces.move_to_end(key)
        return ws

    # ------------------------------------------------------------ passes (trusted arguments)
    def _forward(self, ws, x, kernels, n_threads):
        """Chain the layers' forward passes; returns the last layer's output buffer (n_samples, n_outputs)."""
        for layer, z, a in zip(self.layers, ws.preactivations, ws.activations):
            layer._forward(x, z, a, kernels, n_threads)
            x = a
        return x

    def _loss(self, ws, y, loss_kernel, kernels, n_threads):
        """Loss of the last forward; writes d loss/d output into the last delta buffer."""
        if y.shape[0] != ws.activations[-1].shape[0]:  # per-step targets (n_samples, n_steps, ...): flat view
            y = y.reshape((ws.activations[-1].shape[0],) + y.shape[2:])
        return getattr(kernels, loss_kernel)(ws.activations[-1], y, ws.deltas[-1], n_threads)

    def _backward(self, ws, x, kernels, n_threads):
        """Chain the layers' backward passes from the last delta; fills ``grads``."""
        for i in range(len(self.layers) - 1, -1, -1):
            x_in = ws.activations[i - 1] if i else x
            dx = ws.deltas[i - 1] if i else None  # the first layer needs no input gradient
            self.layers[i]._backward(x_in, ws.preactivations[i], ws.activations[i], ws.deltas[i], dx,
                                     kernels, n_threads)

    # ------------------------------------------------------------ public one-off passes
    def forward(self, X: ArrayLike) -> NDArray[np.floating]:
        """Raw output of the last layer (logits for the cross-entropies), caching what ``backward`` needs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs), or (n_samples, n_steps, n_inputs) for sequences

        Returns
        -------
        out : ndarray of shape (n_samples, n_outputs), or (n_samples, n_steps, n_outputs) for
            per-step outputs; a new array of the network's dtype
        """
        X = self._check_X(X)
        ws = self._workspace(X.shape[0], self._n_steps(X))
        out = self._forward(ws, X, _backend.backend_module(), _backend.get_num_threads())
        self._cache = (ws, X)
        return out.reshape(self._output_shape(X)).copy()

    __call__ = forward

    def backward(self, y: ArrayLike) -> float:
        """Loss of the last ``forward`` against ``y``; fills every layer's ``dW`` and ``db``.

        Parameters
        ----------
        y : array-like
            Targets for the samples of the last forward (see ``fastbp.losses.check_target``):
            class indices of shape (n_samples,) or rows of shape (n_samples, n_outputs).

        Returns
        -------
        loss : float
        """
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        ws, X = self._cache
        n_steps = self._n_steps(X)
        y, loss_kernel = self._check_y(y, X.shape[0], n_steps=n_steps)
        kernels, n_threads = _backend.backend_module(), _backend.get_num_threads()
        key = X.shape[0] if n_steps is None else (X.shape[0], n_steps)
        if self._workspaces.get(key) is not ws:
            ws = self._workspace(X.shape[0], n_steps)  # evicted or reused since: recompute the forward
            self._forward(ws, X, kernels, n_threads)
        loss = self._loss(ws, y, loss_kernel, kernels, n_threads)
        self._backward(ws, X, kernels, n_threads)
        return float(loss)

    def _raw_output(self, X, out):
        """Forward ``X`` (checked) in chunks into ``out`` (n_samples, n_outputs)."""
        kernels, n_threads = _backend.backend_module(), _backend.get_num_threads()
        for start in range(0, X.shape[0], _EVAL_CHUNK):
            x = X[start:start + _EVAL_CHUNK]
            raw = self._forward(self._workspace(x.shape[0], self._n_steps(x)), x, kernels, n_threads)
            out[start:start + x.shape[0]] = raw.reshape(self._output_shape(x))
        return out

    def predict(self, X: ArrayLike) -> NDArray[np.floating]:
        """Predictions: softmax probabilities (softmax_cross_entropy), sigmoid probabilities
        (binary_cross_entropy) or the raw output (mse).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs)

        Returns
        -------
        ndarray of shape (n_samples, n_outputs)
        """
        X = self._check_X(X)
        out = self._raw_output(X, np.empty(self._output_shape(X), self.dtype))
        act = _losses.PREDICT_ACTIVATION[self.loss]
        if act != "identity":
            rows = out.reshape(-1, self.n_outputs)
            _public_kernels.activation(act, rows, out=rows)
        return out

    def predict_classes(self, X: ArrayLike) -> NDArray[np.integer]:
        """Predicted labels: argmax of the outputs, or output > 0.5 for binary_cross_entropy.

        Returns
        -------
        ndarray of shape (n_samples,) of int64, or (n_samples, n_outputs) for binary_cross_entropy
        with several outputs; with per-step outputs, (n_samples, n_steps) or
        (n_samples, n_steps, n_outputs). One output gives one label per sample, shape (n_samples,)
        (or (n_samples, n_steps)), so that ``predict_classes(X) == y`` compares sample by sample.
        """
        proba = self.predict(X)
        if self.loss == "binary_cross_entropy":
            labels = (proba > 0.5).astype(np.int64)
            return labels[..., 0] if self.n_outputs == 1 else labels
        return proba.argmax(axis=-1)

    def evaluate(self, X: ArrayLike, y: ArrayLike) -> float:
        """Mean loss over (X, y), without touching the gradients.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs)
        y : array-like of targets (see ``backward``)

        Returns
        -------
        loss : float
        """
        X = self._check_X(X)
        y, loss_kernel = self._check_y(y, X.shape[0], n_steps=self._n_steps(X))
        return self._evaluate(X, y, loss_kernel)

    def _evaluate(self, X, y, loss_kernel):
        """Mean loss over checked (X, y), chunk by chunk (every loss is a mean over rows × a constant)."""
        kernels, n_threads = _backend.backend_module(), _backend.get_num_threads()
        total = 0.0
        n = X.shape[0]
        for start in range(0, n, _EVAL_CHUNK):
            x, t = X[start:start + _EVAL_CHUNK], y[start:start + _EVAL_CHUNK]
            ws = self._workspace(x.shape[0], self._n_steps(x))
            self._forward(ws, x, kernels, n_threads)
            total += float(self._loss(ws, t, loss_kernel, kernels, n_threads)) * x.shape[0]
        return total / n

    def _val_accuracy(self, X, y):
        """Accuracy on checked (X, y) for the cross-entropies (y as indices or rows)."""
        out = self._raw_output(X, np.empty(self._output_shape(X), self.dtype))
        if self.loss == "binary_cross_entropy":
            return float(np.mean((out > 0) == (y > 0.5)))
        labels = y if y.ndim == out.ndim - 1 else y.argmax(axis=-1)
        return float(np.mean(out.argmax(axis=-1) == labels))

    # ------------------------------------------------------------ training
    def _train_step(self, ws, x, y, loss_kernel, optimizer, kernels, n_threads):
        """One step on a batch: forward, loss, backward, update. Allocates nothing.

        Returns the batch loss. Raises ``_NonFinite`` if the loss, a gradient or an
        updated weight is not finite, with the weights as they were before the step.
        """
        if self._mlp is not None:  # one kernel call: forward, loss, backward
            loss = kernels.mlp_loss_and_grad(x, y, _registry.LOSS_KERNEL_ID[loss_kernel], *self._mlp,
                                             self.params, self.grads, *ws.flat, n_threads)
        else:
            self._forward(ws, x, kernels, n_threads)
            loss = self._loss(ws, y, loss_kernel, kernels, n_threads)
            self._backward(ws, x, kernels, n_threads)
        if not math.isfinite(loss):
            raise _NonFinite(f"the training loss became non-finite ({loss})")
        try:
            optimizer.step()  # checked: writes nothing if a gradient or a new value is not finite
        except FloatingPointError:
            if not _all_finite(self.grads, kernels, n_threads):
                raise _NonFinite(f"a gradient became non-finite (loss {loss})") from None
            raise _NonFinite(f"the update made a weight or the optimizer state non-finite (loss {loss})") from None
        return loss

    @staticmethod
    def _gather_rows(X, y, batch_size):
        """Rows fit gathers per call when it shuffles: whole batches, about _GATHER_BYTES of them.

        One np.take per batch cost ~1.5 us of overhead each for X and y, as much as
        a small network's whole step; per chunk it is paid once for many batches.
        """
        row_bytes = X[:1].nbytes + y[:1].nbytes
        rows = min(_GATHER_MAX_ROWS, max(1, _GATHER_BYTES // row_bytes))
        return batch_size * max(1, rows // batch_size)

    def _gather_buffers(self, X, y, rows):
        """(x, y) buffers for ``rows`` gathered rows of X and y, kept between fits."""
        shape_x, shape_y = (rows,) + X.shape[1:], (rows,) + y.shape[1:]
        buffers = self._gather
        if buffers is None or buffers[0].shape != shape_x or buffers[1].shape != shape_y \
                or buffers[1].dtype != y.dtype:
            buffers = self._gather = (np.empty(shape_x, self.dtype), np.empty(shape_y, y.dtype))
        return buffers

    def fit(self, X: ArrayLike, y: ArrayLike, optimizer: Optional[Optimizer] = None, epochs: int = 10,
            batch_size: Optional[int] = 32, shuffle: bool = True,
            validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None, verbose: int = 1,
            callbacks: Optional[Sequence[Callable[[Network, int, Dict[str, float]], Optional[bool]]]] = None,
            lr_schedule: Optional[Callable[[int, float], float]] = None,
            initial_epoch: int = 0) -> Dict[str, List[float]]:
        """Train on (X, y) by backpropagation; full-batch, stochastic or mini-batch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_inputs)
            Any numeric dtype and memory layout; converted once to a C-contiguous
            array of the network's dtype.
        y : array-like
            Class indices of shape (n_samples,) or target rows of shape
            (n_samples, n_outputs); see ``fastbp.losses.check_target``.
        optimizer : Optimizer, optional
            Built on this network's parameters (``fb.Adam(net, ...)``). Default:
            ``Adam(self, lr=1e-3)``. Gradient clipping is an optimizer option.
        epochs : int >= 1
        batch_size : int >= 1 or None
            None or >= n_samples: full-batch gradient descent (one step per
            epoch, no shuffling needed); 1: stochastic; otherwise mini-batch,
            the last batch of an epoch holding the remainder.
        shuffle : bool
            Draw one permutation per epoch from the network's seeded Generator.
        validation_data : (X_val, y_val), optional
            Evaluated at the end of every epoch: ``val_loss``, and
            ``val_accuracy`` for the cross-entropies.
        verbose : 0, 1 or 2
            0 prints nothing, 1 shows a tqdm progress bar per epoch (loss,
            val_loss, samples/s), 2 prints one line per epoch.
        callbacks : list of callables, optional
            ``callback(network, epoch, logs)`` at each epoch end; returning True
            stops training. See ``fastbp.callbacks`` (``EarlyStopping``,
            ``ModelCheckpoint``). ``optimizer.lr`` is the base learning rate
            while they run.
        lr_schedule : callable, optional
            ``lr_schedule(epoch, base_lr) -> lr``, applied at the start of each
            epoch; see ``fastbp.schedules``.
        initial_epoch : int >= 0
            Epochs already done, when resuming from a checkpoint
            (``fb.load_checkpoint(path).epoch``): the epochs run now are
            numbered ``initial_epoch, ..., initial_epoch + epochs - 1`` for the
            schedule and the callbacks, so training resumed from the checkpoint
            of an epoch end gives bit for bit the weights of a run that never
            stopped.

        Returns
        -------
        history : dict of lists, one entry per epoch
            ``"loss"`` (mean training loss over the epoch's batches, weighted by
            batch size), ``"lr"``, ``"samples_per_sec"``, and with
            validation_data ``"val_loss"`` (and ``"val_accuracy"`` for the
            cross-entropies).

        Raises
        ------
        TypeError, ValueError
            On bad input, before any weight changes.
        FloatingPointError
            If the loss, a gradient or an updated weight becomes non-finite;
            names the epoch and step, and the weights are left as they were
            before that step, and so is the optimizer's state.
        KeyboardInterrupt
            On Ctrl-C (SIGINT, main thread): it is deferred to the end of the
            step in progress, so the weights, the optimizer's state and its step
            count agree (one update each) when it propagates; save a checkpoint
            in ``except KeyboardInterrupt`` to keep them. A second Ctrl-C before
            the step ends interrupts at once.
        """
        # ---- validate everything, once, before any weight changes
        X = self._check_X(X)
        n_samples = X.shape[0]
        n_steps = self._n_steps(X)
        y, loss_kernel = self._check_y(y, n_samples, n_steps=n_steps)
        epochs = _check_count("epochs", epochs)
        if isinstance(initial_epoch, (bool, np.bool_)) or not hasattr(initial_epoch, "__index__"):
            raise TypeError(f"initial_epoch must be an integer, got {initial_epoch!r}")
        if int(initial_epoch) < 0:
            raise ValueError(f"initial_epoch must be >= 0, got {initial_epoch}")
        initial_epoch = int(initial_epoch)
        batch_size = _check_count("batch_size", batch_size, allow_none=True)
        batch_size = n_samples if batch_size is None else min(batch_size, n_samples)
        if verbose not in (0, 1, 2) or isinstance(verbose, float):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if optimizer is None:
            optimizer = Adam(self)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastbp optimizer (fb.Adam(net), ...), got {type(optimizer).__name__}")
        if optimizer.params is not self.params or optimizer.grads is not self.grads:
            raise ValueError("the optimizer was built on other parameters; build it with this network: fb.Adam(net)")
        if validation_data is not None:
            try:
                X_val, y_val = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            X_val = self._check_X(X_val, "X_val")
            y_val, val_kernel = self._check_y(y_val, X_val.shape[0], "y_val", self._n_steps(X_val))
        callbacks = [] if callbacks is None else list(callbacks) if not callable(callbacks) else [callbacks]
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"each callback must be callable as callback(network, epoch, logs), got {cb!r}")
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule must be callable as lr_schedule(epoch, base_lr), got {lr_schedule!r}")
        metrics = ["loss", "lr", "samples_per_sec"]
        if validation_data is not None:
            metrics.append("val_loss")
            if self.loss != "mse":
                metrics.append("val_accuracy")
        for cb in callbacks:
            if hasattr(cb, "set_optimizer"):
                cb.set_optimizer(optimizer)
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(self, tuple(metrics))

        # ---- buffers: at most two batch sizes, each made once
        full_batch = batch_size == n_samples
        gather = shuffle and not full_batch  # a full batch's loss does not depend on row order
        sizes = {batch_size, n_samples % batch_size or batch_size}
        workspaces = {size: self._workspace(size, n_steps) for size in sizes}
        chunk = n_samples
        if gather:  # shuffled rows are gathered several batches at a time
            chunk = self._gather_rows(X, y, batch_size)
            gather_x, gather_y = self._gather_buffers(X, y, chunk)
        self._cache = None

        history = {name: [] for name in metrics}
        base_lr = optimizer.lr
        progress = None
        if verbose == 1:
            from tqdm.auto import tqdm
        interrupt = DeferredInterrupt()
        interrupt.install()
        try:
            for epoch in range(initial_epoch, initial_epoch + epochs):
                if lr_schedule is not None:
                    optimizer.lr = lr_schedule(epoch, base_lr)
                order = self._rng.permutation(n_samples) if gather else None
                if verbose == 1:
                    progress = tqdm(total=n_samples, desc=f"Epoch {epoch + 1}/{initial_epoch + epochs}",
                                    unit="sample", leave=True, dynamic_ncols=True)
                kernels, n_threads = _backend.backend_module(), _backend.get_num_threads()
                started = time.perf_counter()
                total = 0.0
                step = 0
                for chunk_start in range(0, n_samples, chunk):
                    chunk_stop = min(chunk_start + chunk, n_samples)
                    if gather:
                        idx = order[chunk_start:chunk_stop]
                        xs = np.take(X, idx, axis=0, out=gather_x[:idx.size], mode="clip")  # clip: unbuffered
                        ys = np.take(y, idx, axis=0, out=gather_y[:idx.size], mode="clip")
                    else:
                        xs, ys = X, y
                    for start in range(chunk_start, chunk_stop, batch_size):
                        stop = min(start + batch_size, n_samples)
                        step += 1
                        i, j = start - (chunk_start if gather else 0), stop - (chunk_start if gather else 0)
                        try:
                            loss = self._train_step(workspaces[stop - start], xs[i:j], ys[i:j], loss_kernel,
                                                    optimizer, kernels, n_threads)
                        except _NonFinite as exc:
                            raise FloatingPointError(
                                f"{exc} at epoch {epoch + 1}, step {step} (batch of samples "
                                f"{start}..{stop - 1}); training stopped and the weights are those before "
                                f"that step. Try a smaller learning rate or gradient clipping."
                            ) from None
                        interrupt.check()  # Ctrl-C lands here, between whole steps
                        total += loss * (stop - start)
                        if progress is not None:
                            progress.update(stop - start)
                elapsed = time.perf_counter() - started
                logs = {"loss": total / n_samples, "lr": optimizer.lr,
                        "samples_per_sec": n_samples / elapsed if elapsed > 0 else math.inf}
                optimizer.lr = base_lr  # between epochs: what a checkpoint must store
                if validation_data is not None:
                    logs["val_loss"] = self._evaluate(X_val, y_val, val_kernel)
                    if "val_accuracy" in metrics:
                        logs["val_accuracy"] = self._val_accuracy(X_val, y_val)
                for name in metrics:
                    history[name].append(logs[name])
                if progress is not None:
                    progress.set_postfix(self._postfix(logs), refresh=False)
                    progress.close()
                    progress = None
                elif verbose == 2:
                    print(f"Epoch {epoch + 1}/{initial_epoch + epochs}: "
                          + ", ".join(f"{k}={v:.4g}" for k, v in self._postfix(logs).items()), flush=True)
                stop_training = False
                for cb in callbacks:
                    stop_training = bool(cb(self, epoch, logs)) or stop_training
                interrupt.check()
                if stop_training:
                    break
        finally:
            interrupt.uninstall()
            if progress is not None:
                progress.close()
            optimizer.lr = base_lr
        interrupt.check()  # one recorded after the last check
        for cb in callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(self)
        return history

    @staticmethod
    def _postfix(logs):
        shown = {"loss": logs["loss"]}
        for name in ("val_loss", "val_accuracy"):
            if name in logs:
                shown[name] = logs[name]
        shown["samples/s"] = logs["samples_per_sec"]
        return {k: (round(v) if k == "samples/s" and math.isfinite(v) else float(f"{v:.4g}"))
                for k, v in shown.items()}

    # ------------------------------------------------------------ persistence
    def save(self, path, optimizer=None, epoch=None):
        """Write the architecture, dtype and weights to ``path`` (.npz + JSON metadata), atomically;
        with ``optimizer``, a checkpoint that ``fastbp.load_checkpoint`` resumes exactly.

        See ``fastbp.save``.
        """
        from .serialization import save

        return save(self, path, optimizer=optimizer, epoch=epoch)

    def to_onnx(self, path=None, **kwargs):
        """The ONNX model of ``predict``, written to ``path`` if given; see ``fastbp.export_onnx``
        (needs the ``onnx`` extra)."""
        from .onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)
