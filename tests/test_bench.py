"""The benchmark commands run and measure what they say (speed itself is shown by running them)."""

import numpy as np

from fastbp.bench import gemm, situations


def test_bench_gemm_times_each_system_alone_and_after_a_numpy_matmul(monkeypatch, capsys):
    monkeypatch.setattr(gemm, "SHAPES", [(20, 30, 40, False), (30, 20, 40, True), (64, 64, 64, False)])
    matmuls = []
    original = situations.BetweenSteps.__call__
    monkeypatch.setattr(situations.BetweenSteps, "__call__", lambda self: (matmuls.append(1), original(self)))
    results = gemm.measure(threads=1, repeats=4)
    assert set(results) == {(system, shape) for system in ("cython", "numba", "openblas") for shape in gemm.SHAPES}
    assert all(np.isfinite(v) and v > 0 for pair in results.values() for v in pair)
    assert len(matmuls) == 4 * len(gemm.SHAPES) * 3  # one matmul before each timed call, none alone


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
