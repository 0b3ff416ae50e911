"""Export a trained Network to ONNX, so that it runs without fastbp (onnxruntime, ...).

Design: two tables. ``LAYER_EXPORTERS`` maps a layer type to the function that
appends its nodes to the graph; ``ACTIVATION_EXPORTERS`` maps an activation
name (every one of ``fastbp.kernels.ACTIVATIONS``) to the function that
appends ``act(z)``. A new layer type adds one row to the first table. Every
function takes a ``_Graph`` builder and the name of its input value, and
returns the name of its output value.

What each layer becomes (opset 17, the model in the network's dtype,
float32 or float64; the batch size, and the number of time steps for an RNN,
are dynamic):

* ``Dense``: ``MatMul``, ``Add``, then the activation.
* ``RNN``: ``x·Wx + b`` for every step at once (``MatMul``, ``Add``), made
  time-major (``Transpose``), then a ``Scan`` over time whose body is ``h = act(x_proj_t + h·Wh)``, from h = 0.
  ONNX's own ``RNN`` op has no step, hardtanh or softplus in every runtime,
  and a ``Scan`` states fastbp's recurrence as it is, for every activation.
  ``return_sequences`` gives the scan's per-step outputs, otherwise its final
  state. Bidirectional: the reverse direction is a second state of the same
  ``Scan`` that reads its inputs and writes its outputs in reverse time order;
  the directions are concatenated as fastbp's (forward first).
* ``Conv2D``: ``Conv`` (weights as (out, in, kh, kw); "same" as ``auto_pad=SAME_UPPER``)
  between NHWC->NCHW and NCHW->NHWC ``Transpose``s, then the activation;
  ``MaxPool2D``/``AvgPool2D``: ``MaxPool``/``AveragePool`` likewise;
  ``GlobalAvgPool2D``: ``GlobalAveragePool`` then ``Flatten``; ``Flatten``: ``Flatten``.
* ``FixedPoint``: a ``Loop`` that relaxes ``h = act(x·Wx + b + h·Wh)`` from
  h = 0 while ``max|Δh| > tol``, at most ``max_iter`` times: the same iteration
  and stopping rule as ``fastbp.kernels.fixed_point_forward``, not a fixed
  unroll (the number of sweeps depends on the input, so an unroll to any fixed
  count would be an approximation). One difference stays: where fastbp raises
  ``ConvergenceError`` after ``max_iter`` sweeps, the ONNX model returns the
  last iterate (ONNX has no exceptions). The residual is taken over the whole
  batch, as fastbp does per chunk of 1024 rows.
* The network's output activation for prediction (softmax for
  softmax_cross_entropy, sigmoid for binary_cross_entropy), so the model
  gives what ``Network.predict`` gives.

Activations are standard ops (``Relu``, ``Tanh``, ``Sigmoid``, ``Softmax``,
``Clip``, ``Erf`` for the exact gelu) or compositions of ops that
onnxruntime implements in float64 as well as float32: elu and softplus from
``Exp``/``Log`` (onnxruntime 1.32 has no float64 ``Elu``/``Softplus``), leaky
relu from ``Where``/``Mul`` (``LeakyRelu``'s slope is a float32 attribute,
0.01 rounded, 2e-10 off in float64). It has no float64 ``Erf`` either: a
float64 gelu model is valid ONNX but needs another runtime (``onnx.reference``
runs it, with an exact float64 erf).

``onnx`` is imported here only: ``import fastbp`` never imports it.
"""

import math
import os

import numpy as np

from . import losses as _losses
from ._atomic import write_atomically
from ._kernels import registry as R
from .layers import GRU, LSTM, AvgPool2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, MaxPool2D
from .layers._sequence import DIRECTIONS
from .layers.recurrent import RNN, FixedPoint

__all__ = ["export_onnx", "OPSET", "LAYER_EXPORTERS", "ACTIVATION_EXPORTERS"]

OPSET = 17  # with IR version 8, what onnxruntime >= 1.16 loads


