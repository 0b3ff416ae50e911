"""fastbp.sklearn: scikit-learn's estimator checks, its semantics, and what goes beyond it."""

import copy
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.class_weight import compute_sample_weight  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbp._backend import BACKENDS  # noqa: E402
from fastbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from fastbp.sklearn._objective import OUTPUTS, Objective  # noqa: E402

ESTIMATORS = (MLPClassifier, MLPRegressor)


# ------------------------------------------------------------ scikit-learn's own checks
# max_iter=100 as scikit-learn's test_common configures its MLPs (instance_generator.py).
# About 40 s for the 252 checks on this 2-core machine once Numba's kernels are compiled.
@parametrize_with_checks([est(max_iter=100, backend=backend) for backend in BACKENDS for est in ESTIMATORS])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------ data
def _classification(n_samples=150, n_classes=3, seed=0):
    return make_classification(n_samples=n_samples, n_features=8, n_informative=5, n_classes=n_classes,
                               random_state=seed)


def _regression(n_samples=120, n_targets=1, seed=0):
    X, y = make_regression(n_samples=n_samples, n_features=6, n_targets=n_targets, noise=0.1, random_state=seed)
    return X, y / y.std()


def _quiet(fit, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(*args, **kwargs)


# ------------------------------------------------------------ the same as scikit-learn
@pytest.mark.parametrize("solver,params", [
    ("sgd", {"momentum": 0.9, "nesterovs_momentum": True}),
    ("sgd", {"momentum": 0.0, "learning_rate": "invscaling", "learning_rate_init": 0.1}),
    ("lbfgs", {}),
])
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_matches_sklearn_step_for_step(task, solver, params):
    """Same init, batches and update rule: loss_curve_ (or lbfgs's loss_) equals scikit-learn's.

    SGD with a constant learning rate is exactly scikit-learn's rule (torch's form of the
    velocity is -1/lr times scikit-learn's); invscaling changes the rate between epochs,
    where the two forms of the velocity differ, so it runs without momentum.
    """
    if task == "regression":
        # with several outputs scikit-learn's lbfgs loss_ is not the objective it minimises (it
        # reports the mean over outputs, its gradient is of their sum): one output for lbfgs
        X, y = _regression(n_targets=1 if solver == "lbfgs" else 2)
        ours, theirs = MLPRegressor, SkMLPRegressor
    else:
        X, y = _classification(n_classes=3 if task == "multiclass" else 2)
        if task == "multilabel":
            y = np.stack([y, (X[:, 0] > 0).astype(int)], axis=1)
        ours, theirs = MLPClassifier, SkMLPClassifier
    settings = dict(hidden_layer_sizes=(7, 5), solver=solver, max_iter=15, random_state=3, alpha=0.01,
                    batch_size=32, **params)
    a = _quiet(ours(**settings, dtype=np.float64).fit, X, y)
    b = _quiet(theirs(**settings).fit, X, y)
    assert a.n_iter_ == b.n_iter_ and a.out_activation_ == b.out_activation_
    if solver == "lbfgs":
        np.testing.assert_allclose(a.loss_, b.loss_, rtol=1e-6)
    else:
        np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-6)
        assert a.t_ == b.t_ and a.best_loss_ == pytest.approx(b.best_loss_, rel=1e-6)
    for ca, cb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-7)
    if task == "regression":
        np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6)
    else:
        np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_adam_accuracy_on_digits_agrees_with_sklearn():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, random_state=0)
    settings = dict(hidden_layer_sizes=(64,), max_iter=30, random_state=0)
    ours = _quiet(MLPClassifier(**settings).fit, X_train, y_train).score(X_test, y_test)
    theirs = _quiet(SkMLPClassifier(**settings).fit, X_train, y_train).score(X_test, y_test)
    assert ours > 0.9 and abs(ours - theirs) <= 0.02


def test_fitted_attributes_are_sklearns():
    X, y = _classification()
    for ours, theirs in ((MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)):
        a = _quiet(ours(max_iter=3, random_state=0).fit, X, y)
        b = _quiet(theirs(max_iter=3, random_state=0).fit, X, y)
        public = {name for name in vars(b) if name.endswith("_") and not name.startswith("_")}
        for name in public | {"coefs_", "intercepts_"}:
            assert hasattr(a, name), name
        assert [c.shape for c in a.coefs_] == [c.shape for c in b.coefs_]


