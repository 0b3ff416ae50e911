"""Thread count as the ecosystem sets it: OMP_NUM_THREADS, threadpoolctl, joblib's workers.

The count that matters is the ``n_threads`` the kernels receive, so the tests
record it with a spy on the backend's kernels; in subprocesses (a fresh
process reads OMP_NUM_THREADS) they also count the OS threads.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import fastbp as fb
from fastbp import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USABLE = _backend._max_threads()
SPIED_KERNELS = ("gemm", "mlp_loss_and_grad", "adam_step")


@pytest.fixture
def kernel_threads(monkeypatch):
    """The n_threads (last argument) of every spied kernel call on the current backend.

    Request it after ``backend``, so that it spies on the backend the test runs on.
    """
    module = _backend.backend_module()
    seen = []
    for name in SPIED_KERNELS:
        def spy(*args, _kernel=getattr(module, name)):
            seen.append(args[-1])
            return _kernel(*args)
        monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture
def default_threads(monkeypatch):
    """Forget the thread count, so that the next kernel reads the default again; restored after."""
    monkeypatch.setitem(_backend._state, "n_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return monkeypatch


def _train(seed=0):
    """Parameters after one epoch of a small MLP: every spied kernel runs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((96, 20)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    net = fb.Network([fb.Dense(20, 16, "relu"), fb.Dense(16, 3)], loss="softmax_cross_entropy", seed=seed)
    net.fit(X, y, epochs=1, batch_size=32, verbose=0)
    fb.kernels.gemm(X, X.T.copy())
    return net.params.copy()


# ------------------------------------------------------------------ OMP_NUM_THREADS
@pytest.mark.parametrize("value,expected", [
    ("1", 1), (" 1 ", 1), ("1,2", 1), ("1, 4,2", 1),
    (str(USABLE), USABLE), ("100000", USABLE), (f"{USABLE + 1},1", USABLE),  # capped at the usable cores
    (None, USABLE), ("", USABLE), ("  ", USABLE),  # unset or blank: no request
])
def test_omp_num_threads_sets_the_default(default_threads, value, expected):
    if value is not None:
        default_threads.setenv("OMP_NUM_THREADS", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fb.get_num_threads() == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ",2", "+1", "0x2", "²", "1 2"])
def test_bad_omp_num_threads_is_ignored_with_a_warning(default_threads, value):
    default_threads.setenv("OMP_NUM_THREADS", value)
    with pytest.warns(RuntimeWarning, match=re.escape(f"OMP_NUM_THREADS={value!r}")):
        assert fb.get_num_threads() == USABLE


def test_set_num_threads_overrides_omp_num_threads(default_threads, threads):
    default_threads.setenv("OMP_NUM_THREADS", "1")
    threads(USABLE)
    assert fb.get_num_threads() == USABLE


def _run(code, env_update):
    """Run ``code`` in a fresh interpreter from the repository root; its last line of stdout as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(env_update)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


KERNELS_IN_A_FRESH_PROCESS = """
    import json, os, numpy as np, fastbp as fb
    from fastbp import _backend
    def os_threads():
        return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    module, seen = _backend.backend_module("cython"), []
    real_gemm = module.gemm
    module.gemm = lambda *args: (seen.append(args[-1]), real_gemm(*args))[1]
    a = np.ones((512, 512), np.float32)  # large enough to run on every thread it is given
    before = os_threads()
    fb.kernels.gemm(a, a)
    print(json.dumps({"n_threads": fb.get_num_threads(), "kernel": seen,
                      "os_threads_before": before, "os_threads_after": os_threads()}))
