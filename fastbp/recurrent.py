"""Recurrent layers: ``RNN`` (backpropagation through time) and ``FixedPoint``
(recurrent backpropagation in the Almeida–Pineda sense).

Like ``Dense``, a recurrent layer owns no memory: its parameters ``Wx``,
``Wh``, ``b`` and gradients ``dWx``, ``dWh``, ``db`` are views into the
network's flat buffers (in that order), and its per-batch buffers belong to the
network's workspace (``_buffers``). Its passes call the backend kernels
directly; the time loop, or the relaxation loop, is one kernel call
(``rnn_forward``/``rnn_backward``, ``fixed_point_forward``/``fixed_point_adjoint``),
and every product over all time steps at once is one GEMM over batch·time rows:

* RNN forward: ``x_proj = x·Wx + b`` (``dense_forward`` on the (batch·T, n_in)
  view of x, written into the state buffer), then ``h_t = act(x_proj_t + h_{t-1}·Wh)``
  in place (``rnn_forward``).
* RNN backward: ``δ`` by ``rnn_backward`` (which also gives ``dWh``), then
  ``dWx = xᵀ·δ``, ``db = Σ δ`` (and ``dx = δ·Wxᵀ``) by ``dense_backward`` on the
  (batch·T, ·) views.
* FixedPoint: ``x_proj = x·Wx + b``, relax ``h = act(x_proj + h·Wh)``; backward
  solves the adjoint ``v = g + (v ⊙ D)·Whᵀ`` (D = act'(h)) for ``δ = v ⊙ D``,
  then ``dWx = xᵀ·δ``, ``db = Σ δ``, ``dx = δ·Wxᵀ``, ``dWh = hᵀ·δ``. Memory does
  not grow with the number of iterations: nothing of the relaxation is kept
  but its end point.
"""

import numpy as np

from . import init as _init
from ._kernels import registry as R
from .kernels import ConvergenceError

__all__ = ["RNN", "FixedPoint", "ConvergenceError"]


def _check_size(layer, name, value):
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{layer}: {name} must be an integer, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{layer}: {name} must be >= 1, got {value}")
    return int(value)


def _check_activation(layer, activation):
    R.activation_id(activation)  # ValueError listing the known names
    if activation not in R.RECURRENT_ACTIVATIONS:
        raise ValueError(f"{layer}: activation {activation!r} is not available in a recurrent layer; "
                         f"use one of {', '.join(R.RECURRENT_ACTIVATIONS)}")
    return R.ACTIVATION_ID[activation]


