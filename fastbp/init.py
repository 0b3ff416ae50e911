"""Weight initialisers: name -> function drawing a (fan_in, fan_out) matrix.

Each initialiser draws in float64 from the network's seeded Generator and
writes into the layer's weight view, so a seed gives the same weights (up to
rounding to the dtype) for float32 and float64, and the same stream of random
numbers whatever the thread count.
"""

import math

import numpy as np

# Activations whose gain calls for He (Kaiming) scaling: they zero or shrink
# half of their input range. Every other activation gets Glorot (Xavier).
RELU_LIKE = frozenset({"relu", "leaky_relu", "elu", "gelu"})


def he_uniform(rng, fan_in, fan_out):
    """U(-√(6/fan_in), √(6/fan_in)), He et al. 2015; array of shape (fan_in, fan_out)."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def he_normal(rng, fan_in, fan_out):
    """N(0, 2/fan_in), He et al. 2015; array of shape (fan_in, fan_out)."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def glorot_uniform(rng, fan_in, fan_out):
    """U(-√(6/(fan_in+fan_out)), +...), Glorot & Bengio 2010; array of shape (fan_in, fan_out)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def glorot_normal(rng, fan_in, fan_out):
    """N(0, 2/(fan_in+fan_out)), Glorot & Bengio 2010; array of shape (fan_in, fan_out)."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


INITIALIZERS = {
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
}
ALIASES = {
    "kaiming_uniform": "he_uniform",
    "kaiming_normal": "he_normal",
    "xavier_uniform": "glorot_uniform",
    "xavier_normal": "glorot_normal",
}
NAMES = ("auto",) + tuple(INITIALIZERS) + tuple(ALIASES)


def resolve(init, activation):
    """The initialiser name ``init`` stands for: ``"auto"`` is He uniform for
    relu-like activations and Glorot uniform otherwise; aliases map to their
    canonical name. Raises ValueError listing the known names."""
    if init == "auto":
        return "he_uniform" if activation in RELU_LIKE else "glorot_uniform"
    init = ALIASES.get(init, init) if isinstance(init, str) else init
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; known initialisers: {', '.join(NAMES)}")
    return init


def initialize(weights, init, rng):
    """Fill ``weights`` (array of shape (fan_in, fan_out)) in place with initialiser ``init``."""
    fan_in, fan_out = weights.shape
    weights[...] = INITIALIZERS[init](rng, fan_in, fan_out)
    return weights
