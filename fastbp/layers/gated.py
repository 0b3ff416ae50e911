"""Gated recurrent layers: ``LSTM`` and ``GRU``, with torch.nn.LSTM's and
torch.nn.GRU's equations and gate order, trained by backpropagation through
time (optionally truncated), stackable and bidirectional (``_sequence.py``).

Each direction's whole pass is one call of the backend's gated kernels
(``lstm_forward``/``lstm_backward``, ``gru_forward``/``gru_backward``: the
input projection and the weight gradients are single GEMMs over batch·time
rows, the time loop runs in compiled code). Weights are the transposes of
torch's, gates along the columns in torch's order:

==========  ==============================  ====================================
fastbp      torch.nn.LSTM (gates i, f, g, o)  torch.nn.GRU (gates r, z, n)
==========  ==============================  ====================================
``Wx``      ``weight_ih_l{k}.T`` (n_in, 4H)  ``weight_ih_l{k}.T`` (n_in, 3H)
``Wh``      ``weight_hh_l{k}.T`` (H, 4H)     ``weight_hh_l{k}.T`` (H, 3H)
``b``       ``bias_ih_l{k} + bias_hh_l{k}``  ``bias_ih_l{k} + (bias_hh_l{k}[:2H], 0)``
``b_hn``    --                             ``bias_hh_l{k}[2H:]`` (inside r ⊙ (·))
==========  ==============================  ====================================

The reverse direction's parameters carry the suffix ``_reverse``, as torch's
(``Wx_reverse = weight_ih_l{k}_reverse.T``, ...); layer k of a torch module
with ``num_layers > 1`` is the k-th fastbp layer of a stack.
"""

import numpy as np

from .._kernels.reference import GATED_WORK
from ._sequence import DIRECTIONS, SequenceLayer
from .base import Gradient, Parameter, register_layer

__all__ = ["LSTM", "GRU"]


def _uniform(rng, a, bound):
    a[...] = rng.uniform(-bound, bound, size=a.shape)


class _Gated(SequenceLayer):
    """What LSTM and GRU share: parameters Wx, Wh, b per direction, torch's initialisation, scratch."""

    _kernel = None  # "lstm" or "gru"
    _n_gates = None
    _always_dx = True  # the gated kernels write dx in any case

    Wx, Wh, b = Parameter("Wx"), Parameter("Wh"), Parameter("b")
    dWx, dWh, db = Gradient("Wx"), Gradient("Wh"), Gradient("b")
    Wx_reverse, Wh_reverse, b_reverse = Parameter("Wx_reverse"), Parameter("Wh_reverse"), Parameter("b_reverse")
    dWx_reverse, dWh_reverse, db_reverse = Gradient("Wx_reverse"), Gradient("Wh_reverse"), Gradient("b_reverse")

    def __init__(self, n_in, n_hidden, return_sequences=False, truncate=None, bidirectional=False):
        super().__init__(n_in, n_hidden, return_sequences, truncate, bidirectional)

    def get_config(self):
        return {"type": type(self).__name__, **self._config()}

    def _direction_shapes(self):
        n_in, n, k = self.n_in, self.n_hidden, self._n_gates
        return [("Wx", (n_in, k * n)), ("Wh", (n, k * n)), ("b", (k * n,))]

    def initialize(self, rng):
        """Every weight from U(-1/√H, 1/√H), as torch; biases as ``_initial_biases``."""
        bound = 1.0 / np.sqrt(self.n_hidden)
        for suffix in DIRECTIONS[:self.n_directions]:
            _uniform(rng, self.param("Wx" + suffix), bound)
            _uniform(rng, self.param("Wh" + suffix), bound)
            self._initial_biases(suffix)

    def _initial_biases(self, suffix):
        """Biases start at zero."""

    def _direction_cache(self, n_samples, n_steps, dtype):
        """Zero initial states, the gate cache, its gradient and the kernels' scratch."""
        n, k = self.n_hidden, self._n_gates
        work = max(GATED_WORK[self._kernel, "forward"], GATED_WORK[self._kernel, "backward"]) * n_samples * n
        return dict(h0=np.zeros((n_samples, n), dtype), dh0=np.empty((n_samples, n), dtype),
                    gates=np.empty((n_samples, n_steps, k * n), dtype),
                    dgates=np.empty((n_samples, n_steps, k * n), dtype), work=np.empty(work, dtype))