# ------------------------------------------------------------ targets and labels
@pytest.mark.parametrize("labels", [["cat", "dog", "emu"], [3, 7], [-1, 1]])
def test_any_hashable_labels(labels):
    X, y = _classification(n_classes=len(labels))
    y = np.asarray(labels)[y]
    clf = _quiet(MLPClassifier(solver="lbfgs", max_iter=300, random_state=0).fit, X, y)
    assert list(clf.classes_) == sorted(labels)
    pred = clf.predict(X)
    assert pred.shape == y.shape and set(pred) <= set(labels)
    assert clf.score(X, y) > 0.7
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))
    assert clf.out_activation_ == ("logistic" if len(labels) == 2 else "softmax")


def test_multilabel_and_multioutput_regression():
    X, y = _classification()
    Y = np.stack([y == 0, y == 1, X[:, 0] > 0], axis=1).astype(int)
    clf = _quiet(MLPClassifier(max_iter=80, random_state=0).fit, X, Y)
    assert clf.predict(X).shape == Y.shape and clf.predict_proba(X).shape == Y.shape
    assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 3
    assert clf.score(X, Y) > 0.5
    X, Y = _regression(n_targets=3)
    reg = _quiet(MLPRegressor(max_iter=200, random_state=0).fit, X, Y)
    assert reg.predict(X).shape == Y.shape and reg.n_outputs_ == 3 and reg.score(X, Y) > 0.8


# ------------------------------------------------------------ the ecosystem
def test_pipeline_gridsearch_cross_val_clone_pickle():
    X, y = _classification(n_samples=120)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    _quiet(pipe.fit, X, y)
    assert 0 <= pipe.score(X, y) <= 1
    search = GridSearchCV(MLPClassifier(max_iter=20, random_state=0),
                          {"alpha": [1e-4, 1e-1], "hidden_layer_sizes": [(8,), (16,)]}, cv=3)
    _quiet(search.fit, X, y)
    assert search.best_params_["alpha"] in (1e-4, 1e-1)
    scores = _quiet(cross_val_score, MLPRegressor(max_iter=30, random_state=0), *_regression(), cv=3)
    assert scores.shape == (3,)

    fitted = _quiet(MLPClassifier(max_iter=20, random_state=0).fit, X, y)
    fresh = clone(fitted)
    assert not hasattr(fresh, "coefs_") and fresh.get_params() == fitted.get_params()
    for twin in (pickle.loads(pickle.dumps(fitted)), copy.deepcopy(fitted)):
        np.testing.assert_array_equal(twin.predict_proba(X), fitted.predict_proba(X))
        for coef, layer in zip(twin.coefs_, twin._network.layers):
            assert np.shares_memory(coef, twin._network.params)
        assert twin._optimizer.params is twin._network.params
        before = twin.predict_proba(X)
        twin.partial_fit(X, y)
        assert not np.array_equal(twin.predict_proba(X), before)  # the copy learns


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_float32_stays_float32(estimator, solver):
    X, y = _classification() if estimator is MLPClassifier else _regression()
    X = X.astype(np.float32)
    est = _quiet(estimator(max_iter=10, random_state=0, solver=solver).fit, X, y)
    assert est._network.dtype == np.float32
    assert all(c.dtype == np.float32 for c in est.coefs_ + est.intercepts_)
    out = est.predict_proba(X) if estimator is MLPClassifier else est.predict(X)
    assert out.dtype == np.float32
    est64 = _quiet(estimator(max_iter=10, random_state=0, solver=solver, dtype="float64").fit, X, y)
    assert est64.coefs_[0].dtype == np.float64


# ------------------------------------------------------------ beyond scikit-learn
def _objective_case(out_activation, n_outputs, rng):
    from fastbp import Dense, Network
    loss = OUTPUTS[out_activation][0]
    net = Network([Dense(4, 5, "tanh"), Dense(5, n_outputs)], loss=loss, dtype=np.float64, seed=1)
    X = rng.standard_normal((9, 4))
    if out_activation == "softmax":
        y = rng.integers(0, n_outputs, 9)
    elif out_activation == "logistic":
        y = (rng.random((9, n_outputs)) > 0.5).astype(np.float64)
    else:
        y = rng.standard_normal((9, n_outputs))
    return net, X, y


@pytest.mark.parametrize("out_activation,n_outputs", [("softmax", 3), ("logistic", 1), ("logistic", 2),
                                                      ("identity", 1), ("identity", 3)])
