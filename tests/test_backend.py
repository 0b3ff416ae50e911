"""Backend selection and thread count."""

import numpy as np
import pytest

import fastbp
from fastbp import _backend


def test_both_backends_load():
    assert set(fastbp.available_backends()) == {"cython", "numba"}


def test_default_is_cython_the_faster_one():
    assert _backend._PREFERENCE[0] == "cython"
    assert fastbp.get_backend() in fastbp.available_backends()


def test_set_and_restore_backend():
    start = fastbp.get_backend()
    with fastbp.backend("numba") as name:
        assert name == "numba" and fastbp.get_backend() == "numba"
        with fastbp.backend("cython"):
            assert fastbp.get_backend() == "cython"
        assert fastbp.get_backend() == "numba"
    assert fastbp.get_backend() == start
    fastbp.set_backend("numba")
    try:
        assert fastbp.get_backend() == "numba"
    finally:
        fastbp.set_backend(start)


def test_backend_restored_after_exception():
    start = fastbp.get_backend()
    with pytest.raises(RuntimeError):
        with fastbp.backend("numba"):
            raise RuntimeError
    assert fastbp.get_backend() == start


def test_unknown_backend_is_a_clear_error():
    start = fastbp.get_backend()
    with pytest.raises(ValueError, match="known backends: cython, numba"):
        fastbp.set_backend("fortran")
    assert fastbp.get_backend() == start


def test_unloadable_backend_names_what_is_missing(monkeypatch):
    def broken_import(name):
        raise ImportError("No module named 'fastbp._kernels.cython._gemm'")

    monkeypatch.setattr(_backend, "_modules", {})
    monkeypatch.setattr(_backend, "_load_errors", {})
    monkeypatch.setattr(_backend.importlib, "import_module", broken_import)
    with pytest.raises(ImportError, match="compiled Cython extensions are missing"):
        fastbp.set_backend("cython")


def test_backends_report_their_isa():
    for name in ("cython", "numba"):
        module = _backend.backend_module(name)
        assert module.NAME == name
        assert module.ISA in ("avx512", "avx2", "generic")


def test_every_backend_implements_the_whole_contract():
    from fastbp._kernels import reference

    for name in ("cython", "numba"):
        module = _backend.backend_module(name)
        missing = [k for k in reference.KERNELS if not callable(getattr(module, k, None))]
        assert not missing, f"backend {name} lacks {missing}"
    assert all(callable(getattr(reference, k)) for k in reference.KERNELS)


def test_thread_count(threads):
    limit = _backend._max_threads()
    assert 1 <= fastbp.get_num_threads() <= limit
    threads(1)
    assert fastbp.get_num_threads() == 1
    threads(np.int64(limit))
    assert fastbp.get_num_threads() == limit


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-1, ValueError), (10_000, ValueError),
                                       (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_thread_count(bad, error):
    before = fastbp.get_num_threads()
    with pytest.raises(error, match="n_threads"):
        fastbp.set_num_threads(bad)
    assert fastbp.get_num_threads() == before


def test_the_default_backend_does_not_import_the_other():
    """Training on the default (Cython) backend never imports numba (~0.3 s of start-up)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, fastbp as fb\n"
            "net = fb.Network([fb.Dense(4, 3)], loss='mse', seed=0)\n"
            "net.fit(np.ones((5, 4)), np.zeros((5, 3)), epochs=1, verbose=0)\n"
            "assert fb.get_backend() == 'cython', fb.get_backend()\n"
            "assert 'numba' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