class _Graph:
    """Collects nodes and constants of one (sub)graph; names are unique across the whole model."""

    def __init__(self, dtype, root=None):
        from onnx import helper

        self.helper = helper
        self.dtype = np.dtype(dtype)
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.root = self if root is None else root
        self.nodes = []
        if root is None:
            self.initializers, self._count = [], 0

    def name(self, hint):
        self.root._count += 1
        return f"{hint}_{self.root._count}"

    def node(self, op, inputs, hint=None, n_outputs=1, **attributes):
        """Append ``op``; returns its output name (a list of them if ``n_outputs`` > 1)."""
        outputs = [self.name(hint or op.lower()) for _ in range(n_outputs)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outputs, name=self.name(op), **attributes))
        return outputs[0] if n_outputs == 1 else outputs

    def constant(self, value, hint="const", dtype=None):
        """A model initializer (visible inside subgraphs too), in the graph's dtype unless given."""
        from onnx import numpy_helper

        name = self.name(hint)
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.root.initializers.append(numpy_helper.from_array(array, name))
        return name

    def subgraph(self):
        return _Graph(self.dtype, root=self.root)

    def value_info(self, name, shape, elem_type=None):
        return self.helper.make_tensor_value_info(name, self.elem_type if elem_type is None else elem_type, shape)

    def zeros(self, shape):
        """Zeros of the shape held by the int64 tensor ``shape`` (known only at run time)."""
        zero = self.helper.make_tensor("zero", self.elem_type, [1], [0.0])
        return self.node("ConstantOfShape", [shape], "zeros", value=zero)


# ---------------------------------------------------------------- activations
# act(z) for each name of registry.ACTIVATIONS, formulas as in fastbp._kernels.reference.
def _leaky_relu(g, z):  # z if z > 0 else slope·z; not LeakyRelu, whose alpha attribute is a float32
    negative = g.node("Mul", [z, g.constant(R.LEAKY_RELU_SLOPE)])
    return g.node("Where", [g.node("Greater", [z, g.constant(0.0)]), z, negative], "leaky_relu")


def _elu(g, z):  # z if z > 0 else alpha·(exp(min(z, 0)) - 1)
    negative = g.node("Sub", [g.node("Exp", [g.node("Min", [z, g.constant(0.0)])]), g.constant(1.0)])
    negative = g.node("Mul", [negative, g.constant(R.ELU_ALPHA)])
    return g.node("Where", [g.node("Greater", [z, g.constant(0.0)]), z, negative], "elu")


def _softplus(g, z):  # max(z, 0) + log(1 + exp(-|z|)): no overflow for any z
    tail = g.node("Log", [g.node("Add", [g.constant(1.0), g.node("Exp", [g.node("Neg", [g.node("Abs", [z])])])])])
    return g.node("Add", [g.node("Relu", [z]), tail], "softplus")


def _gelu(g, z):  # 0.5·z·(1 + erf(z/√2)), the exact gelu
    erf = g.node("Erf", [g.node("Div", [z, g.constant(math.sqrt(2.0))])])
    return g.node("Mul", [g.node("Mul", [g.constant(0.5), z]), g.node("Add", [g.constant(1.0), erf])], "gelu")


ACTIVATION_EXPORTERS = {
    "identity": lambda g, z: z,
    "step": lambda g, z: g.node("Cast", [g.node("Greater", [z, g.constant(0.0)])], "step", to=g.elem_type),
    "hardtanh": lambda g, z: g.node("Clip", [z, g.constant(-1.0), g.constant(1.0)], "hardtanh"),
    "sigmoid": lambda g, z: g.node("Sigmoid", [z]),
    "tanh": lambda g, z: g.node("Tanh", [z]),
    "relu": lambda g, z: g.node("Relu", [z]),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "softplus": _softplus,
    "gelu": _gelu,
    "softmax": lambda g, z: g.node("Softmax", [z], axis=-1),  # over the last axis: rows, or each time step
}


def _activation(g, name, z):
    return ACTIVATION_EXPORTERS[name](g, z)


# ---------------------------------------------------------------- layers
def _affine(g, x, W, b, hint):
    """x·W + b; x may be (batch, n_in) or (batch, steps, n_in) (MatMul broadcasts)."""
    return g.node("Add", [g.node("MatMul", [x, g.constant(W, hint + ".W")]), g.constant(b, hint + ".b")], hint)


def _export_dense(g, layer, x):
    return _activation(g, layer.activation, _affine(g, x, layer.W, layer.b, "dense"))


