"""The layer protocol: what a layer type declares so that ``Network``, its
workspace, the training loop, copies and save/load handle it with no edit.

A layer type is one module holding one subclass of ``Layer``, registered by
name with ``@register_layer``, that declares

* its parameters: ``parameter_shapes()`` -> [(name, shape)] in storage order.
  ``Network`` gives each layer its slice of the flat ``params``/``grads``
  vectors; ``bind`` makes each name a view of that slice (``layer.param("W")``,
  ``layer.grad("W")``), and the ``Parameter``/``Gradient`` descriptors expose
  them as attributes (``W``, ``dW``). An optimizer step is one kernel call over
  the whole flat vector, so a layer needs nothing for training but its views;
* its shapes: ``output_shape(input_shape)`` maps the shape of a batch, rows
  first, to the shape of its output, or raises a ValueError naming the layer
  and the shapes; ``n_in``/``n_out`` (None when not fixed) let ``Network``
  check how layers chain before any data is seen;
* its workspace: ``workspace(input_shape, dtype)`` allocates, once per batch
  shape, an object with ``output`` and ``delta`` (arrays of the output shape)
  and whatever else forward keeps for backward;
* its passes, side by side, on trusted arguments (C-contiguous arrays of the
  network's dtype whose shapes ``output_shape`` accepted):
  ``forward(backend, n_threads, x, ws)`` writes ``ws.output``;
  ``backward(backend, n_threads, x, ws, dx)`` reads d loss/d output from
  ``ws.delta`` (and may overwrite it), writes every parameter gradient
  (``grad(name)`` views) and, unless ``dx`` is None (the first layer), d
  loss/d x into ``dx``. ``backend`` is the kernel module that
  ``fastbp._backend.runtime()`` returns, so a pass calls compiled kernels
  directly, with no per-step checks;
* its configuration: ``get_config()`` -> {"type": name, **constructor
  arguments}, JSON-serialisable; ``from_config`` (by default ``cls(**args)``)
  reads it back. ``layer_from_config`` looks the type up in ``LAYER_TYPES``.

``initialize(rng)`` draws the initial values into the bound views (in layer
order from the network's seeded Generator). See README "Adding a layer".
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Layer", "Parameter", "Gradient", "LayerWorkspace", "register_layer", "layer_from_config", "LAYER_TYPES"]

# Layer type name (the "type" of its config) -> class; filled by @register_layer.
LAYER_TYPES: Dict[str, type] = {}


def register_layer(cls):
    """Class decorator: make ``cls`` loadable by the name ``cls.__name__`` (its configs' "type")."""
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer takes a subclass of fastbp.layers.Layer, got {cls!r}")
    LAYER_TYPES[cls.__name__] = cls
    return cls


def layer_from_config(config):
    """A new layer (no storage yet) from ``get_config()``'s dict, its type looked up in ``LAYER_TYPES``."""
    kind = config.get("type")
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown layer type {kind!r}; known types: {', '.join(sorted(LAYER_TYPES))}")
    return cls.from_config(config)


class Parameter:
    """Descriptor: attribute ``name`` of a layer reads its bound parameter view; assigning copies into it."""

    def __init__(self, name):
        self.name = name

    def __get__(self, layer, owner=None):
        return self if layer is None else layer.param(self.name)

    def __set__(self, layer, value):
        view = layer.param(self.name)
        if view is None:
            raise ValueError(f"{layer!r} has no parameters until it is part of a Network")
        if getattr(value, "shape", None) != view.shape:
            raise ValueError(f"{self.name} must have shape {view.shape}, "
                             f"got {getattr(value, 'shape', type(value).__name__)}")
        view[...] = value


class Gradient:
    """Descriptor: attribute ``d<name>`` of a layer reads the gradient view of parameter ``name`` (read-only)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, layer, owner=None):
        return self if layer is None else layer.grad(self.name)


class LayerWorkspace:
    """A layer's per-batch-shape buffers: ``output`` and ``delta`` (d loss/d output), plus named caches."""

    def __init__(self, output, delta, **caches):
        self.output, self.delta = output, delta
        self.__dict__.update(caches)


class Layer:
    """Base class and documented interface of every fastbp layer (see the module docstring).

    Subclasses implement ``parameter_shapes``, ``output_shape``, ``workspace``,
    ``forward``, ``backward`` and ``get_config``; the rest is shared.
    """

    #: Number of input features (last axis of the input) when fixed, else None (any).
    n_in: Optional[int] = None
    #: Number of output features (last axis of the output) when fixed, else None.
    n_out: Optional[int] = None
    #: Whether the layer takes a batch of sequences (n_samples, n_steps, n_in): first, or after a
    #: layer whose output is a sequence (``output_is_sequence``).
    sequence_input = False
    #: Whether the layer applies to each row of the last axis alone (Dense, FixedPoint): it then
    #: takes (n_samples, n_steps, n_in) as well and keeps the time axis.
    per_step = False
    #: Rank of the input batch, rows included (2 for rows of features), or None for any rank >= 2.
    input_rank: Optional[int] = 2

    _params: Optional[Dict[str, np.ndarray]] = None
    _grads: Optional[Dict[str, np.ndarray]] = None

    # ------------------------------------------------------------ declared by each layer type
    def parameter_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """[(name, shape)] of the parameters, in storage order; known before the layer has storage."""
        return []

    def output_features(self, n_in: Optional[int]) -> Optional[int]:
        """Features of the output given ``n_in`` features in (None: unknown until data is seen)."""
        return self.n_out

    def output_is_sequence(self, input_is_sequence: bool) -> bool:
        """Whether the output is a batch of sequences (n_samples, n_steps, features), given the input's."""
        return input_is_sequence and self.per_step

    def output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        """Shape of the output for an input batch of ``input_shape``; ValueError naming the shapes if it cannot take it."""
        raise NotImplementedError

    def workspace(self, input_shape: Tuple[int, ...], dtype: np.dtype) -> LayerWorkspace:
        """Buffers for batches of ``input_shape``: by default only ``output`` and ``delta``."""
        output = np.empty(self.output_shape(input_shape), dtype)
        return LayerWorkspace(output, np.empty_like(output))

    def forward(self, backend, n_threads: int, x: np.ndarray, ws: LayerWorkspace) -> None:
        raise NotImplementedError

    def backward(self, backend, n_threads: int, x: np.ndarray, ws: LayerWorkspace,
                 dx: Optional[np.ndarray]) -> None:
        raise NotImplementedError

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw initial values into the bound parameters (default: leave them zero)."""

    def get_config(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Layer":
        """A new layer from ``get_config()``'s dict: the constructor called with its arguments.

        Raises KeyError naming a required argument the dict lacks; keys that are
        no argument are left out (``load`` then finds that the layer does not
        read back as its config).
        """
        args = {}
        for name, parameter in inspect.signature(cls).parameters.items():
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                continue
            if name in config:
                args[name] = config[name]
            elif parameter.default is parameter.empty:
                raise KeyError(name)
        return cls(**args)

    # ------------------------------------------------------------ storage, shared by every layer
    @property
    def n_params(self) -> int:
        """Number of parameters: the sum of the sizes of ``parameter_shapes()``."""
        return sum(math.prod(shape) for _, shape in self.parameter_shapes())

    def bind(self, params: np.ndarray, grads: np.ndarray) -> None:
        """Take ``params``/``grads`` (1-D views of length ``n_params``) as this layer's storage."""
        if self._params is not None:
            raise ValueError(f"{self!r} already belongs to a Network; create a new layer for each network")
        self._params, self._grads, offset = {}, {}, 0
        for name, shape in self.parameter_shapes():
            end = offset + math.prod(shape)
            self._params[name] = params[offset:end].reshape(shape)
            self._grads[name] = grads[offset:end].reshape(shape)
            offset = end

    def unbound(self) -> "Layer":
        """A shallow copy without storage (what ``bind`` fills): how a Network's copy carries its layers."""
        clone = copy.copy(self)
        clone._params = clone._grads = None
        return clone

    def param(self, name: str) -> Optional[np.ndarray]:
        """The view of parameter ``name``, or None before the layer is part of a Network."""
        return None if self._params is None else self._params[name]

    def grad(self, name: str) -> Optional[np.ndarray]:
        """The view of the gradient of parameter ``name``, or None before the layer is part of a Network."""
        return None if self._grads is None else self._grads[name]

    def parameters(self) -> List[Tuple[str, Optional[np.ndarray], Optional[np.ndarray]]]:
        """[(name, param, grad)] in storage order."""
        return [(name, self.param(name), self.grad(name)) for name, _ in self.parameter_shapes()]

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items() if key != "type")
        return f"{type(self).__name__}({args})"


def per_step_shape(layer, input_shape):
    """The leading axes of an input of a per-step layer: (n_samples,) or (n_samples, n_steps).

    ValueError naming the layer unless ``input_shape`` is (n_samples, n_in) or
    (n_samples, n_steps, n_in) with ``n_in = layer.n_in``.
    """
    if len(input_shape) not in (2, 3) or input_shape[-1] != layer.n_in:
        raise ValueError(f"{layer!r} takes input of shape (n_samples, {layer.n_in}) or, after a layer with "
                         f"return_sequences=True, (n_samples, n_steps, {layer.n_in}); got {tuple(input_shape)}")
    return tuple(input_shape[:-1])


def rows(a):
    """A C-contiguous (..., n) array as its (rows, n) view: how per-step layers run over every step at once."""
    return a.reshape(-1, a.shape[-1])


def check_size(layer, name, value):
    """``value`` as an int >= 1; TypeError/ValueError naming the layer type and the argument."""
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"{layer}: {name} must be an integer, got {type(value).__name__}")
    if int(value) < 1:
        raise ValueError(f"{layer}: {name} must be >= 1, got {value}")
    return int(value)
