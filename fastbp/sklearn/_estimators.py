"""MLPClassifier and MLPRegressor: scikit-learn's estimators, trained by fastbp.

Drop-in: the same parameters with the same names, defaults and meanings as
``sklearn.neural_network.MLPClassifier``/``MLPRegressor``, the same fitted
attributes, plus ``backend``, ``n_threads`` and ``dtype``; see ``_base`` for
what differs on purpose.
"""

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import column_or_1d, compute_sample_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import validate_data

from ._base import BaseMLP

_SHARED_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        Neurons of each hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'leaky_relu', 'elu', 'softplus', \
'gelu', 'hardtanh'}, default='relu'
        Hidden-layer activation; the first four are scikit-learn's ('logistic' is fastbp's
        'sigmoid'), the others fastbp's.
    solver : {'lbfgs', 'sgd', 'adam'}, default='adam'
        'lbfgs' runs SciPy's L-BFGS-B on fastbp's full-batch loss and gradient.
    alpha : float, default=0.0001
        L2 penalty on the weights (not the biases): ``alpha/(2·Σw)·Σ||W||²`` per batch.
    batch_size : int or 'auto', default='auto'
        'auto' is min(200, n_samples).
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule of solver='sgd'.
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
    max_iter : int, default=200
        Epochs (stochastic solvers) or iterations (lbfgs).
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
        Draws the initial weights, the shuffling and the early-stopping split.
    tol : float, default=1e-4
    verbose : bool, default=False
        Shows fastbp's progress bar (one step per epoch, with the loss).
    warm_start : bool, default=False
        Continue from the fitted network and its optimizer's state (Adam's moments kept).
    momentum : float, default=0.9
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
    validation_fraction : float, default=0.1
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
    n_iter_no_change : int, default=10
    max_fun : int, default=15000
    backend : {'cython', 'numba'} or None, default=None
        fastbp backend; None: the current one (``fastbp.get_backend()``).
    n_threads : int or None, default=None
        Threads of fastbp's kernels; None: fastbp's current default (``fastbp.get_num_threads()``).
    dtype : {'float32', 'float64'} or None, default=None
        Dtype of the network; None: X's, float32 input staying float32 end to end.
    guard : fastbp.EWC, fastbp.Rehearsal or None, default=None
        Continual learning (solver 'sgd' or 'adam'): guards every ``fit`` and
        ``partial_fit`` as ``Network.fit(..., guard=)`` does. EWC adds its
        penalty after ``consolidate(X, y)`` marks a task's end; Rehearsal
        appends ``round(replay_ratio·b)`` buffered rows (sample weight 1) to
        every batch of b rows and offers each fit's samples to its buffer at
        the fit's end. Never changed by fitting: a fresh fit deep-copies it (its
        state included) into ``guard_``, which warm_start, partial_fit and
        ``consolidate`` continue.

    Attributes
    ----------
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_, t_,
    coefs_, intercepts_, n_features_in_, feature_names_in_, n_iter_, n_layers_,
    n_outputs_, out_activation_
        As scikit-learn's; ``coefs_`` and ``intercepts_`` are views into the fastbp
        network's flat parameter vector.
    guard_ : fastbp.EWC, fastbp.Rehearsal or None
        The estimator's own copy of ``guard``, which fits and ``consolidate`` change.