def _export_rnn(g, layer, x):
    """One Scan over time of h = act(x_proj_t + h·Wh) per direction, x_proj = x·Wx + b for all steps at once.

    Bidirectional: the reverse direction is a second state and scan input of the same Scan, read from
    the last step to the first (``scan_input_directions``) and its states written back in time order
    (``scan_output_directions``), so that both outputs line up step by step, as fastbp's.
    """
    n, directions = layer.n_hidden, DIRECTIONS[:layer.n_directions]
    batch = g.node("Shape", [x], "batch", start=0, end=1)
    h0 = g.zeros(g.node("Concat", [batch, g.constant([n], "width", np.int64)], "state_shape", axis=0))
    body = g.subgraph()
    x_projs, body_inputs, h_states, h_outs = [], [], [], []
    for suffix in directions:
        x_proj = _affine(g, x, layer.param("Wx" + suffix), layer.param("b" + suffix), "rnn_x_proj" + suffix)
        # Time first, scanned along axis 0: onnxruntime's float64 Scan supports no other axis.
        x_projs.append(g.node("Transpose", [x_proj], perm=[1, 0, 2]))
        wh = g.constant(layer.param("Wh" + suffix), "rnn.Wh" + suffix)
        h_prev, x_t = body.name("h_prev" + suffix), body.name("x_t" + suffix)
        h = _activation(body, layer.activation, body.node("Add", [x_t, body.node("MatMul", [h_prev, wh])], "z"))
        body_inputs.append((h_prev, x_t))
        h_states.append(body.node("Identity", [h], "h_state" + suffix))
        h_outs.append(body.node("Identity", [h], "h_out" + suffix))
    # Scan's body takes every state, then every scan input; it returns every state, then every scan output.
    graph = g.helper.make_graph(body.nodes, g.name("rnn_step"),
                                [body.value_info(h_prev, [None, n]) for h_prev, _ in body_inputs]
                                + [body.value_info(x_t, [None, n]) for _, x_t in body_inputs],
                                [body.value_info(name, [None, n]) for name in h_states + h_outs])
    time_order = list(range(len(directions)))  # 0: first step to last, 1: last to first
    outputs = g.node("Scan", [h0] * len(directions) + x_projs, "rnn", n_outputs=2 * len(directions), body=graph,
                     num_scan_inputs=len(directions), scan_input_directions=time_order,
                     scan_output_directions=time_order)
    h_lasts, hs = outputs[:len(directions)], outputs[len(directions):]
    if layer.return_sequences:  # (T, batch, H) per direction -> (batch, T, D·H)
        return g.node("Transpose", [_concat_last_axis(g, hs)], perm=[1, 0, 2])
    return _concat_last_axis(g, h_lasts)  # (batch, H) per direction -> (batch, D·H)


def _concat_last_axis(g, names):
    return names[0] if len(names) == 1 else g.node("Concat", names, "directions", axis=-1)


# fastbp's gate blocks (columns of Wx, Wh, b) in ONNX's order: LSTM i, o, f, c from fastbp's i, f, g, o;
# GRU z, r, h from fastbp's r, z, n.
_ONNX_GATE_ORDER = {LSTM: (0, 3, 1, 2), GRU: (1, 0, 2)}


def _export_gated(g, layer, x):
    """ONNX's LSTM or GRU op (layout 0: time first), both directions in one node when bidirectional.

    W = Wxᵀ and R = Whᵀ with the gate blocks reordered; B = (input bias, recurrent bias): fastbp's
    combined bias on the input side, and for the GRU b_hn on the recurrent side of the h gate with
    ``linear_before_reset=1`` (torch's and fastbp's n = tanh(x_n + r ⊙ (h·W_hn + b_hn))).
    """
    n = layer.n_hidden
    order = _ONNX_GATE_ORDER[type(layer)]

    def blocks(a):  # reorder the gate blocks of the last axis
        return np.concatenate([a[..., k * n:(k + 1) * n] for k in order], axis=-1)

    W, R_, B = [], [], []
    for suffix in DIRECTIONS[:layer.n_directions]:
        W.append(blocks(layer.param("Wx" + suffix)).T)
        R_.append(blocks(layer.param("Wh" + suffix)).T)
        recurrent = np.zeros(len(order) * n, layer.param("b" + suffix).dtype)
        if isinstance(layer, GRU):
            recurrent[2 * n:] = layer.param("b_hn" + suffix)
        B.append(np.concatenate([blocks(layer.param("b" + suffix)), recurrent]))
    kind = type(layer).__name__
    attributes = dict(hidden_size=n, direction="bidirectional" if layer.bidirectional else "forward")
    if isinstance(layer, GRU):
        attributes["linear_before_reset"] = 1
    x_time_first = g.node("Transpose", [x], perm=[1, 0, 2])
    ys = g.node(kind, [x_time_first, g.constant(np.stack(W), kind + ".W"), g.constant(np.stack(R_), kind + ".R"),
                       g.constant(np.stack(B), kind + ".B")], kind.lower(), n_outputs=2 if kind == "GRU" else 3,
                **attributes)
    flat = g.constant([0, 0, -1] if layer.return_sequences else [0, -1], "shape", np.int64)
    if layer.return_sequences:  # Y (T, D, batch, H) -> (batch, T, D·H)
        return g.node("Reshape", [g.node("Transpose", [ys[0]], perm=[2, 0, 1, 3]), flat])
    return g.node("Reshape", [g.node("Transpose", [ys[1]], perm=[1, 0, 2]), flat])  # Y_h (D, batch, H) -> (batch, D·H)


