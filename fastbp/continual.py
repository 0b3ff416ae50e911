"""Continual learning: guards against catastrophic forgetting, chosen per fit.

``net.fit(X_b, y_b, guard=g)`` trains on a new task while ``g`` protects what
the network learned before:

* ``EWC(lam)``: elastic weight consolidation (Kirkpatrick et al., 2017). After
  a task, ``ewc.consolidate(net, X_a, y_a)`` stores the weights θ* and the
  diagonal of the empirical Fisher information F; a guarded fit then minimises
  loss + (λ/2)·Σ F·(θ − θ*)². The penalty's gradient λ·F·(θ − θ*) is added
  inside the optimizer's step kernel (``fastbp.optim.Penalty``), in the same
  pass over the parameters. Consolidating again accumulates (online EWC):
  F ← γ·F_old + F_new, θ* ← the current weights.
* ``Rehearsal(size, replay_ratio)``: a replay buffer of at most ``size`` past
  samples, kept by reservoir sampling with the network's Generator; every
  batch of b new rows of a guarded fit gets ``round(replay_ratio·b)`` rows
  drawn from the buffer appended, and at the end of the fit the task's samples
  are offered to the buffer.

Fisher diagonal of a Dense layer: the batch loss is the mean of per-sample
losses, so sample i's own δ_i (d loss_i/d z) is the batch delta's row times
n_samples, and its gradient is x_iᵀ·δ_i. Its square, summed over the samples,
is one GEMM of squares: F_W = (x²)ᵀ·(δ²), F_b = Σ_i δ_i² (a GEMM with a column
of ones), both by fastbp's kernels. For a layer where that identity does not
hold (a recurrent layer: its weights are shared over the time steps, so the
gradient is a sum of products, not one product), the Fisher is computed from
per-sample backward passes, one sample at a time: exact, but much slower.

Saved with the model: ``net.save(path, guard=g)`` adds the guard under the
metadata key ``"guard"`` (with its own ``"version"``) and members
``guard.<name>``; files without it load as before; ``load_guard(path)``
reads it back, checking every array header first.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from . import _backend
from . import kernels as _kernels
from .layers.dense import Dense
from .optim import Penalty

__all__ = ["EWC", "Rehearsal", "load_guard"]

GUARD_VERSION = 1
FISHER_BATCH = 256  # rows per forward/backward pass while estimating the Fisher diagonal


def _real(name, value, low=0.0, high=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be finite and {bounds}, got {value}")
    return value


# ---------------------------------------------------------------- EWC
class EWC:
    """Elastic weight consolidation: penalise moving the weights that mattered for past tasks.

    Parameters
    ----------
    lam : float >= 0
        λ, the penalty's strength: the loss becomes loss + (λ/2)·Σ F·(θ − θ*)².
    gamma : float in [0, 1]
        Decay of the old Fisher diagonal when consolidating again (online EWC):
        F ← γ·F_old + F_new. 1 keeps every task's weight.

    Attributes
    ----------
    fisher : ndarray of shape (n_params,) or None
        The accumulated diagonal of the empirical Fisher information, in the
        network's dtype; None before ``consolidate``.
    anchor : ndarray of shape (n_params,) or None
        θ*, the weights at the last consolidation.
    n_tasks : int
        Consolidations done.
    """

    kind = "EWC"

    def __init__(self, lam=100.0, gamma=1.0):
        self.lam = _real("lam", lam)
        self.gamma = _real("gamma", gamma, 0.0, 1.0)
        self.fisher = self.anchor = None
        self.n_tasks = 0

    def __repr__(self):
        return f"EWC(lam={self.lam!r}, gamma={self.gamma!r}, n_tasks={self.n_tasks})"

    def consolidate(self, net, X, y, batch_size=FISHER_BATCH):
        """Store θ* and add the empirical Fisher diagonal of ``net`` on (X, y) to ``fisher``.

        Parameters
        ----------
        net : Network
            Trained on the task (by ``fit`` or loaded from a file).
        X : array-like of shape (n_samples, n_inputs)
            The task's samples (or a representative subset).
        y : array-like
            Their targets, as ``fit`` takes them.
        batch_size : int >= 1
            Rows per pass.

        Returns
        -------
        self
        """
        from ._training import check_count

        if not getattr(net, "_trained", False):
            raise RuntimeError("consolidate needs a trained network: call fit (or load one) first; "
                               "a Fisher diagonal of the initial random weights protects nothing")
        X = net._check_X(X)
        y, loss_kernel = net._check_y(y, X.shape[0], n_steps=net._n_steps(X))
        batch_size = check_count("batch_size", batch_size)
        if X.shape[0] == 0:
            raise ValueError("consolidate needs at least one sample")
        if self.fisher is not None and (self.fisher.shape != net.params.shape or self.fisher.dtype != net.dtype):
            raise ValueError(f"this EWC holds a Fisher diagonal of {self.fisher.size} {self.fisher.dtype} values; "
                             f"the network has {net.n_params} {net.dtype} parameters")
        fisher = fisher_diagonal(net, X, y, loss_kernel, batch_size)
        if self.fisher is None:
            self.fisher = fisher
        else:
            self.fisher *= self.fisher.dtype.type(self.gamma)
            self.fisher += fisher
        self.anchor = net.params.copy()
        self.n_tasks += 1
        return self

    def penalty(self, net):
        """The optimizer's ``Penalty`` for a fit of ``net``; None before the first consolidation."""
        if self.fisher is None:
            return None
        if self.fisher.shape != net.params.shape or self.fisher.dtype != net.dtype:
            raise ValueError(f"guard: this EWC was consolidated on {self.fisher.size} {self.fisher.dtype} "
                             f"parameters; the network has {net.n_params} {net.dtype} parameters")
        return Penalty(self.fisher, self.anchor, self.lam)

    def penalty_value(self, net):
        """(λ/2)·Σ F·(θ − θ*)² at the network's current weights (0.0 before consolidating)."""
        if self.fisher is None:
            return 0.0
        d = net.params.astype(np.float64) - self.anchor
        return 0.5 * self.lam * float(np.dot(self.fisher.astype(np.float64), d * d))

    # fit's hooks
    def begin_fit(self, net, args):
        args.optimizer.penalty = self.penalty(net)

    def end_fit(self, net, args):
        args.optimizer.penalty = None

    # persistence
    def _state(self):
        config = {"type": self.kind, "version": GUARD_VERSION, "lam": self.lam, "gamma": self.gamma,
                  "n_tasks": self.n_tasks, "consolidated": self.fisher is not None}
        arrays = {} if self.fisher is None else {"guard.fisher": self.fisher, "guard.anchor": self.anchor}
        return config, arrays

    @classmethod
    def _from_state(cls, config, read, n_params, dtype):
        guard = cls(config["lam"], config["gamma"])
        guard.n_tasks = _count(config, "n_tasks")
        if config.get("consolidated"):
            guard.fisher = read("guard.fisher", (n_params,), dtype)
            guard.anchor = read("guard.anchor", (n_params,), dtype)
        return guard