def test_weighted_penalised_gradient_by_finite_differences(backend, out_activation, n_outputs):
    rng = np.random.default_rng(0)
    net, X, y = _objective_case(out_activation, n_outputs, rng)
    objective = Objective(net, out_activation, alpha=0.3)
    weights = rng.integers(0, 4, 9).astype(np.float64)
    weights[0] = 2.5

    def value(params):
        net.params[:] = params
        data, penalty = objective(X, y, weights)
        return objective.grad_factor * data + penalty

    theta = net.params.copy()
    value(theta)
    grad = net.grads.copy()
    h = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h
        numeric[i] = (value(theta + step) - value(theta - step)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("out_activation,n_outputs", [("softmax", 3), ("logistic", 2), ("identity", 2)])
def test_integer_weights_equal_repeated_rows(backend, out_activation, n_outputs):
    rng = np.random.default_rng(1)
    net, X, y = _objective_case(out_activation, n_outputs, rng)
    objective = Objective(net, out_activation, alpha=0.2)
    weights = np.array([0, 1, 2, 3, 1, 0, 2, 1, 1])
    loss_w = objective(X, y, weights.astype(np.float64))
    grads_w = net.grads.copy()
    loss_r = objective(np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0))
    np.testing.assert_allclose(loss_w, loss_r, rtol=1e-12)
    np.testing.assert_allclose(grads_w, net.grads, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_sample_weight_fit_equals_repeated_rows(solver):
    X, y = _classification(n_samples=40)
    weights = np.random.default_rng(0).integers(0, 3, 40)
    settings = dict(solver=solver, max_iter=20, random_state=0, batch_size=1000, shuffle=False)
    a = _quiet(MLPClassifier(**settings).fit, X, y, sample_weight=weights)
    b = _quiet(MLPClassifier(**settings).fit, np.repeat(X, weights, axis=0), np.repeat(y, weights))
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-7, atol=1e-10)
    if solver == "lbfgs":
        return
    c = _quiet(MLPClassifier(**settings).partial_fit, X, y, classes=[0, 1, 2], sample_weight=weights)
    d = _quiet(MLPClassifier(**settings).partial_fit, np.repeat(X, weights, axis=0), np.repeat(y, weights),
               classes=[0, 1, 2])
    np.testing.assert_allclose(c.predict_proba(X), d.predict_proba(X), rtol=1e-7, atol=1e-10)


def test_class_weight():
    X, y = _classification(n_samples=90)
    y[:60] = 0  # imbalanced
    settings = dict(max_iter=10, random_state=0, hidden_layer_sizes=(8,))
    for class_weight in ("balanced", {0: 0.2, 1: 3.0, 2: 1.0}):
        a = _quiet(MLPClassifier(class_weight=class_weight, **settings).fit, X, y)
        b = _quiet(MLPClassifier(**settings).fit, X, y, sample_weight=compute_sample_weight(class_weight, y))
        np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    plain = _quiet(MLPClassifier(**settings).fit, X, y)
    assert not np.array_equal(a.predict_proba(X), plain.predict_proba(X))
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="heavy").fit(X, y)
    with pytest.raises(ValueError, match="class_weight 'balanced' is not supported for partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    weights = {0: 0.2, 1: 3.0, 2: 1.0}
    a = MLPClassifier(class_weight=weights, **settings).partial_fit(X, y, classes=[0, 1, 2])
    b = MLPClassifier(**settings).partial_fit(X, y, classes=[0, 1, 2],
                                              sample_weight=compute_sample_weight(weights, y))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_warm_start_and_partial_fit_keep_the_optimizer_state():
    X, y = _classification()
    clf = _quiet(MLPClassifier(max_iter=3, random_state=0, warm_start=True).fit, X, y)
    optimizer, steps = clf._optimizer, clf._optimizer.state.step
    moments = optimizer.state.exp_avg.copy()
    assert steps > 0 and np.any(moments != 0)
    _quiet(clf.fit, X, y)
    assert clf._optimizer is optimizer and optimizer.state.step == 2 * steps  # Adam's t goes on
    inc = MLPClassifier(random_state=0)
    inc.partial_fit(X, y, classes=np.unique(y))
    first = inc._optimizer.state.step
    inc.partial_fit(X, y)
    assert inc._optimizer.state.step == 2 * first and inc.n_iter_ == 2 and inc.t_ == 2 * len(X)
    cold = _quiet(MLPClassifier(max_iter=3, random_state=0).fit, X, y)
    optimizer = cold._optimizer
    _quiet(cold.fit, X, y)  # no warm start: a new network and a new optimizer
    assert cold._optimizer is not optimizer and cold._optimizer.state.step == steps


def test_learning_rate_schedules_and_stopping():
    X, y = _classification()
    inv = _quiet(MLPClassifier(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, power_t=0.5,
                               max_iter=4, random_state=0).fit, X, y)
    assert inv._optimizer.lr == pytest.approx(0.5 / (inv.t_ + 1) ** 0.5)
    adaptive = _quiet(MLPClassifier(solver="sgd", learning_rate="adaptive", tol=10.0, n_iter_no_change=1,
                                    max_iter=8, random_state=0).fit, X, y)
    assert adaptive._optimizer.lr == pytest.approx(0.001 / 5 ** 3)  # / 5 every 2 epochs without progress
    assert adaptive.n_iter_ == 8
    stopped = MLPClassifier(tol=10.0, n_iter_no_change=2, max_iter=50, random_state=0).fit(X, y)
    # the first epoch sets best_loss_; adam stops after n_iter_no_change + 1 more without progress
    assert stopped.n_iter_ == 4
    early = _quiet(MLPClassifier(early_stopping=True, validation_fraction=0.2, max_iter=30,
                                 random_state=0).fit, X, y)
    assert len(early.validation_scores_) == early.n_iter_ and early.best_loss_ is None
    assert early.best_validation_score_ == max(early.validation_scores_)
    # the weights of the best epoch are restored, not those of the last
    assert early.n_iter_ - 1 > int(np.argmax(early.validation_scores_))
    np.testing.assert_array_equal(early._network.params, early._best_params)


def test_verbose_shows_fastbps_progress_bar(capsys):
    X, y = _classification(n_samples=60)
    _quiet(MLPClassifier(max_iter=3, verbose=True, random_state=0).fit, X, y)
    err = capsys.readouterr().err
    assert "MLPClassifier" in err and "3/3" in err and "loss=" in err


def test_backend_and_threads_parameters(backend):
    X, y = _classification(n_samples=60)
    fitted = [_quiet(MLPClassifier(max_iter=5, random_state=0, backend=backend, n_threads=n).fit, X, y)
              for n in (1, None)]
    np.testing.assert_array_equal(fitted[0].predict_proba(X), fitted[1].predict_proba(X))


# ------------------------------------------------------------ bad input
def test_not_fitted_and_bad_parameters():
    X, y = _classification(n_samples=30)
    for method in ("predict", "predict_proba", "score"):
        args = (X, y) if method == "score" else (X,)
        with pytest.raises(NotFittedError):
            getattr(MLPClassifier(), method)(*args)
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)
    for name, value in [("alpha", -1.0), ("solver", "newton"), ("activation", "softmax"),
                        ("learning_rate_init", 0.0), ("backend", "fortran"), ("n_threads", 0),
                        ("batch_size", 0), ("dtype", "int8")]:
        with pytest.raises(ValueError, match=name):
            MLPClassifier(**{name: value}).fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes=(4, 0)).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        MLPClassifier(max_iter=1).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        MLPClassifier(solver="lbfgs", max_iter=1).fit(X, y)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