"""


def _init_args(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
               learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
               momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
               n_iter_no_change, max_fun, backend, n_threads, dtype, guard):
    BaseMLP.__init__(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
                     learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
                     momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2,
                     epsilon, n_iter_no_change, max_fun, backend, n_threads, dtype, guard)


class MLPClassifier(ClassifierMixin, BaseMLP):
    __doc__ = ("Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by fastbp.\n"
               "\n    Binary and multilabel targets get logistic outputs, multiclass a softmax; labels\n"
               "    may be any hashable values (strings included). ``class_weight`` ('balanced' or\n"
               "    a dict, as in scikit-learn's other classifiers) multiplies ``sample_weight``.\n"
               + _SHARED_DOC.replace("    dtype :", "    class_weight : dict, list of dicts, 'balanced' or None, "
                                     "default=None\n    dtype :")
               + "    classes_ : ndarray or list of ndarray of shape (n_classes,)\n")

    _parameter_constraints = {**BaseMLP._parameter_constraints,
                              "class_weight": [dict, list, StrOptions({"balanced"}), None]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 class_weight=None, backend=None, n_threads=None, dtype=None, guard=None):
        _init_args(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
                   learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
                   momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
                   n_iter_no_change, max_fun, backend, n_threads, dtype, guard)
        self.class_weight = class_weight

    _score_function = staticmethod(accuracy_score)

    def _is_classifier(self):
        return True

    def _out_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset, classes=None):
        """Checked X of the network's dtype, y as given (labels), and the targets the kernels take."""
        X, y = validate_data(self, X, y, multi_output=True, dtype=("float64", "float32"), reset=reset)
        X = X.astype(self._resolve_dtype(X.dtype) if reset else self._network.dtype, copy=False)
        X = np.ascontiguousarray(X)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if incremental and _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel") else classes)
        elif "classes_" not in self.__dict__ or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            labels = unique_labels(y)
            if self.warm_start and not incremental:
                if set(labels) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {labels}")
            elif len(np.setdiff1d(labels, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {labels}.")
        indicator = self._label_binarizer.transform(y)
        if self._label_binarizer.y_type_ == "multiclass":
            targets = np.ascontiguousarray(indicator.argmax(axis=1), dtype=np.int64)
        else:
            targets = np.ascontiguousarray(indicator, dtype=X.dtype)
        return X, y, targets

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels (any hashable values), or a multilabel indicator matrix.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample's loss; multiplied by the weights ``class_weight`` gives.

        Returns
        -------
        self : MLPClassifier
        """
        return self._fit(X, y, self._weights(X, y, sample_weight), incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping the network and the optimizer's state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None
        classes : array of shape (n_classes,), default=None
            Every class of every call; required on the first call.

        Returns
        -------
        self : MLPClassifier
        """
        if isinstance(self.class_weight, str) and self.class_weight == "balanced":
            # one batch's class frequencies are not the data set's (as SGDClassifier.partial_fit)
            raise ValueError("class_weight 'balanced' is not supported for partial_fit; pass "
                             "compute_class_weight('balanced', classes=classes, y=y) over enough of the "
                             "training targets as class_weight instead")
        return self._fit(X, y, self._weights(X, y, sample_weight), incremental=True, classes=classes)

    def _weights(self, X, y, sample_weight):
        """sample_weight times the weights of class_weight (None when both are None)."""
        if self.class_weight is None:
            return sample_weight
        self._validate_params()  # class_weight is used before _fit validates the rest
        y = np.asarray(y)
        weights = compute_sample_weight(self.class_weight, y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != weights.shape:
                raise ValueError(f"sample_weight.shape == {sample_weight.shape}, expected {weights.shape}!")
            weights = weights * sample_weight
        return weights

    def predict(self, X):
        """Predicted labels, shape (n_samples,) or (n_samples, n_outputs) for multilabel targets."""
        self._check_fitted()
        return self._predict(X)

    def _predict(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, dtype=("float64", "float32"), reset=False)
        proba = self._forward(X)
        if self.n_outputs_ == 1:
            proba = proba.ravel()
        return self._label_binarizer.inverse_transform(proba)

    def predict_proba(self, X):
        """Probability of each class, shape (n_samples, n_classes), columns in ``classes_``' order."""
        self._check_fitted()
        proba = self._forward(validate_data(self, X, dtype=("float64", "float32"), reset=False))
        if self.n_outputs_ == 1:
            proba = proba.ravel()
            return np.vstack([1 - proba, proba]).T
        return proba

    def predict_log_proba(self, X):
        """log(predict_proba(X)), shape (n_samples, n_classes)."""
        proba = self.predict_proba(X)
        return np.log(proba, out=proba)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    __doc__ = ("Multi-layer perceptron regressor: scikit-learn's MLPRegressor (squared error), trained "
               "by fastbp.\n\n    Any number of outputs.\n" + _SHARED_DOC)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 backend=None, n_threads=None, dtype=None, guard=None):
        _init_args(self, hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate,
                   learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start,
                   momentum, nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon,
                   n_iter_no_change, max_fun, backend, n_threads, dtype, guard)

    _score_function = staticmethod(r2_score)

    def _is_classifier(self):
        return False

    def _out_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset, classes=None):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=("float64", "float32"),
                             reset=reset)
        X = np.ascontiguousarray(X, dtype=self._resolve_dtype(X.dtype) if reset else self._network.dtype)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        targets = np.ascontiguousarray(y.reshape(len(y), -1), dtype=X.dtype)
        if not np.isfinite(targets).all():
            raise ValueError(f"y contains values that overflow {X.dtype} (the network's dtype)")
        return X, y, targets

    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : MLPRegressor
        """
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the network and the optimizer's state.

        Returns
        -------
        self : MLPRegressor
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predicted values, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        self._check_fitted()
        return self._predict(X)

    def _predict(self, X, check_input=True):
        if check_input:
            X = validate_data(self, X, dtype=("float64", "float32"), reset=False)
        y_pred = self._forward(X)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred
