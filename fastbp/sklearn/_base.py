"""What MLPClassifier and MLPRegressor share: parameters, checks, the network, fit's plan.

Module map: ``_objective`` (the loss and gradient on fastbp's kernels),
``_stochastic`` (sgd and adam), ``_lbfgs`` (SciPy's L-BFGS-B), ``_estimators``
(label handling, predict, the two public classes).


Follows scikit-learn's ``sklearn/neural_network/_multilayer_perceptron.py``
(parameters, defaults, initialisation, batches, stopping rules, fitted
attributes) with the arithmetic on fastbp: the network is a ``fastbp.Network``
whose flat ``params`` hold every W and b, a step is one ``Objective`` call
(fastbp's compiled loss and gradient) and one fastbp optimizer step (one fused
kernel over the flat vector). ``coefs_`` and ``intercepts_`` are views into the
network's ``params``.

Differences from scikit-learn, on purpose:
* ``sample_weight`` and ``class_weight`` weigh the loss of each sample;
* ``warm_start`` and ``partial_fit`` keep the optimizer's state (Adam's moments
  and step count, SGD's velocity), where scikit-learn restarts it on each
  warm-started ``fit``;
* SGD and Adam follow ``fastbp.SGD``/``fastbp.Adam`` (torch.optim's rules):
  with a constant learning rate SGD's momentum update is scikit-learn's; Adam
  adds ``epsilon`` to √v̂ rather than √v (a difference of order epsilon);
* ``guard`` (fb.EWC or fb.Rehearsal) and ``consolidate(X, y)``: continual
  learning by ``partial_fit``/``warm_start`` (sgd and adam; refused for lbfgs);
* sparse input is refused: fastbp's kernels are dense;
* lbfgs's ``loss_`` is the objective L-BFGS-B minimised; for a regressor with several
  outputs scikit-learn's ``loss_`` is the mean over outputs while its gradient is of
  their sum, and SciPy's line search needs the two to agree.
"""

import contextlib
import copy
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from .. import _backend
from .. import continual as _continual
from ..layers import Dense
from ..network import Network
from ._lbfgs import fit_lbfgs
from ._objective import OUTPUTS, Objective
from ._stochastic import StochasticSolvers

# scikit-learn's hidden activation names -> fastbp's; fastbp's other element-wise ones too.
ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
               "leaky_relu": "leaky_relu", "elu": "elu", "softplus": "softplus", "gelu": "gelu",
               "hardtanh": "hardtanh"}
DTYPES = (np.float32, np.float64)


@contextlib.contextmanager
def runtime(backend, n_threads):
    """Run the block on fastbp ``backend`` with ``n_threads`` threads (None: keep the current ones)."""
    with _backend.backend(backend) if backend is not None else contextlib.nullcontext():
        previous = _backend.get_num_threads()
        if n_threads is not None:
            _backend.set_num_threads(n_threads)
        try:
            yield
        finally:
            _backend.set_num_threads(previous)


