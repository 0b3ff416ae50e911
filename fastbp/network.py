"""Network: a chain of layers over one flat parameter buffer.

Orchestration only: every array operation of a training step is a kernel call
on a preallocated buffer. The network knows its layers only through the layer
protocol (``fastbp.layers.base``): their parameter shapes, output shapes,
workspaces, passes and configs. The training loop is ``fastbp._training``, the
per-batch buffers ``fastbp._workspace``.

Memory layout
-------------
* ``params`` and ``grads``: one flat vector each, of the network's dtype; each
  layer's parameters and gradients are views into them (layer 0's W, then its
  b, then layer 1's W, ...). An optimizer step is one kernel call.
* A workspace per input shape (``fastbp._workspace``): each layer's output,
  delta and what its forward keeps for backward.

Sequences
---------
A network whose first layer is recurrent (``RNN``, ``LSTM``, ``GRU``) takes X
of shape (n_samples, n_steps, n_in). With ``return_sequences=True`` a
recurrent layer's output is every state, (n_samples, n_steps, features): a
following recurrent layer takes it as its sequence, per-step layers (Dense,
FixedPoint) run once over every step of every sample (one kernel call over
n_samples·n_steps rows). When the network's output is per step, the targets
have shape (n_samples, n_steps, ...), the loss averages over samples and
steps, and outputs come back as (n_samples, n_steps, n_outputs).

Hot path
--------
``fit`` validates and converts X and y once, then calls the current backend's
kernels (``fastbp._backend.runtime()``) directly with the current thread
count; no per-step checks, no per-step allocations.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _backend, _training
from . import kernels as _public_kernels
from . import losses as _losses
from ._workspace import WorkspaceCache
from .layers import Layer
from .layers.dense import stack_arguments
from .optim import Optimizer

__all__ = ["Network"]

_EVAL_CHUNK = 1024  # rows per forward pass when predicting/evaluating, to bound memory


def _check_layers(layers):
    """(layers as a list, n_outputs, whether the output is per step), checked to chain and to appear once each.

    Sizes must chain where fixed; a layer that takes sequences must come first
    or follow a layer whose output is a sequence (a recurrent layer with
    return_sequences=True, possibly through per-step layers such as Dense).
    """
    layers = list(layers) if not isinstance(layers, Layer) else [layers]
    if not layers:
        raise ValueError("a Network needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {i} must be a fastbp.Dense, RNN, LSTM, GRU, FixedPoint or another "
                            f"fastbp.layers.Layer, got {type(layer).__name__}")
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("the same layer object appears twice in layers; create one per position")
    features, sequence = layers[0].n_in, layers[0].sequence_input
    for i, layer in enumerate(layers):
        if i and layer.sequence_input and not sequence:
            raise ValueError(
                f"layer {i} {layer!r} takes sequences (n_samples, n_steps, {layer.n_in}): it must be the first "
                f"layer or follow a recurrent layer with return_sequences=True (per-step layers such as Dense "
                f"may come between), but layer {i - 1} {layers[i - 1]!r} outputs one row per sample: the time "
                f"axis is lost before it")
        if i and features is not None and layer.n_in is not None and features != layer.n_in:
            raise ValueError(
                f"layer sizes do not chain: layer {i - 1} {layers[i - 1]!r} has {features} outputs "
                f"but layer {i} {layer!r} expects {layer.n_in} inputs"
            )
        features = layer.output_features(features if features is not None else layer.n_in)
        sequence = layer.output_is_sequence(sequence)
    if features is None:
        raise ValueError(f"the last layer {layers[-1]!r} must have a fixed number of outputs (end with a Dense layer)")
    return layers, features, sequence


class Network:
    """A chain of layers (``Dense``, ``RNN``, ``FixedPoint``, ...) trained by backpropagation.

    Parameters
    ----------
    layers : list of fastbp.layers.Layer (Dense, RNN, FixedPoint, ...)
        Consecutive layers must chain: ``layers[i].n_out == layers[i+1].n_in``
        where both are fixed; other shapes are checked when X is seen.
        A layer belongs to one network only. A recurrent layer comes first
        (X is then 3-D, (n_samples, n_steps, n_in)) or after one with
        ``return_sequences=True``; see "Sequences" above.
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
    layers : list of Layer
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
        layers, self._n_outputs, self._sequence_output = _check_layers(layers)
        self.loss = _losses.check_loss(loss)
        _losses.check_output_activation(self.loss, getattr(layers[-1], "activation", None), self._n_outputs)
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
        self.layers = layers
        self._bind_layers()
        self._stack = stack_arguments(layers)  # a stack of Dense layers: one kernel call per step
        for layer in layers:  # in layer order, from one Generator: reproducible
            layer.initialize(self._rng)
        self._workspaces = WorkspaceCache()
        self._cache = None  # (workspace, x) of the last public forward, for backward
        self._gather = None  # fit's buffers for shuffled rows of X and y

    def _bind_layers(self):
        """Give each layer its slice of ``params`` and ``grads``, in layer order."""
        offset = 0
        for layer in self.layers:
            end = offset + layer.n_params
            layer.bind(self.params[offset:end], self.grads[offset:end])
            offset = end

    # ------------------------------------------------------------ structure
    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def sequence_input(self) -> bool:
        """Whether X is a batch of sequences, (n_samples, n_steps, n_inputs) (the first layer is recurrent)."""
        return self.layers[0].sequence_input

    @property
    def sequence_output(self) -> bool:
        """Whether outputs and targets are per time step, (n_samples, n_steps, ...)."""
        return self._sequence_output

    @property
    def n_outputs(self) -> int:
        return self._n_outputs

    @property
    def n_params(self) -> int:
        return self.params.size

    def parameters(self) -> Tuple[NDArray[np.floating], NDArray[np.floating]]:
        """The flat (params, grads) pair, each an ndarray of shape (n_params,); optimizers take it."""
        return self.params, self.grads

    def named_parameters(self) -> List[Tuple[str, NDArray[np.floating], NDArray[np.floating]]]:
        """List of (name, param, grad) for every parameter of every layer, e.g. ("layers.0.W", W, dW)."""
        named = []
        for i, layer in enumerate(self.layers):
            named.extend((f"layers.{i}.{name}", param, grad) for name, param, grad in layer.parameters())
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

        Pickle and deepcopy would copy each layer's parameter views as arrays of
        their own, cut off from ``params``/``grads``: the copy would train ``params``
        while predicting with the stale copies. So the layers travel unbound and
        ``__setstate__`` binds them to the copied flat buffers again. Workspaces,
        gathered rows and the forward cache are scratch, made again on demand.
        """
        state = self.__dict__.copy()
        state["layers"] = [layer.unbound() for layer in self.layers]
        state["_workspaces"], state["_cache"], state["_gather"] = WorkspaceCache(), None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._bind_layers()

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
            rank = self.layers[0].input_rank
            if rank == 2 and X.ndim != 2:
                hint = "; for one sample use X.reshape(1, -1)" if X.ndim == 1 else ""
                raise ValueError(f"{name} must be 2-D of shape (n_samples, {self.n_inputs}), got shape {X.shape}{hint}")
            if rank is not None and X.ndim != rank or rank is None and X.ndim < 2:
                raise ValueError(f"{name} must be {rank or 'at least 2'}-D for a network starting with "
                                 f"{self.layers[0]!r}, got shape {X.shape}")
            if 0 in X.shape:
                raise ValueError(f"{name} is empty: shape {X.shape}")
            if self.n_inputs is not None and X.shape[-1] != self.n_inputs:
                what = "features" if X.ndim == 2 else "channels"
                raise ValueError(f"{name} has {X.shape[-1]} {what} but the network expects {self.n_inputs}")
        self._output_shapes(X.shape)  # every layer takes its input: ValueError naming the layer and the shapes
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
        """Shape of the network's output for input X, per step for per-step outputs."""
        return (X.shape[0], X.shape[1], self.n_outputs) if self.sequence_output else (X.shape[0], self.n_outputs)

    # ------------------------------------------------------------ buffers
    def _workspace(self, input_shape):
        """The buffers for input batches of ``input_shape``: made once, then reused (least recent evicted)."""
        return self._workspaces.get(self.layers, input_shape, self.dtype, self._stack)

    def _output_shapes(self, input_shape):
        """Each layer's output shape for an input of ``input_shape``; ValueError naming the layer and the shapes."""
        shapes = []
        for i, layer in enumerate(self.layers):
            try:
                input_shape = layer.output_shape(input_shape)
            except ValueError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
            shapes.append(input_shape)
        return shapes

    # ------------------------------------------------------------ passes (trusted arguments)
    def _forward(self, ws, x, backend, n_threads):
        """Chain the layers' forward passes; returns the last layer's output buffer (n_samples, n_outputs)."""
        for layer, layer_ws in zip(self.layers, ws.layers):
            layer.forward(backend, n_threads, x, layer_ws)
            x = layer_ws.output
        return x

    def _loss(self, ws, y, loss_kernel, backend, n_threads):
        """Loss of the last forward; writes d loss/d output into the last delta buffer.

        Per-step outputs (n_samples, n_steps, n_outputs) and their targets
        (n_samples, n_steps, ...) go to the loss kernel as views of
        n_samples·n_steps rows: the loss averages over samples and steps.
        """
        output, delta = ws.output, ws.delta
        if output.ndim == 3:
            output, delta = output.reshape(-1, output.shape[2]), delta.reshape(-1, delta.shape[2])
            y = y.reshape((output.shape[0],) + y.shape[2:])
        return _losses.loss_kernel(backend, loss_kernel)(output, y, delta, n_threads)

    def _backward(self, ws, x, backend, n_threads):
        """Chain the layers' backward passes from the last delta; fills ``grads``."""
        for i in range(len(self.layers) - 1, -1, -1):
            x_in = ws.layers[i - 1].output if i else x
            dx = ws.layers[i - 1].delta if i else None  # the first layer needs no input gradient
            self.layers[i].backward(backend, n_threads, x_in, ws.layers[i], dx)

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
        ws = self._workspace(X.shape)
        out = self._forward(ws, X, *_backend.runtime())
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
        backend, n_threads = _backend.runtime()
        if not self._workspaces.holds(ws):
            ws = self._workspace(X.shape)  # evicted or reused since: recompute the forward
            self._forward(ws, X, backend, n_threads)
        loss = self._loss(ws, y, loss_kernel, backend, n_threads)
        self._backward(ws, X, backend, n_threads)
        return float(loss)

    def _raw_output(self, X, out):
        """Forward ``X`` (checked) in chunks into ``out`` (n_samples, n_outputs)."""
        backend, n_threads = _backend.runtime()
        for start in range(0, X.shape[0], _EVAL_CHUNK):
            x = X[start:start + _EVAL_CHUNK]
            raw = self._forward(self._workspace(x.shape), x, backend, n_threads)
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
        backend, n_threads = _backend.runtime()
        total = 0.0
        n = X.shape[0]
        for start in range(0, n, _EVAL_CHUNK):
            x, t = X[start:start + _EVAL_CHUNK], y[start:start + _EVAL_CHUNK]
            ws = self._workspace(x.shape)
            self._forward(ws, x, backend, n_threads)
            total += float(self._loss(ws, t, loss_kernel, backend, n_threads)) * x.shape[0]
        return total / n

    def _val_accuracy(self, X, y):
        """Accuracy on checked (X, y) for the cross-entropies (y as indices or rows)."""
        out = self._raw_output(X, np.empty(self._output_shape(X), self.dtype))
        if self.loss == "binary_cross_entropy":
            return float(np.mean((out > 0) == (y > 0.5)))
        labels = y if y.ndim == out.ndim - 1 else y.argmax(axis=-1)
        return float(np.mean(out.argmax(axis=-1) == labels))

    # ------------------------------------------------------------ training
    def fit(self, X: ArrayLike, y: ArrayLike, optimizer: Optional[Optimizer] = None, epochs: int = 10,
            batch_size: Optional[int] = 32, shuffle: bool = True,
            validation_data: Optional[Tuple[ArrayLike, ArrayLike]] = None, verbose: int = 1,
            callbacks: Optional[Sequence[Callable[[Network, int, Dict[str, float]], Optional[bool]]]] = None,
            lr_schedule: Optional[Callable[[int, float], float]] = None,
            initial_epoch: int = 0, guard=None) -> Dict[str, List[float]]:
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
        guard : fastbp.EWC or fastbp.Rehearsal, optional
            Protect what earlier tasks taught the network (see ``fastbp.continual``):
            an ``EWC`` consolidated on them adds its penalty inside every optimizer
            step; a ``Rehearsal`` appends buffered past samples to every batch, then
            offers this fit's samples to its buffer.

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
        return _training.fit(self, X, y, optimizer, epochs, batch_size, shuffle, validation_data, verbose,
                             callbacks, lr_schedule, initial_epoch, guard)

    # ------------------------------------------------------------ persistence
    def save(self, path, optimizer=None, epoch=None, guard=None):
        """Write the architecture, dtype and weights to ``path`` (.npz + JSON metadata), atomically;
        with ``optimizer``, a checkpoint that ``fastbp.load_checkpoint`` resumes exactly.

        See ``fastbp.save``.
        """
        from .serialization import save

        return save(self, path, optimizer=optimizer, epoch=epoch, guard=guard)

    def to_onnx(self, path=None, **kwargs):
        """The ONNX model of ``predict``, written to ``path`` if given; see ``fastbp.export_onnx``
        (needs the ``onnx`` extra)."""
        from .onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)
