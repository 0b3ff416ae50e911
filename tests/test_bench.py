"""The benchmark commands run and measure what they say (speed itself is shown by running them)."""

import numpy as np

from fastbp.bench import gemm, situations


def test_bench_gemm_times_each_system_alone_and_after_a_numpy_matmul(monkeypatch):
    matmuls = []
    original = situations.BetweenSteps.__call__
    monkeypatch.setattr(situations.BetweenSteps, "__call__", lambda self: (matmuls.append(1), original(self)))
    for system in ("cython", "numba", "openblas"):
        for shape in ((20, 30, 40, False), (30, 20, 40, True)):
            for after_numpy in (False, True):
                rate = gemm._measure_in_child(system, shape, 1, 4, after_numpy)
                assert np.isfinite(rate) and rate > 0
    assert len(matmuls) == 3 * 2 * 4  # one matmul before each timed call after NumPy, none alone


def test_bench_gemm_products_are_the_numpy_products():
    """The timed call is the product it names: fastbp's GEMM on the same operands equals NumPy's."""
    import fastbp as fb
    from fastbp import kernels

    rng = np.random.default_rng(0)
    for m, k, n, trans_a in gemm.SHAPES[:4]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        with fb.backend("cython"):
            got = kernels.gemm(a, b, trans_a=trans_a)
        np.testing.assert_allclose(got, (a.T if trans_a else a) @ b, rtol=1e-4, atol=1e-3)