def fisher_diagonal(net, X, y, loss_kernel, batch_size=FISHER_BATCH):
    """The empirical Fisher diagonal (1/n)·Σ_i g_i², g_i sample i's loss gradient; shape (n_params,).

    Dense layers: one GEMM of squares per batch (see the module docstring);
    any other layer with parameters: per-sample backward passes.
    """
    fisher = np.zeros_like(net.params)
    n_samples = X.shape[0]
    dense_only = all(isinstance(layer, Dense) or layer.n_params == 0 for layer in net.layers)
    if dense_only and not net.sequence_input:
        _fisher_dense(net, X, y, loss_kernel, batch_size, fisher)
    else:
        _fisher_per_sample(net, X, y, loss_kernel, fisher)
    fisher /= fisher.dtype.type(n_samples)
    net._cache = None
    return fisher


def _flat_view(net, flat, arr):
    """The slice of ``flat`` (shape of net.params) where ``arr``, a view of net.params, lies."""
    offset = (arr.__array_interface__["data"][0] - net.params.__array_interface__["data"][0]) // arr.itemsize
    return flat[offset:offset + arr.size].reshape(arr.shape)


def _fisher_dense(net, X, y, loss_kernel, batch_size, fisher):
    backend, n_threads = _backend.runtime()
    layers = [(i, layer, _flat_view(net, fisher, layer.W), _flat_view(net, fisher, layer.b).reshape(1, -1))
              for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]
    for start in range(0, X.shape[0], batch_size):
        x, t = X[start:start + batch_size], y[start:start + batch_size]
        m = x.shape[0]
        ws = net._workspace(x.shape)
        net._forward(ws, x, backend, n_threads)
        net._loss(ws, t, loss_kernel, backend, n_threads)
        net._backward(ws, x, backend, n_threads)
        ones = np.ones((m, 1), net.dtype)
        scale = net.dtype.type(m)  # δ of the batch-mean loss times m: each sample's own δ
        for i, layer, fisher_w, fisher_b in layers:
            x_in = ws.layers[i - 1].output if i else x
            x_sq = x_in * x_in
            delta_sq = ws.layers[i].delta * scale
            delta_sq *= delta_sq
            _kernels.gemm(x_sq, delta_sq, out=fisher_w, trans_a=True, beta=1.0)  # += (x²)ᵀ·(δ²)
            _kernels.gemm(ones, delta_sq, out=fisher_b, trans_a=True, beta=1.0)  # += Σ_rows δ²


