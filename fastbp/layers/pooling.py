"""Pooling layers over channels-last images: MaxPool2D, AvgPool2D, GlobalAvgPool2D.

No parameters. Each keeps the number of channels; the geometry (pool size,
stride -> output size) is ``fastbp._geometry``'s. Max pooling keeps each
output's arg-max (torch's rule for ties) and backward routes δ to it.
"""

import numpy as np

from .. import _geometry as G
from .base import Layer, LayerWorkspace, register_layer

__all__ = ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


class _Pool2D(Layer):
    """Shared by MaxPool2D and AvgPool2D: window, stride and the output geometry."""

    input_rank = 4
    _kernel = None  # "max_pool2d" or "avg_pool2d": the geometry's name in errors

    def __init__(self, pool_size, stride=None):
        try:
            self.pool_size = G.positive_pair("pool_size", pool_size)
            self.stride = self.pool_size if stride is None else G.positive_pair("stride", stride)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{type(self).__name__}: {exc}") from None

    def output_features(self, n_in):
        return n_in  # the channels

    def _geometry(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self!r} takes images of shape (n_samples, height, width, channels), "
                             f"got {tuple(input_shape)}")
        try:
            shape, geometry = G.pool2d(self._kernel, tuple(input_shape), self.pool_size, self.stride, 0)
        except ValueError as exc:
            raise ValueError(f"{self!r}: {exc}") from None
        if 0 in shape[1:]:
            raise ValueError(f"{self!r}: input of shape {tuple(input_shape)} gives an empty output {shape}")
        return shape, geometry

    def output_shape(self, input_shape):
        return self._geometry(input_shape)[0]

    def __repr__(self):
        size = lambda pair: pair[0] if pair[0] == pair[1] else pair  # noqa: E731
        return f"{type(self).__name__}({size(self.pool_size)}, stride={size(self.stride)})"

    def get_config(self):
        pair = lambda p: p[0] if p[0] == p[1] else list(p)  # noqa: E731
        return {"type": type(self).__name__, "pool_size": pair(self.pool_size), "stride": pair(self.stride)}


@register_layer
class MaxPool2D(_Pool2D):
    """Max over each pool_size window, moved by stride (default: pool_size); torch.nn.MaxPool2d.

    Parameters
    ----------
    pool_size : int or (int, int)
    stride : int or (int, int), optional; default pool_size
    """

    _kernel = "max_pool2d"

    def workspace(self, input_shape, dtype):
        """output, delta, and each output's arg-max (row·width + column of the chosen input pixel)."""
        shape, geometry = self._geometry(input_shape)
        output = np.empty(shape, dtype)
        return LayerWorkspace(output, np.empty_like(output), argmax=np.empty(shape, np.int64), geometry=geometry)

    def forward(self, backend, n_threads, x, ws):
        backend.max_pool2d_forward(x, ws.geometry, ws.output, ws.argmax, n_threads)

    def backward(self, backend, n_threads, x, ws, dx):
        """dx := δ routed to each window's arg-max (summed where windows overlap)."""
        if dx is not None:
            backend.max_pool2d_backward(ws.delta, ws.argmax, dx, n_threads)


@register_layer
class AvgPool2D(_Pool2D):
    """Mean over each pool_size window, moved by stride (default: pool_size); torch.nn.AvgPool2d.

    Parameters
    ----------
    pool_size : int or (int, int)
    stride : int or (int, int), optional; default pool_size
    """

    _kernel = "avg_pool2d"

    def workspace(self, input_shape, dtype):
        shape, geometry = self._geometry(input_shape)
        output = np.empty(shape, dtype)
        return LayerWorkspace(output, np.empty_like(output), geometry=geometry)

    def forward(self, backend, n_threads, x, ws):
        backend.avg_pool2d_forward(x, ws.geometry, True, ws.output, n_threads)

    def backward(self, backend, n_threads, x, ws, dx):
        """dx := δ spread evenly over each window."""
        if dx is not None:
            backend.avg_pool2d_backward(ws.delta, ws.geometry, True, dx, n_threads)


@register_layer
class GlobalAvgPool2D(Layer):
    """Mean over every pixel of each channel: (n_samples, height, width, channels) -> (n_samples, channels)."""

    input_rank = 4

    def output_features(self, n_in):
        return n_in

    def output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self!r} takes images of shape (n_samples, height, width, channels), "
                             f"got {tuple(input_shape)}")
        return (input_shape[0], input_shape[3])

    def forward(self, backend, n_threads, x, ws):
        backend.global_avg_pool2d_forward(x, ws.output, n_threads)

    def backward(self, backend, n_threads, x, ws, dx):
        if dx is not None:
            backend.global_avg_pool2d_backward(ws.delta, dx, n_threads)

    def __repr__(self):
        return "GlobalAvgPool2D()"

    def get_config(self):
        return {"type": "GlobalAvgPool2D"}