@register_layer
class LSTM(_Gated):
    """Long short-term memory layer (``torch.nn.LSTM``'s equations and gate order i, f, g, o).

    ``[i, f, g, o] = x_t·Wx + h_{t-1}·Wh + b`` split into four blocks of
    n_hidden columns; ``i, f, o = σ(·)``, ``g = tanh(·)``;
    ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)`` from h, c = 0.
    The output is h (the cell state c stays inside the layer).

    Parameters
    ----------
    n_in : int
        Features per time step.
    n_hidden : int
        State size H.
    return_sequences : bool
        False: the output is the final state, shape (batch, n_out). True: every
        state, (batch, time, n_out), which a following recurrent layer takes as
        its sequence and per-step layers (Dense) apply to step by step.
    truncate : int >= 1 or None
        Backpropagate through at most the last ``truncate`` steps (exact for
        the states before them held constant); None: full BPTT.
    bidirectional : bool
        Also run the sequence backwards with parameters of its own (suffix
        ``_reverse``) and concatenate, ``n_out = 2H``, as torch's
        ``bidirectional=True`` (see ``fastbp.layers._sequence``).

    Attributes
    ----------
    Wx : ndarray of shape (n_in, 4H)
    Wh : ndarray of shape (H, 4H)
    b : ndarray of shape (4H,)
        ``weight_ih.T``, ``weight_hh.T``, ``bias_ih + bias_hh`` of torch (see
        ``fastbp.layers.gated``). Initialised as torch (U(-1/√H, 1/√H)) except
        b: zero, but 1 for the forget gate, so that the cell state is carried
        at the start (Jozefowicz et al., 2015).
    dWx, dWh, db : their gradients, filled by ``Network.backward``.
    Wx_reverse, ... : the reverse direction's, when bidirectional.
    """

    _kind = "LSTM"
    _kernel = "lstm"
    _n_gates = 4

    def _initial_biases(self, suffix):
        n = self.n_hidden
        self.param("b" + suffix)[n:2 * n] = 1.0  # forget gate

    def _direction_cache(self, n_samples, n_steps, dtype):
        cache = super()._direction_cache(n_samples, n_steps, dtype)
        n = self.n_hidden
        cache.update(c0=np.zeros((n_samples, n), dtype), dc0=np.empty((n_samples, n), dtype),
                     cs=np.empty((n_samples, n_steps, n), dtype))
        return cache

    def _run_forward(self, backend, n_threads, x, suffix, c):
        backend.lstm_forward(x, self.param("Wx" + suffix), self.param("Wh" + suffix), self.param("b" + suffix),
                             c.h0, c.c0, c.hs, c.cs, c.gates, c.work, n_threads)

    def _run_backward(self, backend, n_threads, x, suffix, c, dx):
        backend.lstm_backward(x, self.param("Wx" + suffix), self.param("Wh" + suffix), c.h0, c.c0, c.hs, c.cs,
                              c.gates, c.grad_hs, self._truncation(x.shape[1]), c.dgates, dx,
                              self.grad("Wx" + suffix), self.grad("Wh" + suffix), self.grad("b" + suffix),
                              c.dh0, c.dc0, c.work, n_threads)


@register_layer
class GRU(_Gated):
    """Gated recurrent unit layer (``torch.nn.GRU``'s equations and gate order r, z, n).

    With ``x_t·Wx + b`` and ``h_{t-1}·Wh`` split into blocks (r, z, n):
    ``r = σ(x_r + h_r)``, ``z = σ(x_z + h_z)``, ``n = tanh(x_n + r ⊙ (h_n + b_hn))``,
    ``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`` from h = 0.

    Parameters
    ----------
    n_in, n_hidden, return_sequences, truncate, bidirectional
        As for ``LSTM``.

    Attributes
    ----------
    Wx : ndarray of shape (n_in, 3H)
    Wh : ndarray of shape (H, 3H)
    b : ndarray of shape (3H,)
        ``bias_ih + (bias_hh[:2H], 0)`` of torch.
    b_hn : ndarray of shape (H,)
        ``bias_hh[2H:]`` of torch: the recurrent bias of the n gate, inside the product with r.
    dWx, dWh, db, db_hn : their gradients.
    Wx_reverse, ... : the reverse direction's, when bidirectional.
    """

    _kind = "GRU"
    _kernel = "gru"
    _n_gates = 3

    b_hn, db_hn = Parameter("b_hn"), Gradient("b_hn")
    b_hn_reverse, db_hn_reverse = Parameter("b_hn_reverse"), Gradient("b_hn_reverse")

    def _direction_shapes(self):
        return super()._direction_shapes() + [("b_hn", (self.n_hidden,))]

    def _direction_cache(self, n_samples, n_steps, dtype):
        cache = super()._direction_cache(n_samples, n_steps, dtype)
        cache.update(hn=np.empty((n_samples, n_steps, self.n_hidden), dtype),
                     dghh=np.empty((n_samples, n_steps, 3 * self.n_hidden), dtype))
        return cache

    def _run_forward(self, backend, n_threads, x, suffix, c):
        backend.gru_forward(x, self.param("Wx" + suffix), self.param("Wh" + suffix), self.param("b" + suffix),
                            self.param("b_hn" + suffix), c.h0, c.hs, c.gates, c.hn, c.work, n_threads)

    def _run_backward(self, backend, n_threads, x, suffix, c, dx):
        backend.gru_backward(x, self.param("Wx" + suffix), self.param("Wh" + suffix), c.h0, c.hs, c.gates, c.hn,
                             c.grad_hs, self._truncation(x.shape[1]), c.dgates, c.dghh, dx,
                             self.grad("Wx" + suffix), self.grad("Wh" + suffix), self.grad("b" + suffix),
                             self.grad("b_hn" + suffix), c.dh0, c.work, n_threads)
