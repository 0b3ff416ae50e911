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
from ._sequence import DIRECTIONS, SequenceLayer
from .base import Gradient, Layer, LayerWorkspace, Parameter, check_size as _check_size, per_step_shape, \
    register_layer, rows

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
    """FixedPoint's parameters and bookkeeping."""

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
class RNN(SequenceLayer):
    """Simple (Elman) recurrent layer trained by backpropagation through time.

    ``h_t = act(x_t·Wx + h_{t-1}·Wh + b)`` for t = 0..T-1 from ``h_{-1} = 0``;
    torch.nn.RNN's recurrence with ``Wx = weight_ihᵀ``, ``Wh = weight_hhᵀ``,
    ``b = bias_ih + bias_hh`` (and ``Wx_reverse = weight_ih_l0_reverseᵀ``, ...).

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
        False: the output is the last state, shape (batch, n_out). True:
        every state, (batch, time, n_out); a following recurrent layer takes it
        as its sequence, per-step layers (Dense) apply to every step, and the
        loss averages over batch and time.
    truncate : int >= 1 or None
        Backpropagate through at most the last ``truncate`` steps: the gradient
        is exact for the loss with the states before step ``T - truncate`` held
        constant (see ``fastbp.kernels.rnn_backward``). None: full BPTT.
    bidirectional : bool
        Also run the sequence backwards with parameters of its own
        (``Wx_reverse``, ``Wh_reverse``, ``b_reverse``) and concatenate:
        ``n_out = 2·n_hidden``, as ``torch.nn.RNN(bidirectional=True)``; see
        ``fastbp.layers._sequence``.
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
    Wx_reverse, ... : the reverse direction's, when bidirectional.
    """

    _kind = "RNN"

    Wx, Wh, b = Parameter("Wx"), Parameter("Wh"), Parameter("b")
    dWx, dWh, db = Gradient("Wx"), Gradient("Wh"), Gradient("b")
    Wx_reverse, Wh_reverse, b_reverse = Parameter("Wx_reverse"), Parameter("Wh_reverse"), Parameter("b_reverse")
    dWx_reverse, dWh_reverse, db_reverse = Gradient("Wx_reverse"), Gradient("Wh_reverse"), Gradient("b_reverse")

    def __init__(self, n_in, n_hidden, activation="tanh", return_sequences=False, truncate=None, init="auto",
                 bidirectional=False):
        super().__init__(n_in, n_hidden, return_sequences, truncate, bidirectional)
        activation = "tanh" if activation is None else activation
        self._act_id = _check_activation("RNN", activation)
        self.activation = activation
        self.init = _init.resolve(init, activation)

    def get_config(self):
        return {"type": "RNN", **self._config(), "activation": self.activation, "init": self.init}

    def _direction_shapes(self):
        n_in, n = self.n_in, self.n_hidden
        return [("Wx", (n_in, n)), ("Wh", (n, n)), ("b", (n,))]

    def initialize(self, rng):
        """Wx by the layer's initialiser; Wh a random orthogonal matrix; b = 0 (each direction)."""
        for suffix in DIRECTIONS[:self.n_directions]:
            _init.initialize(self.param("Wx" + suffix), self.init, rng)
            self.param("Wh" + suffix)[...] = _orthogonal(rng, self.n_hidden, 1.0)

    def _run_forward(self, backend, n_threads, x, suffix, cache):
        """hs := x_proj = x·Wx + b (one GEMM over batch·T rows), then h_t = act(x_proj_t + h_{t-1}·Wh) in place."""
        flat = rows(cache.hs)
        backend.dense_forward(rows(x), self.param("Wx" + suffix), self.param("b" + suffix), R.IDENTITY, flat, flat,
                              n_threads)
        backend.rnn_forward(cache.hs, self.param("Wh" + suffix), self._act_id, cache.hs, n_threads)

    def _run_backward(self, backend, n_threads, x, suffix, cache, dx):
        """δ by BPTT (in grad_hs), dWh in the kernel; then dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ."""
        seq = cache.grad_hs
        backend.rnn_backward(cache.hs, self.param("Wh" + suffix), self._act_id, seq, self._truncation(x.shape[1]),
                             seq, self.grad("Wh" + suffix), n_threads)
        flat = rows(seq)
        compute_dx = dx is not None
        backend.dense_backward(rows(x), self.param("Wx" + suffix), flat, flat, flat, R.IDENTITY, flat,
                               self.grad("Wx" + suffix), self.grad("b" + suffix),
                               rows(dx) if compute_dx else flat, compute_dx, False, n_threads)


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
    e.g. ``‖Wh‖₂ < 1`` for tanh or relu (Lipschitz 1). Wh starts as a random
    orthogonal matrix scaled to spectral norm 0.5, and training keeps it a
    contraction: the layer uses the spectrally normalised
    ``Wh_eff = Wh · min(1, spectral_bound / σ_max(Wh))`` (σ_max exact, from
    an SVD of the (n_hidden, n_hidden) matrix once per forward pass), so
    ``‖Wh_eff‖₂ <= spectral_bound`` whatever the optimizer does to Wh; the
    gradient is the exact gradient of the loss with respect to the parameter
    Wh through that map (``dWh = c·G - (c/σ)·⟨G, Wh⟩·u vᵀ`` when scaled, with
    ``c = spectral_bound/σ``, G = d loss/d Wh_eff and u, v the top singular
    vectors; ``G`` itself when not). If the forward or the adjoint iteration
    has not converged after ``max_iter`` sweeps (possible with
    ``spectral_bound=None``, which uses Wh as it is, or with an activation of
    Lipschitz constant > 1), a ``ConvergenceError`` names the layer, the
    iterations and the residual (no gradient is returned).

    Parameters
    ----------
    n_in, n_hidden : int
    activation : str, one of ``RECURRENT_ACTIVATIONS``
    tol : float > 0
        Stop when the largest change of a state (or adjoint) element is <= tol.
    max_iter : int >= 1
    init : str
        Initialiser of Wx, as for ``Dense``.
    spectral_bound : float in (0, 1], or None
        Largest spectral norm of the recurrent matrix in use (default 0.8: a
        tanh relaxation then shrinks its change by 0.8 or better per sweep and
        reaches tol=1e-6 within the default 100 sweeps). None: no constraint
        (the behaviour of fastbp before it, and of models saved then).

    Attributes
    ----------
    Wx, Wh, b, dWx, dWh, db : as for ``RNN``
    n_iter_ : int
        Sweeps of the last forward relaxation; ``n_iter_adjoint_`` of the last backward.
    """

    _kind = "FixedPoint"
    _wh_gain = 0.5
    sequence_input = False

    def __init__(self, n_in, n_hidden, activation="tanh", tol=1e-6, max_iter=100, init="auto", spectral_bound=0.8):
        super().__init__(n_in, n_hidden, activation, init)
        if spectral_bound is not None and (isinstance(spectral_bound, bool) or not isinstance(
                spectral_bound, (int, float, np.floating)) or not 0 < spectral_bound <= 1):
            raise ValueError(f"FixedPoint: spectral_bound must be a number in (0, 1] or None, got {spectral_bound!r}")
        self.spectral_bound = None if spectral_bound is None else float(spectral_bound)
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol > 0:
            raise ValueError(f"FixedPoint: tol must be a number > 0, got {tol!r}")
        self.tol = float(tol)
        self.max_iter = _check_size("FixedPoint", "max_iter", max_iter)
        self.n_iter_ = self.n_iter_adjoint_ = None

    def __repr__(self):
        return (f"FixedPoint({self.n_in}, {self.n_hidden}, activation={self.activation!r}, "
                f"tol={self.tol:g}, max_iter={self.max_iter}, spectral_bound={self.spectral_bound!r})")

    def get_config(self):
        return {"type": "FixedPoint", "n_in": self.n_in, "n_hidden": self.n_hidden, "activation": self.activation,
                "tol": self.tol, "max_iter": self.max_iter, "init": self.init, "spectral_bound": self.spectral_bound}

    @classmethod
    def from_config(cls, config):
        """As ``Layer.from_config``; a config saved before ``spectral_bound`` existed reads back unconstrained."""
        return super().from_config({"spectral_bound": None, **config})

    # ------------------------------------------------------------ the constraint
    def _spectral_scaling(self):
        """(c, σ, u, v): Wh_eff = c·Wh with c = min(1, bound/σ), σ = σ_max(Wh), u, v its singular vectors."""
        if self.spectral_bound is None:
            return 1.0, None, None, None
        u, s, vt = np.linalg.svd(self.Wh.astype(np.float64))
        sigma = float(s[0])
        return (min(1.0, self.spectral_bound / sigma) if sigma > 0 else 1.0), sigma, u[:, 0], vt[0]

    def effective_wh(self):
        """The matrix the layer uses, ``Wh · min(1, spectral_bound / σ_max(Wh))``: shape (n_hidden, n_hidden)."""
        scale = self._spectral_scaling()[0]
        return self.Wh.copy() if scale == 1.0 else (self.Wh.astype(np.float64) * scale).astype(self.Wh.dtype)

    per_step = True  # after a sequence output it relaxes every step's row independently

    def output_shape(self, input_shape):
        return per_step_shape(self, input_shape) + (self.n_hidden,)

    def workspace(self, input_shape, dtype):
        """output h*, delta, x_proj, the adjoint's δ (each (n_rows, n_hidden), n_rows = samples·steps) and scratch."""
        output = np.empty(self.output_shape(input_shape), dtype)
        flat = rows(output).shape
        n = self.n_hidden
        return LayerWorkspace(output, np.empty_like(output), x_proj=np.empty(flat, dtype),
                              adjoint=np.empty(flat, dtype), scratch=np.empty((2,) + flat, dtype),
                              wh=np.empty((n, n), dtype), scaling=None)

    def _not_converged(self, what, iterations, residual, tol):
        return ConvergenceError(
            f"{self!r}: the {what} did not converge: max change {residual:.3g} > tol {tol:g} after "
            f"{iterations} iterations (max_iter={self.max_iter}); Wh may have grown too large for the "
            f"relaxation to contract (spectral norm of the matrix in use "
            f"{np.linalg.norm(self.effective_wh().astype(np.float64), 2):.3g}, spectral_bound={self.spectral_bound})")

    def forward(self, backend, n_threads, x, ws):
        """output := h*, the fixed point of h = act(x·Wx + b + h·Wh).  IN x (m, n_in); OUT (m, n_hidden)."""
        ws.scaling = self._spectral_scaling()
        scale = ws.scaling[0]
        if scale == 1.0:
            np.copyto(ws.wh, self.Wh)
        else:
            np.copyto(ws.wh, self.Wh.astype(np.float64) * scale, casting="same_kind")
        backend.dense_forward(rows(x), self.Wx, self.b, R.IDENTITY, ws.x_proj, ws.x_proj, n_threads)
        it, residual = backend.fixed_point_forward(ws.x_proj, ws.wh, self._act_id, self.tol, self.max_iter,
                                                   rows(ws.output), ws.scratch[0], n_threads)
        self.n_iter_ = it
        if not residual <= self.tol:
            raise self._not_converged("forward relaxation", it, residual, self.tol)

    def backward(self, backend, n_threads, x, ws, dx):
        """δ from the adjoint fixed point; dWx := xᵀ·δ, db := Σ δ, dx := δ·Wxᵀ, dWh := h*ᵀ·δ."""
        output = rows(ws.output)
        it, residual = backend.fixed_point_adjoint(output, ws.wh, self._act_id, rows(ws.delta), self.tol,
                                                   self.max_iter, ws.adjoint, ws.scratch, n_threads)
        self.n_iter_adjoint_ = it
        if not residual <= self.tol:
            raise self._not_converged("adjoint (backward) iteration", it, residual, self.tol)
        d = ws.adjoint
        compute_dx = dx is not None
        backend.dense_backward(rows(x), self.Wx, d, d, d, R.IDENTITY, d, self.dWx, self.db,
                               rows(dx) if compute_dx else d, compute_dx, False, n_threads)
        backend.gemm(output.T, d, self.dWh, 1.0, 0.0, n_threads)  # G = d loss/d Wh_eff
        scale, sigma, u, v = ws.scaling
        if scale != 1.0:  # through Wh_eff = bound·Wh/σ(Wh): dWh = c·G - (c/σ)·⟨G, Wh⟩·u vᵀ
            g = self.dWh.astype(np.float64)
            inner = float(np.vdot(g, self.Wh.astype(np.float64)))
            np.copyto(self.dWh, scale * g - (scale / sigma) * inner * np.outer(u, v), casting="same_kind")