class BaseMLP(StochasticSolvers, BaseEstimator):
    """Base class of fastbp's scikit-learn MLPs; use MLPClassifier or MLPRegressor."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "backend": [StrOptions(set(_backend.BACKENDS)), None],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "dtype": "no_validation",  # checked by _resolve_dtype, which names the accepted values
        "guard": "no_validation",  # checked by fastbp.continual.check_guard (TypeError naming guard)
    }

    def __init__(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
                 learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
                 momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2,
                 epsilon, n_iter_no_change, max_fun, backend, n_threads, dtype, guard):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.n_threads = n_threads
        self.dtype = dtype
        self.guard = guard

    # ------------------------------------------------------------ fitted parameters: views
    @property
    def coefs_(self):
        """List of n_layers_ - 1 arrays: the weight matrix of each layer, shape (fan_in, fan_out)."""
        return [layer.W for layer in self._fitted_network().layers]

    @property
    def intercepts_(self):
        """List of n_layers_ - 1 arrays: the bias vector of each layer, shape (fan_out,)."""
        return [layer.b for layer in self._fitted_network().layers]

    def _fitted_network(self):
        try:
            return self.__dict__["_network"]
        except KeyError:
            raise AttributeError(f"This {type(self).__name__} instance is not fitted yet") from None

    # ------------------------------------------------------------ checks
    def _resolve_dtype(self, X_dtype):
        if self.dtype is None:
            return np.dtype(X_dtype) if X_dtype in DTYPES else np.dtype(np.float64)
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in DTYPES:
            raise ValueError(f"The 'dtype' parameter of {type(self).__name__} must be None, 'float32' "
                             f"or 'float64'. Got {self.dtype!r} instead.")
        return dtype

    def _hidden_layer_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(not isinstance(s, (Integral, np.integer)) or isinstance(s, bool) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_runtime(self):
        """Raise now, before anything changes, if ``backend`` cannot load or ``n_threads`` is too many."""
        if self.backend is not None:
            _backend.backend_module(self.backend)  # ImportError naming what is missing
        if self.n_threads is not None and self.n_threads > _backend._max_threads():
            raise ValueError(f"The 'n_threads' parameter of {type(self).__name__} must be at most "
                             f"{_backend._max_threads()} (the usable cores). Got {self.n_threads} instead.")

    def _check_sample_weight(self, sample_weight, X):
        if sample_weight is None:
            return None
        sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        if not sample_weight.sum() > 0:
            raise ValueError("sample_weight must have a positive sum, got "
                             f"{float(sample_weight.sum())}")
        return sample_weight

    def _make_network(self, n_features, n_outputs, dtype):
        """A fresh network, initialised as scikit-learn does (Glorot uniform W and b, from random_state)."""
        units = [n_features] + self._hidden_layer_sizes() + [n_outputs]
        hidden = ACTIVATIONS[self.activation]
        layers = [Dense(fan_in, fan_out, hidden if i < len(units) - 2 else None)
                  for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:]))]
        net = Network(layers, loss=OUTPUTS[self.out_activation_][0], dtype=dtype, seed=0)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for layer in layers:
            bound = np.sqrt(factor / (layer.n_in + layer.n_out))
            layer.W = self._random_state.uniform(-bound, bound, (layer.n_in, layer.n_out))
            layer.b = self._random_state.uniform(-bound, bound, layer.n_out)
        return net

    # ------------------------------------------------------------ fit
    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        """Validate (nothing of a fitted model changes if this raises), then train."""
        saved = dict(self.__dict__)
        try:
            self._validate_params()
            if incremental and self.early_stopping:
                raise ValueError("partial_fit does not support early_stopping=True")
            hidden = self._hidden_layer_sizes()
            first_pass = "_network" not in self.__dict__ or (not self.warm_start and not incremental)
            X, y, targets = self._validate_input(X, y, incremental, reset=first_pass, classes=classes)
            sample_weight = self._check_sample_weight(sample_weight, X)
            n_outputs = targets.shape[1] if targets.ndim == 2 else len(self.classes_)
            fitted_hidden = None if first_pass else [layer.n_out for layer in self._network.layers[:-1]]
            if not first_pass and (self._network.n_outputs != n_outputs or fitted_hidden != hidden):
                raise ValueError(
                    f"warm_start/partial_fit continue the fitted network, which has hidden_layer_sizes="
                    f"{fitted_hidden} and {self._network.n_outputs} outputs; got hidden_layer_sizes={hidden} "
                    f"and {n_outputs} outputs")
            self._check_runtime()
            self._own_guard(first_pass)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(n_outputs, X.shape[1], X.dtype)
        self.n_outputs_ = self._network.n_outputs
        objective = Objective(self._network, self.out_activation_, self.alpha)
        with runtime(self.backend, self.n_threads):
            if self.solver == "lbfgs":
                self.n_iter_, self.loss_ = fit_lbfgs(objective, X, targets, sample_weight, max_iter=self.max_iter,
                                                     max_fun=self.max_fun, tol=self.tol, verbose=self.verbose)
            else:
                self._fit_stochastic(objective, X, y, targets, sample_weight, incremental)
        if not np.isfinite(self._network.params).all():
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        self._network._trained = True  # continual.EWC.consolidate needs a trained network
        return self

    def _own_guard(self, first_pass):
        """``guard_``: the estimator's own deep copy of ``guard``, which fits and consolidate change.

        scikit-learn's rule: fit never changes a parameter. The copy is made at a fresh fit and
        whenever ``guard`` was set to another object since; warm_start, partial_fit and
        consolidate continue it. Checked here, before anything changes: None, fb.EWC or
        fb.Rehearsal, solver sgd or adam, an EWC consolidated on a network of this one's size.
        """
        guard = _continual.check_guard(self.guard)
        if first_pass or "guard_" not in self.__dict__ or self._guard_source is not guard:
            self.guard_, self._guard_source = copy.deepcopy(guard), guard
        if guard is None:
            return None
        if self.solver == "lbfgs":
            # L-BFGS-B minimises one full-batch objective: no batches to mix replayed rows into, and
            # no optimizer step to fuse EWC's penalty into; refused rather than half-supported.
            raise ValueError("guard needs solver='sgd' or 'adam' (the guards act on the optimizer's "
                             "steps and batches); got solver='lbfgs'")
        if not first_pass and isinstance(self.guard_, _continual.EWC):
            self.guard_.penalty(self._network)  # ValueError if consolidated on another network
        return self.guard_

    def consolidate(self, X, y):
        """Mark the end of a task: the guard protects what the fitted network learned from (X, y).

        Acts on ``guard_``, the estimator's own copy of ``guard``. With
        ``guard=fb.EWC(...)``, stores θ* (the current weights) and adds the
        empirical Fisher diagonal on (X, y) (``fb.EWC.consolidate``); later
        ``partial_fit``/``warm_start`` fits add (λ/2)·Σ F·(θ − θ*)² to the loss.
        With ``guard=fb.Rehearsal(...)`` there is nothing to do: as in
        ``Network.fit``, every guarded ``fit``/``partial_fit`` offers its samples
        to the buffer at its end.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The task's samples (or a representative subset).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Their labels or values, as ``fit`` takes them.

        Returns
        -------
        self
        """
        self._check_fitted()
        if _continual.check_guard(self.guard) is None:
            raise ValueError(f"consolidate needs a guard: construct {type(self).__name__} with "
                             "guard=fb.EWC(...) or guard=fb.Rehearsal(...)")
        X, _, targets = self._validate_input(X, y, incremental=True, reset=False)
        saved = dict(self.__dict__)
        try:
            guard = self._own_guard(first_pass=False)
            if isinstance(guard, _continual.EWC):
                with runtime(self.backend, self.n_threads):
                    guard.consolidate(self._network, X, targets)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        return self

    def _initialize(self, n_outputs, n_features, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(self._hidden_layer_sizes()) + 2
        self.out_activation_ = self._out_activation()
        self._network = self._make_network(n_features, n_outputs, dtype)
        for stale in ("_optimizer", "_best_params"):  # belonged to the previous network
            self.__dict__.pop(stale, None)
        if self.solver in ("sgd", "adam"):
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    # ------------------------------------------------------------ predict
    def _forward(self, X):
        """Output of the fitted network on validated X: probabilities or values, (n_samples, n_outputs)."""
        with runtime(self.backend, self.n_threads):
            return self._network.predict(np.asarray(X, dtype=self._network.dtype))

    def _score(self, X, y, sample_weight=None):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    def _check_solver(self):
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} "
                                 "is not stochastic.")
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False  # fastbp's kernels are dense: sparse X is refused, not densified
        return tags

    def _check_fitted(self):
        check_is_fitted(self, "_network")