def _orthogonal(rng, n, gain):
    """A random (n, n) orthogonal matrix times ``gain`` (QR of a Gaussian, signs fixed): spectral norm = gain."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return gain * q * np.sign(np.diag(r))


class _Recurrent:
    """Parameter storage and bookkeeping shared by RNN and FixedPoint."""

    _kind = "Recurrent"
    _wh_gain = 1.0

    def __init__(self, n_in, n_hidden, activation, init):
        self.n_in = _check_size(self._kind, "n_in", n_in)
        self.n_hidden = _check_size(self._kind, "n_hidden", n_hidden)
        activation = "tanh" if activation is None else activation
        self._act_id = _check_activation(self._kind, activation)
        self.activation = activation
        self.init = _init.resolve(init, activation)
        self._Wx = self._Wh = self._b = self._dWx = self._dWh = self._db = None

    @property
    def n_out(self):
        return self.n_hidden

    needs_preactivation = False

    @property
    def n_params(self):
        """Number of parameters: n_in·n_hidden + n_hidden² + n_hidden."""
        return self.n_in * self.n_hidden + self.n_hidden * self.n_hidden + self.n_hidden

    def _bind(self, params, grads):
        if self._Wx is not None:
            raise ValueError(f"{self!r} already belongs to a Network; create a new layer for each network")
        n_in, n = self.n_in, self.n_hidden
        split1, split2 = n_in * n, n_in * n + n * n
        self._Wx, self._dWx = params[:split1].reshape(n_in, n), grads[:split1].reshape(n_in, n)
        self._Wh, self._dWh = params[split1:split2].reshape(n, n), grads[split1:split2].reshape(n, n)
        self._b, self._db = params[split2:], grads[split2:]

    def _initialize(self, rng):
        """Wx by the layer's initialiser; Wh a random orthogonal matrix times the layer's gain; b = 0."""
        _init.initialize(self._Wx, self.init, rng)
        self._Wh[...] = _orthogonal(rng, self.n_hidden, self._wh_gain)

    def _parameters(self):
        return [("Wx", self._Wx, self._dWx), ("Wh", self._Wh, self._dWh), ("b", self._b, self._db)]

    def _parameter_shapes(self):
        """[(name, shape)] in storage order, known before the layer has storage (``load`` checks files with it)."""
        n_in, n = self.n_in, self.n_hidden
        return [("Wx", (n_in, n)), ("Wh", (n, n)), ("b", (n,))]

    def _set(self, name, value):
        view = getattr(self, "_" + name)
        if view is None:
            raise ValueError(f"{self!r} has no parameters until it is part of a Network")
        if getattr(value, "shape", None) != view.shape:
            raise ValueError(f"{name} must have shape {view.shape}, got {getattr(value, 'shape', type(value).__name__)}")
        view[...] = value

    Wx = property(lambda self: self._Wx, lambda self, value: self._set("Wx", value))
    Wh = property(lambda self: self._Wh, lambda self, value: self._set("Wh", value))
    b = property(lambda self: self._b, lambda self, value: self._set("b", value))
    dWx = property(lambda self: self._dWx)
    dWh = property(lambda self: self._dWh)
    db = property(lambda self: self._db)


class _RNNCache:
    """Per-batch buffers of an RNN layer: every state, and δ over the sequence."""

    def __init__(self, n_samples, n_steps, n_hidden, dtype, output, delta, return_sequences):
        shape = (n_samples, n_steps, n_hidden)
        if return_sequences:  # the layer's output and delta are these buffers, as (batch·T, hidden) views
            self.hs, self.seq_delta = output.reshape(shape), delta.reshape(shape)
        else:
            self.hs, self.seq_delta = np.empty(shape, dtype), np.empty(shape, dtype)


class RNN(_Recurrent):
    """Simple (Elman) recurrent layer trained by backpropagation through time.

    ``h_t = act(x_t·Wx + h_{t-1}·Wh + b)`` for t = 0..T-1 from ``h_{-1} = 0``;
    torch.nn.RNN's recurrence with ``Wx = weight_ihᵀ``, ``Wh = weight_hhᵀ``,
    ``b = bias_ih + bias_hh``.

    Parameters
    ----------
    n_in : int
        Features per time step.
    n_hidden : int
        State size.
    activation : str
        One of ``fastbp._kernels.registry.RECURRENT_ACTIVATIONS`` (tanh, sigmoid,
        relu, ...: element-wise, with a derivative computable from the output).
    return_sequences : bool
        False: the output is the last state, shape (batch, n_hidden). True:
        every state, (batch, time, n_hidden); layers after it apply per time step
        and the loss averages over batch and time.
    truncate : int >= 1 or None
        Backpropagate through at most the last ``truncate`` steps: the gradient
        is exact for the loss with the states before step ``T - truncate`` held
        constant (see ``fastbp.kernels.rnn_backward``). None: full BPTT.
    init : str
        Initialiser of Wx (as for ``Dense``). Wh starts as a random orthogonal
        matrix (spectral norm 1: gradients neither explode nor vanish through
        the linear part at the start), b at zero.

    Attributes
    ----------
    Wx : ndarray of shape (n_in, n_hidden)
    Wh : ndarray of shape (n_hidden, n_hidden)
    b : ndarray of shape (n_hidden,)
    dWx, dWh, db : their gradients, filled by ``Network.backward``.
    """

    _kind = "RNN"
    sequence_input = True

    def __init__(self, n_in, n_hidden, activation="tanh", return_sequences=False, truncate=None, init="auto"):
        super().__init__(n_in, n_hidden, activation, init)
        self.return_sequences = bool(return_sequences)
        self.truncate = None if truncate is None else _check_size("RNN", "truncate", truncate)

    def __repr__(self):
        extra = "".join([", return_sequences=True" if self.return_sequences else "",
                         f", truncate={self.truncate}" if self.truncate is not None else ""])
        return f"RNN({self.n_in}, {self.n_hidden}, activation={self.activation!r}{extra})"

    def get_config(self):
        return {"type": "RNN", "n_in": self.n_in, "n_hidden": self.n_hidden, "activation": self.activation,
                "return_sequences": self.return_sequences, "truncate": self.truncate, "init": self.init}

    # ------------------------------------------------------------ buffers
    def _output_rows(self, n_samples, n_steps):
        return n_samples * n_steps if self.return_sequences else n_samples

    def _buffers(self, n_samples, n_steps, dtype):
        """(cache, output, delta) for batches of n_samples sequences of n_steps."""
        rows = self._output_rows(n_samples, n_steps)
        output = np.empty((rows, self.n_hidden), dtype)
        delta = np.empty_like(output)
        return _RNNCache(n_samples, n_steps, self.n_hidden, dtype, output, delta, self.return_sequences), output, delta

    # ------------------------------------------------------------ forward / backward
    def _forward(self, x, cache, a, kernels, n_threads):
        """hs := states of x (batch, T, n_in); a := hs (as (batch·T, n_hidden)) or its last step."""
        m, n_steps, _ = x.shape
        hs = cache.hs
        flat = hs.reshape(m * n_steps, self.n_hidden)
        kernels.dense_forward(x.reshape(m * n_steps, self.n_in), self._Wx, self._b, R.IDENTITY, flat, flat,
                              n_threads)  # x_proj, one GEMM over batch·T rows
        kernels.rnn_forward(hs, self._Wh, self._act_id, hs, n_threads)
        if not self.return_sequences:
            np.copyto(a, hs[:, -1])

    def _backward(self, x, cache, a, delta, dx, kernels, n_threads):
        """δ over the sequence by BPTT; dWh in the kernel, then dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ.

        IN x (batch, T, n_in); IN delta: d loss/d output; OUT dx (batch, T, n_in) or None.
        """
        m, n_steps, _ = x.shape
        seq = cache.seq_delta
        if not self.return_sequences:  # only the last state reaches the loss
            seq[:, :-1] = 0
            seq[:, -1] = delta
        truncate = n_steps if self.truncate is None else min(self.truncate, n_steps)
        kernels.rnn_backward(cache.hs, self._Wh, self._act_id, seq, truncate, seq, self._dWh, n_threads)
        flat = seq.reshape(m * n_steps, self.n_hidden)
        compute_dx = dx is not None
        kernels.dense_backward(x.reshape(m * n_steps, self.n_in), self._Wx, flat, flat, flat, R.IDENTITY, flat,
                               self._dWx, self._db, dx.reshape(m * n_steps, self.n_in) if compute_dx else flat,
                               compute_dx, False, n_threads)


class _FixedPointCache:
    def __init__(self, n_samples, n_hidden, dtype):
        self.x_proj = np.empty((n_samples, n_hidden), dtype)
        self.delta = np.empty((n_samples, n_hidden), dtype)
        self.scratch = np.empty((2, n_samples, n_hidden), dtype)


class FixedPoint(_Recurrent):
    """Recurrent layer at its fixed point, trained by recurrent backpropagation (Almeida–Pineda).

    Forward relaxes ``h = act(x·Wx + h·Wh + b)`` from ``h = 0`` until
    ``max|Δh| <= tol``; the output is that fixed point h*. Backward solves the
    adjoint fixed-point equation ``v = g + (v ⊙ D)·Whᵀ`` with ``D = act'(z*)``
    (g = d loss/d h*) by the same iteration instead of unrolling the
    relaxation, so memory does not grow with the number of iterations; then
    ``δ = v ⊙ D``, ``dWx = xᵀ·δ``, ``dWh = h*ᵀ·δ``, ``db = Σ δ``, ``dx = δ·Wxᵀ``.

    The relaxation converges when ``h ↦ act(x·Wx + h·Wh + b)`` is a contraction,
    e.g. ``‖Wh‖₂ < 1`` for tanh or relu (Lipschitz 1). Wh therefore starts as a
    random orthogonal matrix scaled to spectral norm 0.5. If the forward or the
    adjoint iteration has not converged after ``max_iter`` sweeps, a
    ``ConvergenceError`` names the layer, the iterations and the residual
    (no gradient is returned).

    Parameters
    ----------
    n_in, n_hidden : int
    activation : str, one of ``RECURRENT_ACTIVATIONS``
    tol : float > 0
        Stop when the largest change of a state (or adjoint) element is <= tol.
    max_iter : int >= 1
    init : str
        Initialiser of Wx, as for ``Dense``.

    Attributes
    ----------
    Wx, Wh, b, dWx, dWh, db : as for ``RNN``
    n_iter_ : int
        Sweeps of the last forward relaxation; ``n_iter_adjoint_`` of the last backward.
    """

    _kind = "FixedPoint"
    _wh_gain = 0.5
    sequence_input = False

    def __init__(self, n_in, n_hidden, activation="tanh", tol=1e-6, max_iter=100, init="auto"):
        super().__init__(n_in, n_hidden, activation, init)
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol > 0:
            raise ValueError(f"FixedPoint: tol must be a number > 0, got {tol!r}")
        self.tol = float(tol)
        self.max_iter = _check_size("FixedPoint", "max_iter", max_iter)
        self.n_iter_ = self.n_iter_adjoint_ = None

    def __repr__(self):
        return (f"FixedPoint({self.n_in}, {self.n_hidden}, activation={self.activation!r}, "
                f"tol={self.tol:g}, max_iter={self.max_iter})")

    def get_config(self):
        return {"type": "FixedPoint", "n_in": self.n_in, "n_hidden": self.n_hidden, "activation": self.activation,
                "tol": self.tol, "max_iter": self.max_iter, "init": self.init}

    def _output_rows(self, n_rows, n_steps):
        return n_rows

    def _buffers(self, n_rows, n_steps, dtype):
        output = np.empty((n_rows, self.n_hidden), dtype)
        return _FixedPointCache(n_rows, self.n_hidden, dtype), output, np.empty_like(output)

    def _not_converged(self, what, iterations, residual, tol):
        return ConvergenceError(
            f"{self!r}: the {what} did not converge: max change {residual:.3g} > tol {tol:g} after "
            f"{iterations} iterations (max_iter={self.max_iter}); Wh may have grown too large for the "
            f"relaxation to contract (spectral norm {np.linalg.norm(self._Wh.astype(np.float64), 2):.3g})")

    def _forward(self, x, cache, a, kernels, n_threads):
        """a := h*, the fixed point of h = act(x·Wx + b + h·Wh).  IN x (m, n_in); OUT a (m, n_hidden)."""
        kernels.dense_forward(x, self._Wx, self._b, R.IDENTITY, cache.x_proj, cache.x_proj, n_threads)
        it, residual = kernels.fixed_point_forward(cache.x_proj, self._Wh, self._act_id, self.tol, self.max_iter,
                                                   a, cache.scratch[0], n_threads)
        self.n_iter_ = it
        if not residual <= self.tol:
            raise self._not_converged("forward relaxation", it, residual, self.tol)

    def _backward(self, x, cache, a, delta, dx, kernels, n_threads):
        """δ from the adjoint fixed point; dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ, dWh := h*ᵀ·δ."""
        it, residual = kernels.fixed_point_adjoint(a, self._Wh, self._act_id, delta, self.tol, self.max_iter,
                                                   cache.delta, cache.scratch, n_threads)
        self.n_iter_adjoint_ = it
        if not residual <= self.tol:
            raise self._not_converged("adjoint (backward) iteration", it, residual, self.tol)
        d = cache.delta
        compute_dx = dx is not None
        kernels.dense_backward(x, self._Wx, d, d, d, R.IDENTITY, d, self._dWx, self._db,
                               dx if compute_dx else d, compute_dx, False, n_threads)
        kernels.gemm(a.T, d, self._dWh, 1.0, 0.0, n_threads)
