"""Recurrent layers: ``RNN`` (backpropagation through time) and ``FixedPoint``
(recurrent backpropagation in the Almeida–Pineda sense).

Like every layer (``fastbp.layers.base``), a recurrent layer owns no memory:
its parameters ``Wx``, ``Wh``, ``b`` and gradients ``dWx``, ``dWh``, ``db`` are
views into the network's flat buffers (in that order), and its per-batch
buffers are its workspace. Its passes call the backend kernels
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

from .. import init as _init
from .._kernels import registry as R
from ..kernels import ConvergenceError
from .base import Gradient, Layer, LayerWorkspace, Parameter, check_size as _check_size, register_layer

__all__ = ["RNN", "FixedPoint", "ConvergenceError"]


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


class _Recurrent(Layer):
    """Parameters and bookkeeping shared by RNN and FixedPoint."""

    _kind = "Recurrent"
    _wh_gain = 1.0

    Wx, Wh, b = Parameter("Wx"), Parameter("Wh"), Parameter("b")
    dWx, dWh, db = Gradient("Wx"), Gradient("Wh"), Gradient("b")

    def __init__(self, n_in, n_hidden, activation, init):
        self.n_in = _check_size(self._kind, "n_in", n_in)
        self.n_hidden = _check_size(self._kind, "n_hidden", n_hidden)
        activation = "tanh" if activation is None else activation
        self._act_id = _check_activation(self._kind, activation)
        self.activation = activation
        self.init = _init.resolve(init, activation)

    @property
    def n_out(self):
        return self.n_hidden

    needs_preactivation = False

    def parameter_shapes(self):
        n_in, n = self.n_in, self.n_hidden
        return [("Wx", (n_in, n)), ("Wh", (n, n)), ("b", (n,))]

    def initialize(self, rng):
        """Wx by the layer's initialiser; Wh a random orthogonal matrix times the layer's gain; b = 0."""
        _init.initialize(self.Wx, self.init, rng)
        self.Wh[...] = _orthogonal(rng, self.n_hidden, self._wh_gain)


@register_layer
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

    # ------------------------------------------------------------ shapes and buffers
    @property
    def sequence_output(self):
        return self.return_sequences

    input_rank = 3

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.n_in:
            raise ValueError(f"{self!r} takes sequences of shape (n_samples, n_steps, {self.n_in}), "
                             f"got {tuple(input_shape)}")
        n_samples, n_steps, _ = input_shape
        return (n_samples * n_steps if self.return_sequences else n_samples, self.n_hidden)

    def workspace(self, input_shape, dtype):
        """output, delta, and every state ``hs`` and δ over the sequence ``seq_delta`` (batch, T, hidden).

        With return_sequences the output and delta are hs and seq_delta, as (batch·T, hidden) views.
        """
        output = np.empty(self.output_shape(input_shape), dtype)
        delta = np.empty_like(output)
        shape = (input_shape[0], input_shape[1], self.n_hidden)
        if self.return_sequences:
            hs, seq_delta = output.reshape(shape), delta.reshape(shape)
        else:
            hs, seq_delta = np.empty(shape, dtype), np.empty(shape, dtype)
        return LayerWorkspace(output, delta, hs=hs, seq_delta=seq_delta)

    # ------------------------------------------------------------ forward / backward
    def forward(self, backend, n_threads, x, ws):
        """hs := states of x (batch, T, n_in); output := hs (as (batch·T, n_hidden)) or its last step."""
        m, n_steps, _ = x.shape
        hs = ws.hs
        flat = hs.reshape(m * n_steps, self.n_hidden)
        backend.dense_forward(x.reshape(m * n_steps, self.n_in), self.Wx, self.b, R.IDENTITY, flat, flat,
                              n_threads)  # x_proj, one GEMM over batch·T rows
        backend.rnn_forward(hs, self.Wh, self._act_id, hs, n_threads)
        if not self.return_sequences:
            np.copyto(ws.output, hs[:, -1])

    def backward(self, backend, n_threads, x, ws, dx):
        """δ over the sequence by BPTT; dWh in the kernel, then dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ.

        IN x (batch, T, n_in); IN ws.delta: d loss/d output; OUT dx (batch, T, n_in) or None.
        """
        m, n_steps, _ = x.shape
        seq = ws.seq_delta
        if not self.return_sequences:  # only the last state reaches the loss
            seq[:, :-1] = 0
            seq[:, -1] = ws.delta
        truncate = n_steps if self.truncate is None else min(self.truncate, n_steps)
        backend.rnn_backward(ws.hs, self.Wh, self._act_id, seq, truncate, seq, self.dWh, n_threads)
        flat = seq.reshape(m * n_steps, self.n_hidden)
        compute_dx = dx is not None
        backend.dense_backward(x.reshape(m * n_steps, self.n_in), self.Wx, flat, flat, flat, R.IDENTITY, flat,
                               self.dWx, self.db, dx.reshape(m * n_steps, self.n_in) if compute_dx else flat,
                               compute_dx, False, n_threads)


@register_layer
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

    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[1] != self.n_in:
            raise ValueError(f"{self!r} takes input of shape (n_samples, {self.n_in}), got {tuple(input_shape)}")
        return (input_shape[0], self.n_hidden)

    def workspace(self, input_shape, dtype):
        """output h*, delta, x_proj, the adjoint's δ and two scratch buffers, each (n_samples, n_hidden)."""
        output = np.empty(self.output_shape(input_shape), dtype)
        return LayerWorkspace(output, np.empty_like(output), x_proj=np.empty_like(output),
                              adjoint=np.empty_like(output), scratch=np.empty((2,) + output.shape, dtype))

    def _not_converged(self, what, iterations, residual, tol):
        return ConvergenceError(
            f"{self!r}: the {what} did not converge: max change {residual:.3g} > tol {tol:g} after "
            f"{iterations} iterations (max_iter={self.max_iter}); Wh may have grown too large for the "
            f"relaxation to contract (spectral norm {np.linalg.norm(self.Wh.astype(np.float64), 2):.3g})")

    def forward(self, backend, n_threads, x, ws):
        """output := h*, the fixed point of h = act(x·Wx + b + h·Wh).  IN x (m, n_in); OUT (m, n_hidden)."""
        backend.dense_forward(x, self.Wx, self.b, R.IDENTITY, ws.x_proj, ws.x_proj, n_threads)
        it, residual = backend.fixed_point_forward(ws.x_proj, self.Wh, self._act_id, self.tol, self.max_iter,
                                                   ws.output, ws.scratch[0], n_threads)
        self.n_iter_ = it
        if not residual <= self.tol:
            raise self._not_converged("forward relaxation", it, residual, self.tol)

    def backward(self, backend, n_threads, x, ws, dx):
        """δ from the adjoint fixed point; dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ, dWh := h*ᵀ·δ."""
        it, residual = backend.fixed_point_adjoint(ws.output, self.Wh, self._act_id, ws.delta, self.tol,
                                                   self.max_iter, ws.adjoint, ws.scratch, n_threads)
        self.n_iter_adjoint_ = it
        if not residual <= self.tol:
            raise self._not_converged("adjoint (backward) iteration", it, residual, self.tol)
        d = ws.adjoint
        compute_dx = dx is not None
        backend.dense_backward(x, self.Wx, d, d, d, R.IDENTITY, d, self.dWx, self.db,
                               dx if compute_dx else d, compute_dx, False, n_threads)
        backend.gemm(ws.output.T, d, self.dWh, 1.0, 0.0, n_threads)
