"""Dense: the fully connected layer, its forward and backward passes side by
side, and the whole-network fast path of a stack of Dense layers.

Like every layer (``fastbp.layers.base``) it owns no memory: ``W``/``b`` and
``dW``/``db`` are views into the network's flat buffers, and its per-batch
buffers are its workspace.
"""

import numpy as np

from .. import init as _init
from .._kernels import registry as R
from .._kernels.reference import mlp_layout
from .base import Gradient, Layer, LayerWorkspace, Parameter, check_size, per_step_shape, register_layer, rows

__all__ = ["Dense", "stack_arguments", "stack_workspaces"]


@register_layer
class Dense(Layer):
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

    W, b = Parameter("W"), Parameter("b")
    dW, db = Gradient("W"), Gradient("b")

    def __init__(self, n_in, n_out, activation=None, init="auto"):
        n_in, n_out = check_size("Dense", "n_in", n_in), check_size("Dense", "n_out", n_out)
        activation = "identity" if activation is None else activation
        self._act_id = R.activation_id(activation)  # ValueError listing the known names
        self.n_in, self.n_out = n_in, n_out
        self.activation = activation
        self.init = _init.resolve(init, activation)

    @property
    def needs_preactivation(self):
        """Whether backward needs z as well as a (gelu); otherwise z and a share a buffer."""
        return R.ACTIVATION_ROWS[self.activation].keeps_preactivation

    def parameter_shapes(self):
        return [("W", (self.n_in, self.n_out)), ("b", (self.n_out,))]

    def initialize(self, rng):
        """Draw W with the layer's initialiser (b stays zero)."""
        _init.initialize(self.W, self.init, rng)

    per_step = True  # after a sequence output it runs on every step: (n_samples, n_steps, n_in) in

    def output_shape(self, input_shape):
        return per_step_shape(self, input_shape) + (self.n_out,)

    def workspace(self, input_shape, dtype):
        """output a, delta, and z: a itself unless backward needs z (gelu)."""
        output = np.empty(self.output_shape(input_shape), dtype)
        return LayerWorkspace(output, np.empty_like(output),
                              z=np.empty_like(output) if self.needs_preactivation else output)

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r})"

    def get_config(self):
        """The constructor arguments, as a JSON-serialisable dict."""
        return {"type": "Dense", "n_in": self.n_in, "n_out": self.n_out,
                "activation": self.activation, "init": self.init}

    # ------------------------------------------------------------ forward / backward
    def forward(self, backend, n_threads, x, ws):
        """z := x·W + b; a := act(z), one fused kernel.  IN x (m, n_in); OUT ws.z, ws.output (m, n_out)."""
        backend.dense_forward(rows(x), self._params["W"], self._params["b"], self._act_id, rows(ws.z),
                              rows(ws.output), n_threads)

    def backward(self, backend, n_threads, x, ws, dx):
        """δ := delta ⊙ act'(z) (in place); dW := xᵀ·δ; db := Σ_rows δ; dx := δ·Wᵀ unless dx is None.

        IN x (m, n_in); IN/OUT ws.delta (m, n_out): d loss/d a in, d loss/d z
        out; OUT dx (m, n_in): the previous layer's delta, or None for the
        first layer, which needs no input gradient.
        """
        compute_dx = dx is not None
        delta = rows(ws.delta)
        backend.dense_backward(rows(x), self._params["W"], rows(ws.z), rows(ws.output), delta, self._act_id, delta,
                               self._grads["W"], self._grads["b"], rows(dx) if compute_dx else delta,
                               compute_dx, False, n_threads)


# ---------------------------------------------------------------- a stack of Dense layers
def stack_arguments(layers):
    """(widths, activation ids) for ``mlp_loss_and_grad`` when every layer is a Dense, else None.

    Such a stack trains through one whole-network kernel call per step.
    """
    if not all(type(layer) is Dense for layer in layers):
        return None
    return (np.array([layers[0].n_in] + [layer.n_out for layer in layers], np.int64),
            np.array([layer._act_id for layer in layers], np.int64))


def stack_workspaces(layers, n_samples, dtype, widths, act_ids):
    """(flat buffers, per-layer workspaces) of a Dense stack for batches of ``n_samples`` rows.

    The flat buffers are the (outputs, preactivations, deltas) that
    ``mlp_loss_and_grad`` takes; each layer's workspace views them, so the
    whole-network kernel and the layer-by-layer passes share them.
    """
    offsets, (_, n_outputs, n_preactivations) = mlp_layout(widths, act_ids, n_samples)
    flat = outputs, preactivations, deltas = (
        np.empty(n_outputs, dtype), np.empty(n_preactivations, dtype), np.empty(n_outputs, dtype))
    workspaces = []
    for layer, (_, _, a, z) in zip(layers, offsets):
        shape, size = (n_samples, layer.n_out), n_samples * layer.n_out
        output = outputs[a:a + size].reshape(shape)
        workspaces.append(LayerWorkspace(output, deltas[a:a + size].reshape(shape),
                                         z=preactivations[z:z + size].reshape(shape) if z >= 0 else output))
    return flat, workspaces
