"""Optimizers with torch.optim's update rules, on flat parameter buffers.

Every parameter of a network lives in one flat vector and every gradient in
another (see ``Network``), so an optimizer step is ONE kernel call over the
whole vector, whatever the number of layers. Each optimizer validates its
hyperparameters in ``__init__``, keeps its state in a named structure of flat
buffers the size of the parameters, and delegates ``step()`` to a functional
update (``sgd``, ``rmsprop``, ``adam``) that calls the current backend's fused
kernel.

Gradient clipping is an optimizer option, as in Keras: ``clip_value`` clamps
each gradient to [-clip_value, clip_value], then ``clip_norm`` rescales the
whole gradient vector to global L2 norm at most ``clip_norm`` (the factor is
``clip_norm / (norm + 1e-6)``, as ``torch.nn.utils.clip_grad_norm_``). Both act
in place on the gradients, before weight decay is added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Tuple, Union

import numpy as np
from numpy.typing import NDArray

from . import _backend

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "SGDState", "RMSpropState", "AdamState",
           "sgd", "rmsprop", "adam", "clip_grads"]


FloatArray = NDArray[np.floating]  # float32 or float64, 1-D, C-contiguous: the flat buffers
# What an optimizer takes: a Network, any object whose .parameters() returns the pair, or the pair.
Parameters = Union["HasParameters", Tuple[FloatArray, FloatArray]]


class HasParameters(Protocol):
    """What ``Optimizer`` reads from a Network (or any model): ``parameters()`` -> the flat (params, grads) pair."""

    def parameters(self) -> Tuple[FloatArray, FloatArray]: ...


# ---------------------------------------------------------------- state
@dataclass
class SGDState:
    """velocity : ndarray of shape (n_params,), the momentum buffer (zeros at start)."""
    velocity: FloatArray


@dataclass
class RMSpropState:
    """square_avg : ndarray of shape (n_params,), the running mean of g² (zeros at start)."""
    square_avg: FloatArray


@dataclass
class AdamState:
    """step : int, updates done; exp_avg, exp_avg_sq : ndarrays of shape (n_params,)."""
    step: int
    exp_avg: FloatArray
    exp_avg_sq: FloatArray


@dataclass
class Penalty:
    """Elastic weight consolidation's quadratic penalty (λ/2)·Σ F·(θ − θ*)², whose gradient
    ``lam·fisher·(params - anchor)`` the step kernels add to the gradient after the weight decay,
    in the same pass (``fastbp.continual.EWC`` builds it; trusted here).

    fisher, anchor : ndarrays of shape (n_params,) in the parameters' dtype; lam : float >= 0.
    """
    fisher: FloatArray
    anchor: FloatArray
    lam: float


def _penalty_arguments(penalty):
    return {} if penalty is None else {"fisher": penalty.fisher, "anchor": penalty.anchor, "lam": penalty.lam}


# ---------------------------------------------------------------- functional updates
# One call each, in place; arguments are trusted (the optimizers validated them).
# Each returns whether the step was applied: the kernels write nothing when the
# gradient or a new parameter or state value would be NaN or infinite.
def sgd(params: FloatArray, grads: FloatArray, state: SGDState, *, lr: float, momentum: float = 0.0,
        nesterov: bool = False, weight_decay: float = 0.0, penalty: Optional[Penalty] = None) -> bool:
    """One SGD step in place on flat buffers (torch.optim.SGD, dampening 0); see ``SGD``."""
    backend, n_threads = _backend.runtime()
    return backend.sgd_step(params, grads, state.velocity, lr, momentum, nesterov, weight_decay, n_threads,
                            **_penalty_arguments(penalty))


def rmsprop(params: FloatArray, grads: FloatArray, state: RMSpropState, *, lr: float, rho: float = 0.9,
            eps: float = 1e-8, weight_decay: float = 0.0, penalty: Optional[Penalty] = None) -> bool:
    """One RMSprop step in place on flat buffers (torch.optim.RMSprop); see ``RMSprop``."""
    backend, n_threads = _backend.runtime()
    return backend.rmsprop_step(params, grads, state.square_avg, lr, rho, eps, weight_decay, n_threads,
                                **_penalty_arguments(penalty))


def adam(params: FloatArray, grads: FloatArray, state: AdamState, *, lr: float, beta1: float = 0.9,
         beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
         penalty: Optional[Penalty] = None) -> bool:
    """One Adam step in place on flat buffers (torch.optim.Adam); increments ``state.step`` if applied."""
    backend, n_threads = _backend.runtime()
    applied = backend.adam_step(params, grads, state.exp_avg, state.exp_avg_sq, lr, beta1, beta2, eps,
                                weight_decay, state.step + 1, n_threads, **_penalty_arguments(penalty))
    if applied:
        state.step += 1
    return applied


def clip_grads(grads: FloatArray, clip_norm: Optional[float] = None,
               clip_value: Optional[float] = None) -> Optional[float]:
    """Clip ``grads`` (ndarray of shape (n_params,)) in place: by value, then by global norm.

    Returns the global L2 norm before norm clipping (None if ``clip_norm`` is None).
    The norm is right even where the sum of squares overflows (from a norm of about
    1.8e19 in float32, 1.3e154 in float64): exploding gradients are scaled, never zeroed.
    """
    if clip_value is not None:
        np.clip(grads, -clip_value, clip_value, out=grads)
    if clip_norm is None:
        return None
    norm = _global_norm(grads)
    if norm > clip_norm:
        factor = clip_norm / (norm + 1e-6)
        if factor >= np.finfo(grads.dtype).tiny:
            grads *= factor
        else:  # a subnormal factor in float32 would lose bits: multiply in float64, round once
            np.multiply(grads, factor, out=grads, dtype=np.float64, casting="same_kind")
    return norm


def _global_norm(grads: FloatArray) -> float:
    """‖grads‖₂ as a Python float, without overflow (LAPACK nrm2's scaling, when it is needed)."""
    # einsum's own loop, not BLAS: a threaded BLAS dot leaves its threads spinning on the
    # cores the kernels' OpenMP threads need next (and it is single-threaded: deterministic).
    sum_of_squares = float(np.einsum("i,i->", grads, grads))
    if math.isfinite(sum_of_squares):  # the usual case: one pass
        return math.sqrt(sum_of_squares)
    # The squares overflowed, or a gradient is inf/NaN. Scaled by the largest |g_i|,
    # every square is at most 1 and the sum at most n: ‖g‖ = s·‖g/s‖.
    scale = float(np.max(np.abs(grads)))
    if not math.isfinite(scale) or math.isnan(sum_of_squares):
        return sum_of_squares if math.isnan(sum_of_squares) else scale
    scaled = grads / grads.dtype.type(scale)
    return scale * math.sqrt(float(np.einsum("i,i->", scaled, scaled)))


# ---------------------------------------------------------------- optimizers
def _nonnegative(what, value, upper=None, upper_open=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Invalid {what}: {value!r} (must be a real number)")
    value = float(value)
    if not (value >= 0.0) or not math.isfinite(value) or (upper is not None and (
            value >= upper if upper_open else value > upper)):
        raise ValueError(f"Invalid {what}: {value}")
    return value


def _flat_parameters(params):
    """The (params, grads) pair of a Network, of an object with ``.parameters()``, or given as a pair."""
    pair = params.parameters() if hasattr(params, "parameters") else params
    try:
        p, g = pair
    except (TypeError, ValueError):
        raise TypeError(
            "an optimizer needs a Network, an object whose .parameters() returns the flat "
            f"(params, grads) pair, or that pair; got {type(params).__name__}"
        ) from None
    for name, arr in (("params", p), ("grads", g)):
        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float64) or arr.ndim != 1:
            raise TypeError(f"{name} must be a 1-D float32 or float64 ndarray")
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            raise ValueError(f"{name} must be writable and C-contiguous")
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"grads ({g.shape}, {g.dtype}) must match params ({p.shape}, {p.dtype})")
    if np.may_share_memory(p, g):
        raise ValueError("params and grads must not overlap")
    return p, g