def _fisher_per_sample(net, X, y, loss_kernel, fisher):
    backend, n_threads = _backend.runtime()
    ws = net._workspace((1,) + X.shape[1:])
    for i in range(X.shape[0]):
        x = X[i:i + 1]
        net._forward(ws, x, backend, n_threads)
        net._loss(ws, y[i:i + 1], loss_kernel, backend, n_threads)
        net._backward(ws, x, backend, n_threads)
        fisher += net.grads * net.grads


# ---------------------------------------------------------------- rehearsal
class Rehearsal:
    """A bounded replay buffer of past samples, mixed into every batch of a guarded fit.

    Parameters
    ----------
    size : int >= 0
        The most samples kept. Reservoir sampling (Vitter's algorithm R) with
        the network's Generator keeps a uniform sample of everything offered.
    replay_ratio : float >= 0
        Each batch of b new rows gets ``round(replay_ratio·b)`` buffered rows
        appended (drawn with replacement): 1.0 means half of every training
        batch is replayed.

    Attributes
    ----------
    X : ndarray of shape (n_kept, ...) in the network's dtype, or None
    y : ndarray of shape (n_kept, ...) (the checked targets: class indices or rows), or None
    n_seen : int
        Samples offered so far.
    """

    kind = "Rehearsal"

    def __init__(self, size, replay_ratio=1.0):
        if isinstance(size, (bool, np.bool_)) or not hasattr(size, "__index__"):
            raise TypeError(f"size must be an integer, got {size!r}")
        if int(size) < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = int(size)
        self.replay_ratio = _real("replay_ratio", replay_ratio)
        self.X = self.y = None
        self.n_kept = self.n_seen = 0

    def __repr__(self):
        return f"Rehearsal(size={self.size}, replay_ratio={self.replay_ratio!r}, n_kept={self.n_kept})"

    def _check_samples(self, net, X, y):
        X = net._check_X(X)
        y, _ = net._check_y(y, X.shape[0], n_steps=net._n_steps(X))
        if self.X is not None and (X.shape[1:] != self.X.shape[1:] or X.dtype != self.X.dtype):
            raise ValueError(f"rehearsal: samples of shape {X.shape[1:]} ({X.dtype}) do not match the buffer's "
                             f"{self.X.shape[1:]} ({self.X.dtype})")
        if self.y is not None and (y.shape[1:] != self.y.shape[1:] or y.dtype != self.y.dtype):
            raise ValueError(f"rehearsal: targets of shape {y.shape[1:]} ({y.dtype}) do not match the buffer's "
                             f"{self.y.shape[1:]} ({self.y.dtype}); pass them as the earlier tasks' were")
        return X, y

    def add(self, net, X, y):
        """Offer (X, y) to the buffer (reservoir sampling with ``net``'s Generator); checked first.

        Returns
        -------
        self
        """
        X, y = self._check_samples(net, X, y)
        self._add_checked(net, X, y)
        return self

    def _add_checked(self, net, X, y):
        if self.size == 0:
            self.n_seen += X.shape[0]
            return
        if self.X is None:
            self.X = np.empty((self.size,) + X.shape[1:], X.dtype)
            self.y = np.empty((self.size,) + y.shape[1:], y.dtype)
        fill = min(self.size - self.n_kept, X.shape[0])  # the first `size` samples go in directly
        self.X[self.n_kept:self.n_kept + fill] = X[:fill]
        self.y[self.n_kept:self.n_kept + fill] = y[:fill]
        self.n_kept += fill
        self.n_seen += fill
        rest = X.shape[0] - fill
        if rest:  # sample t (0-based, t >= size) replaces slot j ~ U{0..t} when j < size
            t = self.n_seen + np.arange(rest)
            slots = net._rng.integers(0, t + 1)
            for i in np.flatnonzero(slots < self.size):  # in order: a later sample wins its slot
                self.X[slots[i]] = X[fill + i]
                self.y[slots[i]] = y[fill + i]
            self.n_seen += rest

    def replay_rows(self, batch_size):
        """Rows appended to a batch of ``batch_size`` new rows (0 while the buffer is empty)."""
        return int(round(self.replay_ratio * batch_size)) if self.n_kept else 0

    # fit's hooks
    def begin_fit(self, net, args):
        if self.X is not None:
            if args.X.shape[1:] != self.X.shape[1:] or args.X.dtype != self.X.dtype \
                    or args.y.shape[1:] != self.y.shape[1:] or args.y.dtype != self.y.dtype:
                raise ValueError(f"guard: the buffer holds samples {self.X.shape[1:]} / targets {self.y.shape[1:]} "
                                 f"({self.y.dtype}); this fit's are {args.X.shape[1:]} / {args.y.shape[1:]} "
                                 f"({args.y.dtype})")

    def end_fit(self, net, args):
        self._add_checked(net, args.X, args.y)

    def mix(self, net, x, y, x_out, y_out):
        """x_out := [x; k buffered rows], y_out likewise, the rows drawn with ``net``'s Generator."""
        m = x.shape[0]
        k = x_out.shape[0] - m
        x_out[:m], y_out[:m] = x, y
        idx = net._rng.integers(0, self.n_kept, k)
        np.take(self.X, idx, axis=0, out=x_out[m:])
        np.take(self.y, idx, axis=0, out=y_out[m:])

    # persistence
    def _state(self):
        config = {"type": self.kind, "version": GUARD_VERSION, "size": self.size,
                  "replay_ratio": self.replay_ratio, "n_kept": self.n_kept, "n_seen": self.n_seen,
                  "target_dtype": None if self.y is None else self.y.dtype.name,
                  "target_shape": None if self.y is None else list(self.y.shape[1:]),
                  "sample_shape": None if self.X is None else list(self.X.shape[1:])}
        arrays = {} if self.X is None else {"guard.X": self.X, "guard.y": self.y}
        return config, arrays

    @classmethod
    def _from_state(cls, config, read, n_params, dtype):
        guard = cls(config["size"], config["replay_ratio"])
        guard.n_kept, guard.n_seen = _count(config, "n_kept"), _count(config, "n_seen")
        if guard.n_kept > guard.size or guard.n_seen < guard.n_kept:
            raise ValueError(f"guard: n_kept {guard.n_kept}, n_seen {guard.n_seen} and size {guard.size} disagree")
        if config.get("sample_shape") is not None:
            sample_shape = tuple(_count({"s": s}, "s") for s in config["sample_shape"])
            target_shape = tuple(_count({"s": s}, "s") for s in config["target_shape"])
            target_dtype = np.dtype(config["target_dtype"])
            if target_dtype.kind not in "if":
                raise ValueError(f"guard: target dtype {target_dtype} is not numeric")
            guard.X = read("guard.X", (guard.size,) + sample_shape, dtype)
            guard.y = read("guard.y", (guard.size,) + target_shape, target_dtype)
        elif guard.n_kept:
            raise ValueError("guard: n_kept > 0 but no buffer saved")
        return guard