def _export_fixed_point(g, layer, x):
    """Loop: h = act(x_proj + h·Wh) from h = 0 while max|Δh| > tol, at most max_iter times."""
    from onnx import TensorProto

    x_proj = _affine(g, x, layer.Wx, layer.b, "fixed_point_x_proj")  # (rows, n), or (batch, steps, n)
    h0 = g.zeros(g.node("Shape", [x_proj]))
    wh, tol = g.constant(layer.effective_wh(), "fixed_point.Wh"), g.constant(layer.tol, "fixed_point.tol")
    body = g.subgraph()
    iteration, cond_in, h_prev = body.name("iteration"), body.name("cond_in"), body.name("h_prev")
    h = _activation(body, layer.activation, body.node("Add", [x_proj, body.node("MatMul", [h_prev, wh])], "z"))
    residual = body.node("ReduceMax", [body.node("Abs", [body.node("Sub", [h, h_prev])])], "residual", keepdims=0)
    cond_out = body.node("Greater", [residual, tol], "not_converged")
    h_out = body.node("Identity", [h], "h")
    graph = g.helper.make_graph(
        body.nodes, g.name("fixed_point_sweep"),
        [body.value_info(iteration, [], TensorProto.INT64), body.value_info(cond_in, [], TensorProto.BOOL),
         body.value_info(h_prev, None)],  # rank 2, or 3 after an RNN with return_sequences
        [body.value_info(cond_out, [], TensorProto.BOOL), body.value_info(h_out, None)])
    max_iter = g.constant(layer.max_iter, "fixed_point.max_iter", np.int64)
    start = g.constant(True, "true", np.bool_)
    return g.node("Loop", [max_iter, start, h0], "fixed_point", body=graph)


def _export_flatten(g, layer, x):
    return g.node("Flatten", [x], "flatten", axis=1)  # C order over (height, width, channels), as Flatten


# Images are channels-last in fastbp; ONNX's Conv and pooling take channels-first:
# each image layer is wrapped in a pair of transposes (onnxruntime fuses consecutive ones).
def _nchw(g, x):
    return g.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])