"""


def test_omp_num_threads_1_runs_the_kernels_on_one_thread():
    """In a fresh process, OMP_NUM_THREADS=1: one thread reported, passed, and no OS thread started."""
    report = _run(KERNELS_IN_A_FRESH_PROCESS, {"OMP_NUM_THREADS": "1"})
    assert report["n_threads"] == 1
    assert report["kernel"] == [1]
    if report["os_threads_before"] is not None:
        assert report["os_threads_after"] == report["os_threads_before"]


@pytest.mark.skipif(USABLE < 2, reason="needs 2 usable cores to tell 1 thread from the default")
def test_without_omp_num_threads_the_kernels_use_every_core():
    """The control for the test above: the same probe does see the extra OpenMP thread."""
    report = _run(KERNELS_IN_A_FRESH_PROCESS, {})
    assert report["n_threads"] == report["kernel"][0] == USABLE
    if report["os_threads_before"] is not None:
        assert report["os_threads_after"] > report["os_threads_before"]


# ------------------------------------------------------------------ threadpoolctl
def _fastbp_pools(threadpoolctl):
    return [info for info in threadpoolctl.threadpool_info() if info["internal_api"] == "fastbp"]


def test_threadpool_info_lists_fastbp_with_its_true_size(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    (pool,) = _fastbp_pools(threadpoolctl)
    assert pool["user_api"] == "openmp"
    assert pool["version"] == fb.__version__
    assert os.path.basename(pool["filepath"]).startswith("_fastbp_threadpool")
    assert pool["num_threads"] == fb.get_num_threads()
    threads(1)
    assert _fastbp_pools(threadpoolctl)[0]["num_threads"] == 1


@pytest.mark.parametrize("limit", [
    {"limits": 1},
    {"limits": 1, "user_api": "openmp"},
    {"limits": {"_fastbp_threadpool": 1}},  # by file-name prefix
], ids=["all", "openmp", "prefix"])
def test_threadpool_limits_limits_fastbp_and_restores(backend, threads, kernel_threads, limit):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(USABLE)
    with threadpoolctl.threadpool_limits(**limit):
        assert fb.get_num_threads() == 1
        assert _fastbp_pools(threadpoolctl)[0]["num_threads"] == 1
        _train()
    assert kernel_threads and set(kernel_threads) == {1}
    assert fb.get_num_threads() == USABLE
    assert _fastbp_pools(threadpoolctl)[0]["num_threads"] == USABLE


def test_threadpool_limits_other_apis_and_upper_bounds(threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(USABLE)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert fb.get_num_threads() == USABLE  # BLAS limits are not fastbp's
    with threadpoolctl.threadpool_limits(USABLE + 64):
        assert fb.get_num_threads() == USABLE  # a limit above the cores is no request for more
    controller = threadpoolctl.ThreadpoolController().select(internal_api="fastbp")
    with controller.limit(limits=1):
        assert fb.get_num_threads() == 1
    assert fb.get_num_threads() == USABLE


def test_results_are_bitwise_identical_under_any_limit(backend, threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    threads(USABLE)
    free = _train()
    with threadpoolctl.threadpool_limits(1):
        limited = _train()
    np.testing.assert_array_equal(free, limited)


REGISTRATION = """
    import json, sys
    {imports}
    import threadpoolctl
    pools = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "fastbp"]
    print(json.dumps([p["num_threads"] for p in pools]))
"""


@pytest.mark.parametrize("imports", ["import threadpoolctl; import fastbp", "import fastbp; import threadpoolctl"])
def test_fastbp_is_registered_whatever_the_import_order(imports):
    pytest.importorskip("threadpoolctl")
    assert _run(REGISTRATION.format(imports=imports), {"OMP_NUM_THREADS": "1"}) == [1]


def test_threadpoolctl_command_line_lists_fastbp():
    """``python -m threadpoolctl -i fastbp`` runs threadpoolctl as __main__, a second copy of it."""
    pytest.importorskip("threadpoolctl")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "threadpoolctl", "-i", "fastbp"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pools = [p for p in json.loads(done.stdout) if p["internal_api"] == "fastbp"]
    assert [p["num_threads"] for p in pools] == [1]


def test_fastbp_imports_and_counts_threads_without_threadpoolctl():
    code = """
        import json, sys
        sys.modules["threadpoolctl"] = None  # importing it now raises ImportError, as when not installed
        import fastbp
        print(json.dumps([fastbp.get_num_threads(), fastbp._threadpool.register()]))
    """
    assert _run(code, {"OMP_NUM_THREADS": "1"}) == [1, False]


# ------------------------------------------------------------------ joblib
@pytest.mark.slow
def test_joblib_loky_workers_use_the_threads_joblib_gives_them():
    """joblib limits its loky workers' threads through OMP_NUM_THREADS; fastbp in them obeys."""
    joblib = pytest.importorskip("joblib")
    with joblib.parallel_config(backend="loky", n_jobs=2, inner_max_num_threads=1):
        counts = joblib.Parallel()(joblib.delayed(fb.get_num_threads)() for _ in range(4))
    assert counts == [1, 1, 1, 1]