class Optimizer:
    """Base class: holds the flat (params, grads) pair, ``lr``, weight decay and clipping.

    Parameters
    ----------
    params : Network, object with ``.parameters()``, or (params, grads) pair
        Flat float32/float64 ndarrays of shape (n_params,), updated in place.
    lr : float >= 0
        Learning rate; may be changed between steps (schedules set it).
    weight_decay : float >= 0
        L2 penalty: ``weight_decay·param`` is added to the gradient (torch.optim's coupled decay).
    clip_norm : float > 0 or None
        Rescale the gradient vector to global L2 norm at most ``clip_norm`` before each step.
    clip_value : float > 0 or None
        Clamp each gradient to [-clip_value, clip_value] before each step.
    """

    def __init__(self, params: Parameters, lr: float, weight_decay: float = 0.0,
                 clip_norm: Optional[float] = None, clip_value: Optional[float] = None) -> None:
        self.lr = lr
        self.weight_decay = _nonnegative("weight_decay value", weight_decay)
        for name, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if value is not None and _nonnegative(f"{name} value", value) == 0.0:
                raise ValueError(f"Invalid {name} value: {value} (must be > 0, or None)")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.params, self.grads = _flat_parameters(params)
        self.penalty = None  # an EWC Penalty while a guarded fit runs (fastbp.continual)

    @property
    def lr(self) -> float:
        """Learning rate, a float >= 0; setting it validates it."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _nonnegative("learning rate", value)

    def zero_grad(self) -> None:
        """Set every gradient to zero (backward overwrites them, so training never needs this)."""
        self.grads.fill(0)

    def step(self) -> None:
        """Clip the gradients if asked, then update the parameters in place, one kernel call.

        Raises
        ------
        FloatingPointError
            If a gradient, or the updated value of a parameter or of the optimizer's
            state, would be NaN or infinite; the parameters and the state are then
            left exactly as they were (the gradients may have been clipped).
        """
        if self.clip_norm is not None or self.clip_value is not None:
            clip_grads(self.grads, self.clip_norm, self.clip_value)
        if not self._update():
            raise FloatingPointError(
                f"{type(self).__name__}.step: a gradient or the update is NaN or infinite; "
                "the parameters and the optimizer state were left unchanged")

    def _update(self):
        """Apply one step with the functional update; return whether it was applied."""
        raise NotImplementedError

    def _zeros(self):
        return np.zeros_like(self.params)

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({hyper})"

    def _hyperparameters(self):
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def get_config(self):
        """The constructor's keyword arguments (but ``params``), as a JSON-serialisable dict.

        ``type(opt)(network, **opt.get_config())`` builds an optimizer with the same
        hyperparameters and a fresh state; checkpoints store this and ``state``.
        """
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self._hyperparameters().items()}
        return dict(config, clip_norm=self.clip_norm, clip_value=self.clip_value)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, torch.optim.SGD's rule.

    With ``g = grad + weight_decay·param``, each step does::

        velocity = momentum·velocity + g                  (if momentum > 0; velocity starts at 0)
        g = g + momentum·velocity  if nesterov  else  velocity
        param = param - lr·g

    Parameters
    ----------
    params : Network, object with ``.parameters()``, or (params, grads) pair
    lr : float >= 0
    momentum : float >= 0
    nesterov : bool
        Nesterov momentum; needs ``momentum > 0``.
    weight_decay, clip_norm, clip_value : see ``Optimizer``

    Attributes
    ----------
    state : SGDState
        ``velocity``, ndarray of shape (n_params,).
    """

    def __init__(self, params: Parameters, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, clip_norm: Optional[float] = None,
                 clip_value: Optional[float] = None) -> None:
        self.momentum = _nonnegative("momentum value", momentum)
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.nesterov = bool(nesterov)
        super().__init__(params, lr, weight_decay, clip_norm, clip_value)
        self.state = SGDState(velocity=self._zeros())

    def _update(self):
        return sgd(self.params, self.grads, self.state, lr=self.lr, momentum=self.momentum,
            nesterov=self.nesterov, weight_decay=self.weight_decay, penalty=self.penalty)

    def _hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """RMSprop, torch.optim.RMSprop's rule (eps outside the square root, no momentum, not centered).

    With ``g = grad + weight_decay·param``, each step does::

        square_avg = rho·square_avg + (1 - rho)·g²        (square_avg starts at 0)
        param = param - lr·g / (√square_avg + eps)

    Parameters
    ----------
    params : Network, object with ``.parameters()``, or (params, grads) pair
    lr : float >= 0
    rho : float in [0, 1)
        Decay of the running mean of g² (``alpha`` in torch.optim, ``rho`` in Keras).
    eps : float >= 0
    weight_decay, clip_norm, clip_value : see ``Optimizer``

    Attributes
    ----------
    state : RMSpropState
        ``square_avg``, ndarray of shape (n_params,).
    """

    def __init__(self, params: Parameters, lr: float = 0.01, rho: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_norm: Optional[float] = None,
                 clip_value: Optional[float] = None) -> None:
        self.rho = _nonnegative("rho value", rho, upper=1.0, upper_open=True)
        self.eps = _nonnegative("epsilon value", eps)
        super().__init__(params, lr, weight_decay, clip_norm, clip_value)
        self.state = RMSpropState(square_avg=self._zeros())

    def _update(self):
        return rmsprop(self.params, self.grads, self.state, lr=self.lr, rho=self.rho, eps=self.eps,
                weight_decay=self.weight_decay, penalty=self.penalty)

    def _hyperparameters(self):
        return {"lr": self.lr, "rho": self.rho, "eps": self.eps, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam with bias correction, torch.optim.Adam's rule (amsgrad=False, coupled L2 decay).

    With ``g = grad + weight_decay·param`` and t the step number (1, 2, ...)::

        exp_avg    = beta1·exp_avg    + (1 - beta1)·g
        exp_avg_sq = beta2·exp_avg_sq + (1 - beta2)·g²
        param = param - lr/(1 - beta1^t) · exp_avg / (√exp_avg_sq / √(1 - beta2^t) + eps)

    Parameters
    ----------
    params : Network, object with ``.parameters()``, or (params, grads) pair
    lr : float >= 0
    betas : (float, float), each in [0, 1)
    eps : float >= 0
    weight_decay, clip_norm, clip_value : see ``Optimizer``

    Attributes
    ----------
    state : AdamState
        ``step`` (int) and ``exp_avg``, ``exp_avg_sq``, ndarrays of shape (n_params,).
    """

    def __init__(self, params: Parameters, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, clip_norm: Optional[float] = None,
                 clip_value: Optional[float] = None) -> None:
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
        self.betas = tuple(_nonnegative(f"beta parameter at index {i}", beta, upper=1.0, upper_open=True)
                           for i, beta in enumerate((beta1, beta2)))
        self.eps = _nonnegative("epsilon value", eps)
        super().__init__(params, lr, weight_decay, clip_norm, clip_value)
        self.state = AdamState(step=0, exp_avg=self._zeros(), exp_avg_sq=self._zeros())

    def _update(self):
        return adam(self.params, self.grads, self.state, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
             eps=self.eps, weight_decay=self.weight_decay, penalty=self.penalty)

    def _hyperparameters(self):
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}
