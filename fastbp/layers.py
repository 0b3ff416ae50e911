"""Layers: parameters as views into the network's flat buffers, and the fused
forward and backward passes of each layer, side by side.

A layer does not own memory. ``Network`` allocates one flat vector for every
parameter and one for every gradient, and hands each layer its slice, so that
``W``/``b``/``dW``/``db`` are views (writing into ``W`` changes the network) and
an optimizer step is one kernel call over the whole flat vector. The per-batch
buffers (activations, pre-activations, deltas) also belong to the network; the
layer's passes receive them and call the backend kernels directly: arguments
were validated once, at the network's boundary.
"""

import numpy as np

from . import init as _init
from ._kernels import registry as R


class Dense:
    """Fully connected layer ``a = act(x·W + b)``.

    Parameters
    ----------
    n_in : int
        Number of input features (``fan_in``).
    n_out : int
        Number of outputs (``fan_out``).
    activation : str or None
        One of ``fastbp.kernels.ACTIVATIONS``; None means ``"identity"``.
    init : str
        Weight initialiser: ``"auto"`` (He uniform for relu, leaky_relu, elu and
        gelu, Glorot uniform otherwise), ``"he_uniform"``, ``"he_normal"``,
        ``"glorot_uniform"``, ``"glorot_normal"`` (``kaiming_*``/``xavier_*`` are
        aliases). Biases start at zero.

    Attributes
    ----------
    W : ndarray of shape (n_in, n_out)
        Weights, a writable view into the network's flat parameter vector;
        None until the layer is part of a ``Network``. Assigning to ``W``
        copies into the view.
    b : ndarray of shape (n_out,)
        Biases, likewise.
    dW, db : ndarrays of shapes (n_in, n_out) and (n_out,)
        Gradients of the loss, filled by ``Network.backward``.
    """

    def __init__(self, n_in, n_out, activation=None, init="auto"):
        for name, value in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise TypeError(f"Dense: {name} must be an integer, got {type(value).__name__}")
            if int(value) < 1:
                raise ValueError(f"Dense: {name} must be >= 1, got {value}")
        activation = "identity" if activation is None else activation
        self._act_id = R.activation_id(activation)  # ValueError listing the known names
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation = activation
        self.init = _init.resolve(init, activation)
        self._W = self._b = self._dW = self._db = None

    @property
    def needs_preactivation(self):
        """Whether backward needs z as well as a (gelu); otherwise z and a share a buffer."""
        return self.activation in R.NEEDS_PREACTIVATION

    @property
    def n_params(self):
        """Number of parameters: n_in·n_out + n_out."""
        return self.n_in * self.n_out + self.n_out

    def _bind(self, params, grads):
        """Take ``params``/``grads`` (1-D views of length ``n_params``) as this layer's storage."""
        if self._W is not None:
            raise ValueError(f"{self!r} already belongs to a Network; create a new layer for each network")
        split = self.n_in * self.n_out
        self._W = params[:split].reshape(self.n_in, self.n_out)
        self._b = params[split:]
        self._dW = grads[:split].reshape(self.n_in, self.n_out)
        self._db = grads[split:]

    def _set(self, name, value):
        view = getattr(self, "_" + name)
        if view is None:
            raise ValueError(f"{self!r} has no parameters until it is part of a Network")
        if getattr(value, "shape", None) != view.shape:
            raise ValueError(f"{name} must have shape {view.shape}, got {getattr(value, 'shape', type(value).__name__)}")
        view[...] = value

    W = property(lambda self: self._W, lambda self, value: self._set("W", value))
    b = property(lambda self: self._b, lambda self, value: self._set("b", value))
    dW = property(lambda self: self._dW)
    db = property(lambda self: self._db)

    sequence_input = False  # takes (n_samples, n_in) rows, not (batch, time, n_in) sequences

    def _initialize(self, rng):
        """Draw W with the layer's initialiser (b stays zero)."""
        _init.initialize(self._W, self.init, rng)

    def _parameters(self):
        """[(name, param, grad)] in storage order."""
        return [("W", self._W, self._dW), ("b", self._b, self._db)]

    def _parameter_shapes(self):
        """[(name, shape)] in storage order, known before the layer has storage (``load`` checks files with it)."""
        return [("W", (self.n_in, self.n_out)), ("b", (self.n_out,))]

    def _output_rows(self, n_rows, n_steps):
        return n_rows

    def _buffers(self, n_rows, n_steps, dtype):
        """(z, a, delta) for batches of ``n_rows`` rows; z is a unless backward needs it (gelu)."""
        a = np.empty((n_rows, self.n_out), dtype)
        return (np.empty_like(a) if self.needs_preactivation else a), a, np.empty_like(a)

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r})"

    def get_config(self):
        """The constructor arguments, as a JSON-serialisable dict."""
        return {"type": "Dense", "n_in": self.n_in, "n_out": self.n_out,
                "activation": self.activation, "init": self.init}

    # ------------------------------------------------------------ forward / backward
    # Both passes trust their arguments: C-contiguous arrays of the network's
    # dtype with matching shapes (checked once by Network at its boundary).
    def _forward(self, x, z, a, kernels, n_threads):
        """z := x·W + b; a := act(z), one fused kernel.  IN x (m, n_in); OUT z, a (m, n_out), z may be a."""
        kernels.dense_forward(x, self._W, self._b, self._act_id, z, a, n_threads)

    def _backward(self, x, z, a, delta, dx, kernels, n_threads):
        """δ := delta ⊙ act'(z) (in place); dW := xᵀ·δ; db := Σ_rows δ; dx := δ·Wᵀ unless dx is None.

        IN x (m, n_in), z, a (m, n_out); IN/OUT delta (m, n_out): d loss/d a in,
        d loss/d z out; OUT dx (m, n_in): the previous layer's delta, or None
        for the first layer, which needs no input gradient.
        """
        compute_dx = dx is not None
        kernels.dense_backward(x, self._W, z, a, delta, self._act_id, delta, self._dW, self._db,
                               dx if compute_dx else delta, compute_dx, False, n_threads)


def layer_from_config(config):
    """A new layer from ``get_config()``'s dict (Dense, RNN or FixedPoint)."""
    from .recurrent import RNN, FixedPoint

    kind = config.get("type")
    args = {k: v for k, v in config.items() if k != "type"}
    if kind == "Dense":
        return Dense(args["n_in"], args["n_out"], args["activation"], args["init"])
    if kind == "RNN":
        return RNN(**args)
    if kind == "FixedPoint":
        return FixedPoint(**args)
    raise ValueError(f"unknown layer type {kind!r}")
