"""A hyperparameter search over a fastbp estimator on a Dask cluster, via joblib's Dask backend.

A LocalCluster of 2 worker processes x 1 thread stands in for a real cluster:
the search's fits run in the workers (their task stream is checked), the
scores and the best parameters equal the serial run's (fastbp's results do not
depend on the thread count, and the workers run 1 thread where the serial run
uses every core), and fastbp in each worker uses the thread count the cluster
gave it (Dask's nannies set OMP_NUM_THREADS before starting a worker).

Bounded in time: tiny data, a 2x2 grid, and every wait on the cluster has a
timeout; the cluster is closed by the fixture's finalizer whatever happens.
"""

import logging
import os
import threading
import warnings

import numpy as np
import pytest

import fastbp as fb

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 120  # 2 worker processes importing NumPy, scikit-learn and fastbp
SEARCH_TIMEOUT_S = 300
CLOSE_TIMEOUT_S = 30
PARAM_GRID = {"hidden_layer_sizes": [(8,), (16,)], "learning_rate_init": [1e-3, 1e-2]}


def _search():
    """A small search: 4 candidates x 3 folds of 240 digits, 15 epochs each."""
    fastbp_sklearn = pytest.importorskip("fastbp.sklearn")
    estimator = fastbp_sklearn.MLPClassifier(max_iter=15, batch_size=32, random_state=0)
    return GridSearchCV(estimator, PARAM_GRID, cv=3)


def _data():
    X, y = load_digits(return_X_y=True)
    return (X[:240] / 16.0).astype(np.float32), y[:240]


@pytest.fixture(scope="module")
def client(request):
    """A Client on a LocalCluster of 2 processes x 1 thread; both closed at the end, even on failure.

    Each worker is given 1 thread through OMP_NUM_THREADS (Dask's default,
    stated here so that the test does not rest on a user's Dask config). The
    nannies set it in this process's environment too before spawning; the
    environment is restored afterwards.
    """
    environ = dict(os.environ)
    request.addfinalizer(lambda: (os.environ.clear(), os.environ.update(environ)))
    with dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": 1}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=logging.ERROR,
                                           death_timeout=STARTUP_TIMEOUT_S)  # a worker that cannot start fails
    request.addfinalizer(lambda: cluster.close(timeout=CLOSE_TIMEOUT_S))
    client = distributed.Client(cluster, timeout=f"{STARTUP_TIMEOUT_S}s")
    request.addfinalizer(lambda: client.close(timeout=CLOSE_TIMEOUT_S))
    client.wait_for_workers(2, timeout=STARTUP_TIMEOUT_S)
    return client


def _fit_with_timeout(search, X, y, backend):
    """``search.fit(X, y)`` under joblib backend ``backend``, failing the test after SEARCH_TIMEOUT_S.

    The fit runs in a daemon thread (joblib's backend setting is per thread, so it
    is made there), so a stuck cluster fails the test instead of hanging it.
    """
    outcome = {}

    def run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 15 epochs do not converge: ConvergenceWarning
                with joblib.parallel_config(backend=backend, n_jobs=-1):
                    outcome["search"] = search.fit(X, y)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(SEARCH_TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"the search on the {backend!r} backend did not finish in {SEARCH_TIMEOUT_S} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["search"]


def _worker_threads():
    """What a worker was given and what fastbp in it uses."""
    import fastbp

    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "fastbp": fastbp.get_num_threads(),
            "usable_cores": fastbp._backend._max_threads()}


def test_grid_search_on_a_dask_cluster_matches_the_serial_search(client, threads):
    X, y = _data()
    threads(fb._backend._max_threads())  # every core here, 1 thread in each worker: the same bits
    serial = _fit_with_timeout(_search(), X, y, backend="sequential")
    with distributed.get_task_stream(client) as task_stream:
        on_dask = _fit_with_timeout(_search(), X, y, backend="dask")

    workers = set(client.scheduler_info(n_workers=-1)["workers"])
    ran_on = {task["worker"] for task in task_stream.data}
    assert task_stream.data and ran_on <= workers, "the search's fits did not run on the cluster"
    for key in ["mean_test_score", "rank_test_score"] + [f"split{i}_test_score" for i in range(3)]:
        np.testing.assert_array_equal(on_dask.cv_results_[key], serial.cv_results_[key], err_msg=key)
    assert on_dask.best_params_ == serial.best_params_
    assert on_dask.best_score_ == serial.best_score_


def test_each_worker_runs_fastbp_on_the_threads_it_was_given(client):
    reports = client.run(_worker_threads)
    assert len(reports) == 2
    for address, report in reports.items():
        given = report["OMP_NUM_THREADS"]
        assert given is not None, f"worker {address} was given no thread count"
        assert report["fastbp"] == min(int(given), report["usable_cores"]), (address, report)
        assert report["fastbp"] == 1  # what the fixture gave
