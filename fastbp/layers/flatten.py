"""Flatten: (n_samples, ...) -> (n_samples, features), e.g. images before a Dense layer.

No kernel: forward copies the rows of its input into its output buffer (the
layers' buffers are separate, so a view would not do), backward copies δ back.
"""

import math

import numpy as np

from .base import Layer, register_layer

__all__ = ["Flatten"]


@register_layer
class Flatten(Layer):
    """Flatten every axis but the first: (n_samples, d1, d2, ...) -> (n_samples, d1·d2·...), in C order.

    For channels-last images (n, height, width, channels) the features run
    channel fastest, then column, then row.
    """

    input_rank = None  # any rank >= 2

    def output_features(self, n_in):
        return None  # the product of the input's axes, known when X is seen

    def output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self!r} takes input of shape (n_samples, ...), got {tuple(input_shape)}")
        return (input_shape[0], math.prod(input_shape[1:]))

    def forward(self, backend, n_threads, x, ws):
        np.copyto(ws.output, x.reshape(ws.output.shape))

    def backward(self, backend, n_threads, x, ws, dx):
        if dx is not None:
            np.copyto(dx, ws.delta.reshape(dx.shape))

    def __repr__(self):
        return "Flatten()"

    def get_config(self):
        return {"type": "Flatten"}