def _count(config, key):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"guard: {key!r} must be an integer >= 0, got {value!r}")
    return value


GUARD_TYPES = {cls.kind: cls for cls in (EWC, Rehearsal)}


def check_guard(guard):
    """fit's ``guard`` argument: None, an EWC or a Rehearsal."""
    if guard is not None and not isinstance(guard, tuple(GUARD_TYPES.values())):
        raise TypeError(f"guard must be None, fb.EWC(...) or fb.Rehearsal(...), got {type(guard).__name__}")
    return guard


# ---------------------------------------------------------------- persistence
def guard_state(guard):
    """(metadata entry, arrays) that ``fastbp.save`` adds for ``guard``."""
    return guard._state()


def load_guard(path):
    """The guard saved with ``net.save(path, guard=...)``; None if the file holds none.

    Every array's header is checked against the shapes the metadata implies before it is read.
    """
    from . import serialization as S

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        file_size = os.path.getsize(path)
        with S._open_archive(path) as archive:
            metadata = S._read_metadata(archive, file_size)
            config = metadata.get("guard")
            if config is None:
                return None
            if not isinstance(config, dict) or config.get("type") not in GUARD_TYPES:
                raise ValueError(f"its guard must be one of {sorted(GUARD_TYPES)}, got {config!r}")
            if config.get("version") != GUARD_VERSION:
                raise ValueError(f"its guard has version {config.get('version')!r}; this fastbp reads {GUARD_VERSION}")
            layers = S._layers_from_metadata(metadata["layers"])
            n_params = sum(layer.n_params for layer in layers)

            def read(name, shape, dtype):
                S._check_array_header(archive, name, shape, dtype, file_size)
                return S._read_array(archive, name)

            return GUARD_TYPES[config["type"]]._from_state(config, read, n_params, np.dtype(metadata["dtype"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path!r} holds no valid fastbp guard: {exc}") from exc