def _snapshot(est):
    return {name: (value.copy() if isinstance(value, np.ndarray) else copy.copy(value))
            for name, value in vars(est).items() if not name.startswith("_")}, est._network.params.copy()


def _assert_unchanged(est, snapshot):
    attrs, params = snapshot
    assert set(vars(est)) >= set(attrs)
    for name, value in attrs.items():
        np.testing.assert_equal(getattr(est, name), value, err_msg=name)
    np.testing.assert_array_equal(est._network.params, params)


@pytest.mark.parametrize("warm_start", [False, True])
def test_refused_fit_changes_nothing(warm_start):
    X, y = _classification()
    clf = _quiet(MLPClassifier(max_iter=5, random_state=0, warm_start=warm_start).fit, X, y)
    snapshot = _snapshot(clf)
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    refusals = [
        lambda: clf.fit(X_nan, y),
        (lambda: clf.fit(X[:, :5], y)) if warm_start else (lambda: clf.fit(X, y[:-1])),
        lambda: clf.fit(X, y, sample_weight=np.ones(3)),
        lambda: clf.fit(X, y, sample_weight=-np.ones(len(y))),
        lambda: clf.partial_fit(X, np.where(y == 2, 9, y)),  # a class not seen before
        lambda: clf.partial_fit(X[:, :5], y),
        lambda: clf.set_params(alpha=-1).fit(X, y),
        lambda: clf.set_params(hidden_layer_sizes=(3, 0)).fit(X, y),
        lambda: clf.set_params(n_threads=10_000).fit(X, y),
    ]
    for refusal in refusals:
        with pytest.raises(ValueError):
            refusal()
        clf.set_params(alpha=1e-4, hidden_layer_sizes=(100,), n_threads=None)
        _assert_unchanged(clf, snapshot)
    reg = _quiet(MLPRegressor(max_iter=5, random_state=0).fit, *_regression())
    snapshot = _snapshot(reg)
    with pytest.raises(ValueError):
        reg.partial_fit(np.ones((4, 2)), np.ones(4))
    _assert_unchanged(reg, snapshot)


def test_import_fastbp_needs_neither_sklearn_nor_scipy():
    import subprocess
    import sys

    code = "import sys, fastbp; print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
