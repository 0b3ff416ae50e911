"""Conv2D: 2-D convolution over channels-last images, forward and backward side by side.

Images are (n_samples, height, width, channels), so the convolution is one
GEMM over output pixels (``backend.conv2d_forward``: the receptive fields
gathered block by block while packing, bias and activation fused into the
output tiles) and its backward dW a gather-transposed GEMM, db a column sum
and dx the transposed convolution (``backend.conv2d_backward``). The
geometry (stride, padding, dilation -> output size) is ``fastbp._geometry``'s.
"""

import numpy as np

from .. import _geometry as G
from .. import init as _init
from .._kernels import registry as R
from .base import Gradient, Layer, LayerWorkspace, Parameter, check_size, register_layer

__all__ = ["Conv2D"]


def _pair_config(pair):
    """A (h, w) pair as it is stored in a config: one int when square, else a list."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _layer_error(layer, exc):
    return type(exc)(f"{layer!r}: {exc}")


@register_layer
class Conv2D(Layer):
    """2-D convolution ``a = act(conv(x, W) + b)`` over channels-last images.

    ``z[n, i, j, f] = Σ_{p, q, c} x[n, i·sh - top + p·dh, j·sw - left + q·dw, c]·W[p, q, c, f] + b[f]``
    with zeros outside x: ``torch.nn.Conv2d`` (a cross-correlation) with the
    image axes as (n, height, width, channels) and ``W = weight.permute(2, 3, 1, 0)``.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int)
    padding : "valid", "same", int or (pad_h, pad_w)
        "same" keeps ceil(size / stride) pixels per axis (the odd padding pixel
        at the bottom/right, as TensorFlow; torch's "same" for stride 1).
    dilation : int or (int, int)
    activation : str or None
        One of ``fastbp.kernels.ACTIVATIONS`` (softmax is over the channels of a
        pixel); None means identity.
    init : str
        As for ``Dense``, with fan_in = kh·kw·in_channels and fan_out = kh·kw·out_channels.

    Attributes
    ----------
    W : ndarray of shape (kernel_h, kernel_w, in_channels, out_channels)
    b : ndarray of shape (out_channels,)
    dW, db : their gradients, filled by ``Network.backward``.
    """

    W, b = Parameter("W"), Parameter("b")
    dW, db = Gradient("W"), Gradient("b")
    input_rank = 4

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", dilation=1,
                 activation=None, init="auto"):
        self.in_channels = check_size("Conv2D", "in_channels", in_channels)
        self.out_channels = check_size("Conv2D", "out_channels", out_channels)
        try:
            self.kernel_size = G.positive_pair("kernel_size", kernel_size)
            self.stride = G.positive_pair("stride", stride)
            self.dilation = G.positive_pair("dilation", dilation)
            if isinstance(padding, (tuple, list)) and len(padding) != 2:
                raise ValueError(f"padding must be 'valid', 'same', an int or a pair (pad_h, pad_w), got {padding!r}")
            G.paddings(padding, (1, 1), (1, 1), (1, 1))  # its type and sign; its fit is checked with the image
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"Conv2D: {exc}") from None
        self.padding = list(padding) if isinstance(padding, (tuple, list)) else padding
        activation = "identity" if activation is None else activation
        self._act_id = R.activation_id(activation)  # ValueError listing the known names
        self.activation = activation
        self.init = _init.resolve(init, activation)
        self.n_in, self.n_out = self.in_channels, self.out_channels

    @property
    def needs_preactivation(self):
        return R.ACTIVATION_ROWS[self.activation].keeps_preactivation

    def parameter_shapes(self):
        kh, kw = self.kernel_size
        return [("W", (kh, kw, self.in_channels, self.out_channels)), ("b", (self.out_channels,))]

    def initialize(self, rng):
        """W by the layer's initialiser over (kh·kw·in_channels, out_channels) fans; b = 0."""
        kh, kw = self.kernel_size
        fans = np.empty((kh * kw * self.in_channels, self.out_channels))
        _init.initialize(fans, self.init, rng)
        if self.init.startswith("glorot"):  # Glorot's fan_out counts the kernel's pixels too
            fans *= np.sqrt((fans.shape[0] + self.out_channels) / (fans.shape[0] + kh * kw * self.out_channels))
        self.W[...] = fans.reshape(self.W.shape)

    def _geometry(self, input_shape):
        """(output shape, the kernels' geometry tuple) for an input of ``input_shape``."""
        if len(input_shape) != 4 or input_shape[3] != self.in_channels:
            raise ValueError(f"{self!r} takes images of shape (n_samples, height, width, {self.in_channels}), "
                             f"got {tuple(input_shape)}")
        padding = tuple(self.padding) if isinstance(self.padding, list) else self.padding
        try:
            shape, geometry = G.conv2d(tuple(input_shape), self.parameter_shapes()[0][1], self.stride, padding,
                                       self.dilation)
        except ValueError as exc:
            raise _layer_error(self, exc) from None
        if 0 in shape[1:]:
            raise ValueError(f"{self!r}: input of shape {tuple(input_shape)} gives an empty output {shape}")
        return shape, geometry

    def output_shape(self, input_shape):
        return self._geometry(input_shape)[0]

    def workspace(self, input_shape, dtype):
        """output a, delta, z (a itself unless backward needs z: gelu) and the geometry."""
        shape, geometry = self._geometry(input_shape)
        output = np.empty(shape, dtype)
        return LayerWorkspace(output, np.empty_like(output), geometry=geometry,
                              z=np.empty_like(output) if self.needs_preactivation else output)

    def __repr__(self):
        return (f"Conv2D({self.in_channels}, {self.out_channels}, kernel_size={_pair_config(self.kernel_size)}, "
                f"stride={_pair_config(self.stride)}, padding={self.padding!r}, "
                f"dilation={_pair_config(self.dilation)}, activation={self.activation!r})")

    def get_config(self):
        return {"type": "Conv2D", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": _pair_config(self.kernel_size), "stride": _pair_config(self.stride),
                "padding": self.padding, "dilation": _pair_config(self.dilation),
                "activation": self.activation, "init": self.init}

    # ------------------------------------------------------------ forward / backward
    def forward(self, backend, n_threads, x, ws):
        """z := conv(x, W) + b; a := act(z), one fused kernel.  IN x (n, h, w, c_in); OUT ws.z, ws.output."""
        backend.conv2d_forward(x, self.W, self.b, ws.geometry, self._act_id, ws.z, ws.output, n_threads)

    def backward(self, backend, n_threads, x, ws, dx):
        """δ := delta ⊙ act'(z) (in place); dW := colsᵀ·δ; db := Σ_pixels δ; dx := convᵀ(δ, W) unless dx is None."""
        backend.conv2d_backward(x, self.W, ws.z, ws.output, ws.delta, self._act_id, ws.geometry, ws.delta,
                                self.dW, self.db, dx, dx is not None, False, n_threads)