def _nhwc(g, x):
    return g.node("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])


def _export_conv2d(g, layer, x):
    attributes = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      dilations=list(layer.dilation))
    if layer.padding == "same" and layer.stride != (1, 1):  # ceil(size / stride): SAME_UPPER
        if layer.dilation != (1, 1):  # onnxruntime refuses auto_pad with dilation; the padding depends on the size
            raise ValueError(f"{layer!r}: padding='same' with stride > 1 and dilation > 1 has no ONNX form "
                             f"onnxruntime runs")
        attributes["auto_pad"] = "SAME_UPPER"
    elif layer.padding == "same":  # stride 1: span - 1 pixels, the odd one at the bottom/right, for any size
        (top, bottom), (left, right) = [((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2)
                                        for k, d in zip(layer.kernel_size, layer.dilation)]
        attributes["pads"] = [top, left, bottom, right]
    else:
        ph, pw = (0, 0) if layer.padding == "valid" else \
            (layer.padding, layer.padding) if isinstance(layer.padding, int) else layer.padding
        attributes["pads"] = [ph, pw, ph, pw]  # (top, left, bottom, right)
    w = g.constant(layer.W.transpose(3, 2, 0, 1), "conv2d.W")  # (kh, kw, in, out) -> (out, in, kh, kw)
    z = _nhwc(g, g.node("Conv", [_nchw(g, x), w, g.constant(layer.b, "conv2d.b")], "conv2d", **attributes))
    return _activation(g, layer.activation, z)


def _export_pool(op):
    def export(g, layer, x):
        return _nhwc(g, g.node(op, [_nchw(g, x)], op.lower(), kernel_shape=list(layer.pool_size),
                               strides=list(layer.stride)))
    return export


def _export_global_avg_pool(g, layer, x):
    return g.node("Flatten", [g.node("GlobalAveragePool", [_nchw(g, x)])], "global_avg_pool", axis=1)


def _input_dims(network):
    """The symbolic and fixed sizes of the model's input, by the first layer's input rank."""
    rank = network.layers[0].input_rank
    if network.sequence_input:
        return ["batch", "steps", network.n_inputs]
    if rank == 4:
        return ["batch", "height", "width", network.n_inputs]
    if rank == 2:
        return ["batch", network.n_inputs]
    raise TypeError(f"the first layer {network.layers[0]!r} takes input of any rank; export a network whose "
                    f"first layer fixes it (Dense, Conv2D, ...)")


LAYER_EXPORTERS = {
    Dense: _export_dense,
    Flatten: _export_flatten,
    Conv2D: _export_conv2d,
    MaxPool2D: _export_pool("MaxPool"),
    AvgPool2D: _export_pool("AveragePool"),
    GlobalAvgPool2D: _export_global_avg_pool,
    RNN: _export_rnn,
    LSTM: _export_gated,
    GRU: _export_gated,
    FixedPoint: _export_fixed_point,
}


# ---------------------------------------------------------------- model
def export_onnx(network, path=None, *, input_name="X", output_name="Y", opset=OPSET):
    """The ONNX model of ``network.predict``, written to ``path`` if given.

    Parameters
    ----------
    network : Network
    path : str or os.PathLike, optional
        Written atomically (temporary file, then ``os.replace``); ``.onnx`` is customary.
    input_name, output_name : str
        Names of the model's input and output.
    opset : int >= 17
        ONNX opset of the default domain.

    Returns
    -------
    onnx.ModelProto
        Input ``input_name`` of shape (batch, n_inputs), or (batch, steps,
        n_inputs) for a network starting with an RNN, in the network's dtype;
        output ``output_name`` of shape (batch, n_outputs) (or (batch, steps,
        n_outputs) with per-step outputs): what ``network.predict`` returns, to
        rounding (float32: within 1e-5 with onnxruntime in the tests).

    Raises
    ------
    ImportError
        If the ``onnx`` package is missing (``pip install fastbp[onnx]``).
    TypeError
        If the network holds a layer type with no exporter.
    """
    from onnx import checker, helper

    from .network import Network

    if not isinstance(network, Network):
        raise TypeError(f"network must be a fastbp.Network, got {type(network).__name__}")
    for i, layer in enumerate(network.layers):
        if type(layer) not in LAYER_EXPORTERS:
            raise TypeError(f"layer {i} {layer!r} has no ONNX exporter; exportable: "
                            f"{', '.join(t.__name__ for t in LAYER_EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset must be an integer >= {OPSET}, got {opset!r}")
    input_dims = _input_dims(network)
    g = _Graph(network.dtype)
    x = input_name
    for layer in network.layers:
        x = LAYER_EXPORTERS[type(layer)](g, layer, x)
    y = _activation(g, _losses.PREDICT_ACTIVATION[network.loss], x)
    g.nodes.append(helper.make_node("Identity", [y], [output_name], name="output"))
    out_steps = ["batch", "steps"] if network.sequence_output else ["batch"]
    graph = helper.make_graph(g.nodes, "fastbp_network",
                              [g.value_info(input_name, input_dims)],
                              [g.value_info(output_name, out_steps + [network.n_outputs])],
                              initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="fastbp",
                              ir_version=helper.find_min_ir_version_for(opsets))
    checker.check_model(model, full_check=True)
    if path is not None:
        data = model.SerializeToString()
        write_atomically(os.fspath(path), lambda f: f.write(data))
    return model

