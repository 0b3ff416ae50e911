"""fastbp.sklearn's MLPClassifier against scikit-learn's, same data and settings.

Usage: ``python -m fastbp.bench sklearn [--threads N] [--repeats R] [--backend cython|numba]``.

Two data sets: digits (1,797 × 64, 10 classes, 75 % to train) and a synthetic
20,000 × 784 training set (``make_classification``, 10 classes, 5,000 more rows
to test), float32, scaled to [0, 1] and standardised respectively. Both
estimators get the same arguments: hidden_layer_sizes=(256, 128), solver="adam",
batch_size=200, max_iter=10 (10 epochs), then solver="lbfgs" with max_iter=100;
random_state=0, the other parameters at scikit-learn's defaults. The figure is
the wall time of ``fit``, best of ``--repeats``, after one small warm-up fit of
each (fastbp's Numba backend compiles then), with the test accuracy of each.
scikit-learn's BLAS and fastbp's kernels get the same thread count. Run with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, or NumPy's BLAS runs a slower kernel.
"""

import argparse
import contextlib
import os
import time
import warnings

import numpy as np

from ._common import usable_cores

SETTINGS = {"adam": dict(solver="adam", batch_size=200, max_iter=10),
            "lbfgs": dict(solver="lbfgs", max_iter=100)}
HIDDEN = (256, 128)


def datasets():
    """{name: (X_train, X_test, y_train, y_test)}, float32."""
    from sklearn.datasets import load_digits, make_classification
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    data = {"digits 1797x64": train_test_split((X / 16).astype(np.float32), y, random_state=0)}
    X, y = make_classification(n_samples=25_000, n_features=784, n_informative=60, n_redundant=100,
                               n_classes=10, n_clusters_per_class=2, class_sep=2.0, random_state=0)
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    data["synthetic 20000x784"] = train_test_split(X, y, train_size=20_000, random_state=0)
    return data


@contextlib.contextmanager
def blas_threads(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def time_fit(estimator, X, y, repeats):
    """(best wall time of fit, the last fitted estimator)."""
    best = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: 10 epochs are not convergence
            estimator.fit(X, y)
        best = min(best, time.perf_counter() - started)
    return best, estimator


def run(data, threads, repeats, backend):
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastbp.sklearn import MLPClassifier

    def make(kind, solver):
        args = dict(hidden_layer_sizes=HIDDEN, random_state=0, **SETTINGS[solver])
        return SkMLP(**args) if kind == "sklearn" else MLPClassifier(backend=backend, n_threads=threads, **args)

    rows = []
    with blas_threads(threads):
        X_small, _, y_small, _ = data["digits 1797x64"]
        for kind in ("sklearn", "fastbp"):  # warm-up: imports, BLAS and OpenMP pools, Numba's JIT
            for solver in SETTINGS:
                time_fit(make(kind, solver).set_params(max_iter=2), X_small, y_small, 1)
        print(f"fit time in s (best of {repeats}), float32, {threads} threads, fastbp backend {backend}; "
              "accuracy on the held-out rows")
        print(f"{'data':>20} {'solver':>6} {'sklearn':>8} {'fastbp':>8} {'speed-up':>8} {'acc sk':>7} {'acc fb':>7}")
        for name, (X_train, X_test, y_train, y_test) in data.items():
            for solver in SETTINGS:
                t_sk, sk = time_fit(make("sklearn", solver), X_train, y_train, repeats)
                t_fb, fb = time_fit(make("fastbp", solver), X_train, y_train, repeats)
                row = (name, solver, t_sk, t_fb, t_sk / t_fb, sk.score(X_test, y_test), fb.score(X_test, y_test))
                rows.append(row)
                print(f"{row[0]:>20} {row[1]:>6} {row[2]:8.2f} {row[3]:8.2f} {row[4]:7.2f}x {row[5]:7.3f} {row[6]:7.3f}",
                      flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench sklearn", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", choices=["cython", "numba"], default=None)
    args = parser.parse_args(argv)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var}={os.environ[var]} is set; NumPy's BLAS may run a slower kernel")
    import fastbp

    run(datasets(), args.threads, args.repeats, args.backend or fastbp.get_backend())


if __name__ == "__main__":
    main()
