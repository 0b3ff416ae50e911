"""GEMM against a float64 NumPy product, on both backends, both dtypes, every layout."""

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbp
from fastbp import kernels
from fastbp._kernels import blocking

from conftest import eps

# 1, primes, and non-multiples of every block size (MR 6/12, NR 8/16/32, KC 256, MC 96/144).
SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (2, 3, 5),
    (7, 13, 29),
    (13, 1, 31),
    (31, 300, 17),
    (97, 131, 257),
    (145, 257, 33),
    (200, 513, 70),
    (3, 5, 4100),  # n larger than NC
]


def gemm_bound(a, b, k, dtype):
    """Rigorous forward-error bound of a length-k dot product: ~k·eps·(|a|·|b|)."""
    return 2 * (k + 2) * eps(dtype) * (np.abs(a).astype(np.float64) @ np.abs(b)) + 1e-30


def check_product(out, a, b, alpha=1.0, beta=0.0, c0=None):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = alpha * (a64 @ b64)
    if beta != 0.0:
        expected += beta * c0.astype(np.float64)
    bound = abs(alpha) * gemm_bound(a, b, a.shape[1], out.dtype)
    if beta != 0.0:
        bound += abs(beta) * eps(out.dtype) * np.abs(c0)
    err = np.abs(out - expected)
    assert np.all(err <= bound), f"max error {err.max()} exceeds the bound"


def random_matrix(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("m,k,n", SHAPES, ids=lambda v: str(v))
def test_gemm_matches_numpy(backend, dtype, rng, m, k, n):
    a = random_matrix(rng, (m, k), dtype)
    b = random_matrix(rng, (k, n), dtype)
    out = kernels.gemm(a, b)
    assert out.shape == (m, n) and out.dtype == dtype
    check_product(out, a, b)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_gemm_transposes_and_orders(backend, dtype, rng, trans_a, trans_b, order):
    m, k, n = 37, 291, 45
    a = np.asarray(random_matrix(rng, (k, m) if trans_a else (m, k), dtype), order=order)
    b = np.asarray(random_matrix(rng, (n, k) if trans_b else (k, n), dtype), order=order)
    out = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    check_product(out, a.T if trans_a else a, b.T if trans_b else b)


def test_gemm_strided_and_negative_strides(backend, dtype, rng):
    big_a = random_matrix(rng, (60, 90), dtype)
    big_b = random_matrix(rng, (80, 70), dtype)
    a = big_a[::2, 3::3]          # (30, 29), strided in both dimensions
    b = big_b[::-1, ::2][:29]     # (29, 35), negative row stride
    out = kernels.gemm(a, b)
    check_product(out, a, b)
    bc = np.broadcast_to(random_matrix(rng, (1, 35), dtype), (29, 35))  # zero row stride, read-only
    check_product(kernels.gemm(a, bc), a, bc)


def test_gemm_alpha_beta(backend, dtype, rng):
    a = random_matrix(rng, (19, 300), dtype)
    b = random_matrix(rng, (300, 23), dtype)
    c0 = random_matrix(rng, (19, 23), dtype)
    out = c0.copy()
    assert kernels.gemm(a, b, out=out, alpha=-0.5, beta=2.0) is out
    check_product(out, a, b, alpha=-0.5, beta=2.0, c0=c0)


def test_gemm_beta_zero_ignores_nan_in_out(backend, dtype, rng):
    a = random_matrix(rng, (9, 11), dtype)
    b = random_matrix(rng, (11, 40), dtype)
    out = np.full((9, 40), np.nan, dtype)
    kernels.gemm(a, b, out=out)
    check_product(out, a, b)


def test_gemm_out_overlapping_input_is_safe(backend, dtype, rng):
    a = random_matrix(rng, (16, 16), dtype)
    b = random_matrix(rng, (16, 16), dtype)
    expected = kernels.gemm(a, b)
    kernels.gemm(a, b, out=a)  # out aliases a: the wrapper must read a copy
    np.testing.assert_array_equal(a, expected)


def test_gemm_empty_dimensions(backend, dtype):
    out = np.full((3, 4), 7.0, dtype)
    kernels.gemm(np.ones((3, 0), dtype), np.ones((0, 4), dtype), out=out, beta=0.5)
    np.testing.assert_array_equal(out, np.full((3, 4), 3.5, dtype))
    assert kernels.gemm(np.ones((0, 5), dtype), np.ones((5, 2), dtype)).shape == (0, 2)


def test_gemm_hand_worked_example(backend, dtype):
    a = np.array([[1, 2], [3, 4], [5, 6]], dtype)
    b = np.array([[1, 0, -1], [2, 1, 0]], dtype)
    expected = np.array([[5, 2, -1], [11, 4, -3], [17, 6, -5]], dtype)
    np.testing.assert_array_equal(kernels.gemm(a, b), expected)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (97, 131, 257), (200, 600, 70), (301, 64, 290)])
def test_gemm_bitwise_identical_for_1_and_2_threads(backend, dtype, rng, threads, m, k, n):
    a = random_matrix(rng, (m, k), dtype)
    b = random_matrix(rng, (k, n), dtype)
    threads(1)
    one = kernels.gemm(a, b)
    threads(2)
    two = kernels.gemm(a, b)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("m,k,n", [(8, 70001, 300), (30, 1100, 4200), (256, 784, 128)])
def test_gemm_waves_and_column_tasks_same_bits_for_any_thread_count(backend, dtype, rng, m, k, n):
    """Long k (several waves of packed KC slices), n past NC (two column panels), and a
    batch-sized m (row blocks times column parts, taken dynamically): within the error
    bound of NumPy's product, and the same bits on 1, 2 and 3 threads (the compiled
    kernel, called directly: 3 threads share 2 cores here)."""
    a = random_matrix(rng, (m, k), dtype)
    b = random_matrix(rng, (n, k), dtype).T  # a transposed operand, as in δ·Wᵀ
    compiled = fastbp._backend.backend_module()
    results = []
    for n_threads in (1, 2, 3):
        c = np.full((m, n), np.nan, dtype)
        compiled.gemm(a, b, c, 1.0, 0.0, n_threads)
        results.append(c)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.all(np.abs(results[0] - exact) <= gemm_bound(a, b, k, dtype))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


# (m, k, n) of a 784-wide network's layers at batch 32 and 128, with the private path each takes
# on AVX-512 float32 (MR 12, NR 32) at 2 threads: 1 = B packed by every thread, tasks over rows;
# 2 = A packed by every thread, tasks over columns; 0 = the shared path.
PRIVATE_CASES = [(32, 784, 256, 2), (128, 784, 256, 2), (784, 128, 256, 1), (128, 256, 128, 1),
                 (784, 32, 256, 1), (97, 131, 257, 2), (256, 1024, 1024, 2), (256, 2048, 1024, 0)]


@pytest.mark.parametrize("m,k,n,split", PRIVATE_CASES)
def test_gemm_private_paths_same_bits_for_any_thread_count(backend, dtype, rng, threads, m, k, n, split):
    """Both private paths (each thread packs the smaller operand itself) and the shared one, on
    1, 2 and 3 threads (the compiled kernel, called directly: 3 threads share 2 cores here), A
    row- or column-major, and the dense layer's fused bias + relu: the same bits, within the
    error bound of NumPy's product."""
    if dtype == np.float32 and fastbp._backend.backend_module().ISA == "avx512":
        assert blocking.private_split(-(-m // 12), -(-n // 32), k, 12, 32, 2) == split
    x = random_matrix(rng, (m, k), dtype)
    w = random_matrix(rng, (k, n), dtype)
    bias = random_matrix(rng, (n,), dtype)
    compiled = fastbp._backend.backend_module()
    plain, fused = [], []
    for n_threads in (1, 2, 3):
        for a in (x, np.asfortranarray(x)):
            c = np.full((m, n), np.nan, dtype)
            compiled.gemm(a, w, c, 1.0, 0.0, n_threads)
            plain.append(c)
        threads(min(n_threads, 2))
        fused.append(kernels.dense_forward(x, w, bias, "relu"))
    exact = x.astype(np.float64) @ w.astype(np.float64)
    assert np.all(np.abs(plain[0] - exact) <= gemm_bound(x, w, k, dtype))
    for c in plain[1:]:
        np.testing.assert_array_equal(c, plain[0])
    for a in fused:
        np.testing.assert_array_equal(a, np.maximum(plain[0] + bias, 0))


# Each backend's GEMM module, with gemm(a, b, c, alpha, beta, n_threads), and the module with the test
# hook _gemm_packed_b(a, b, c, alpha, beta, n_threads) of the once-packed B (numba: the recurrent
# layers', whose row pass the packed-B driver is compiled with).
GEMM_MODULES = {"cython": "fastbp._kernels.cython._gemm", "numba": "fastbp._kernels.numba.gemm"}
PACKED_B_MODULES = {"cython": "fastbp._kernels.cython._gemm", "numba": "fastbp._kernels.numba.gated"}


def reads_b_unpacked(backend, dtype, m, n, k, b):
    """Whether the backend's GEMM runs an (m x k)·b product unpacked (so nothing is packed once)."""
    isa = fastbp._backend.backend_module(backend).ISA
    _, nr, kc, _, _ = blocking.block_sizes(isa, dtype.name)
    narrow = dtype == np.float32 and n <= blocking.DIRECT_MAX_PANELS * nr
    if backend == "cython":  # float32 only, with AVX2 and up
        return dtype == np.float32 and isa != "generic" and (k <= kc and m * n * k <= blocking.DIRECT_MAX_MADDS
                                                             or narrow)
    b_rows = b.strides[1] == b.itemsize or k * n <= blocking.DIRECT_B_COPY_MAX  # as is, or copied row-major
    return isa != "generic" and (m * n * k <= blocking.DIRECT_MAX_MADDS or narrow) and b_rows


@pytest.mark.parametrize("m,k,n", [(64, 128, 512), (64, 512, 128), (13, 1100, 97), (1, 7, 70), (97, 40, 33)])
def test_once_packed_b_gives_the_bits_of_gemm(backend, dtype, rng, m, k, n):
    """The recurrent layers pack their weight once per sequence and multiply by it at every step
    (cython: _gemm.pack_b_once, gemm_packed_b; numba: gemm.pack_b_once and the packed-B driver):
    the bits of gemm, on 1, 2 and 3 threads, for B read as is and transposed (w_hhᵀ going back),
    k past KC, m and n past no block size or many; B is packed unless the product reads it unpacked."""
    module = importlib.import_module(GEMM_MODULES[backend])
    hooks = importlib.import_module(PACKED_B_MODULES[backend])
    a = random_matrix(rng, (m, k), dtype)
    for b in (random_matrix(rng, (k, n), dtype), random_matrix(rng, (n, k), dtype).T):
        c0 = random_matrix(rng, (m, n), dtype)
        expected = c0.copy()
        module.gemm(a, b, expected, 1.0, 1.0, 1)
        packed_at_all = False
        for n_threads in (1, 2, 3):
            c = c0.copy()
            packed_at_all |= hooks._gemm_packed_b(a, b, c, 1.0, 1.0, n_threads)
            np.testing.assert_array_equal(c, expected)
        assert packed_at_all == (not reads_b_unpacked(backend, dtype, m, n, k, b))


@pytest.mark.parametrize("k", [1, 64, 511])
def test_gemm_small_products_give_the_bits_of_large_ones(backend, dtype, rng, k):
    """Small products may take another path (cython: unpacked AVX-512 float32); the rows of
    a small product equal the same rows of a large one, bit for bit, for every layout."""
    big_a = rng.standard_normal((600, k)).astype(dtype)
    b = rng.standard_normal((k, 45)).astype(dtype)
    for a_small, bb in ((big_a[:13], b), (np.asfortranarray(big_a)[:29], b), (big_a[:7], b[:, :10]),
                        (big_a[:40], b[::-1][::-1]), (big_a[:9], np.asfortranarray(b)),
                        (big_a[:20], np.asfortranarray(b)[:, ::2])):
        expected = kernels.gemm(big_a, bb)[:a_small.shape[0]]
        np.testing.assert_array_equal(kernels.gemm(a_small, bb), expected)


def test_gemm_short_tiles_give_the_bits_of_full_ones(backend, dtype, rng):
    """The last tile of an m that is not a multiple of MR (cython AVX-512: the 4- and 8-row
    kernels) computes each row as a full tile does: every row count from 1 to 25, past KC, C
    read (beta = 1) and not, on the packed path (n over two panels, k over KC)."""
    a = rng.standard_normal((25, 600)).astype(dtype)
    b = rng.standard_normal((600, 70)).astype(dtype)
    c0 = rng.standard_normal((25, 70)).astype(dtype)
    compiled = fastbp._backend.backend_module()
    full = {}
    for beta in (0.0, 1.0):
        full[beta] = c0.copy()
        compiled.gemm(a, b, full[beta], 1.0, beta, 1)
    for m in range(1, 26):
        for beta in (0.0, 1.0):
            c = c0[:m].copy()
            compiled.gemm(a[:m], b, c, 1.0, beta, 1)
            np.testing.assert_array_equal(c, full[beta][:m], err_msg=f"{m} rows, beta {beta}")


def test_gemm_narrow_products_give_the_bits_of_wide_ones(backend, dtype, rng, threads):
    """Products of at most 16 columns may take another path at any size (cython: unpacked,
    over the same KC slices); their columns equal those of a wide product, bit for bit."""
    a = rng.standard_normal((300, 1100)).astype(dtype)
    b = rng.standard_normal((1100, 45)).astype(dtype)
    for n_threads in (1, 2):
        threads(n_threads)
        wide = kernels.gemm(a, b)
        for cols in (slice(0, 10), slice(3, 19)):
            np.testing.assert_array_equal(kernels.gemm(a, b[:, cols]), wide[:, cols])
            np.testing.assert_array_equal(kernels.gemm(a, np.asfortranarray(b[:, cols])), wide[:, cols])


@pytest.mark.parametrize("m,k,n", [(7, 13, 29), (150, 300, 100)])
def test_gemm_backends_agree(dtype, rng, m, k, n):
    a = random_matrix(rng, (m, k), dtype)
    b = random_matrix(rng, (k, n), dtype)
    with fastbp.backend("cython"):
        c_cython = kernels.gemm(a, b)
    with fastbp.backend("numba"):
        c_numba = kernels.gemm(a, b)
    np.testing.assert_allclose(c_cython, c_numba, rtol=0, atol=np.max(gemm_bound(a, b, k, dtype)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(1, 70),
    k=st.integers(1, 300),
    n=st.integers(1, 70),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    use_float32=st.booleans(),
    backend_name=st.sampled_from(["cython", "numba"]),
)
def test_gemm_property(m, k, n, trans_a, trans_b, use_float32, backend_name):
    dtype = np.dtype(np.float32 if use_float32 else np.float64)
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n)
    a = random_matrix(rng, (k, m) if trans_a else (m, k), dtype)
    b = random_matrix(rng, (n, k) if trans_b else (k, n), dtype)
    with fastbp.backend(backend_name):
        out = kernels.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    check_product(out, a.T if trans_a else a, b.T if trans_b else b)


def test_block_table_covers_every_isa_and_dtype():
    for isa in blocking.ISAS:
        for dtype in ("float32", "float64"):
            mr, nr, kc, mc, nc = blocking.block_sizes(isa, dtype)
            assert mc % mr == 0 and nc % nr == 0 and kc > 0


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_cython_lower_isa_micro_kernels(isa):
    """The AVX2 and portable-C micro-kernels, forced on this CPU (the ISA is chosen at import)."""
    import os
    import subprocess
    import sys

    script = """
import numpy as np, fastbp
from fastbp import kernels
from fastbp._kernels.cython import ISA
assert ISA == {isa!r}, ISA
fastbp.set_backend("cython")
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for m, k, n in [(1, 1, 1), (7, 13, 29), (97, 300, 45)]:
        for threads in (1, 2):
            fastbp.set_num_threads(threads)
            a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
            got = kernels.gemm(a, b.T.copy(), trans_b=True)
            bound = 2 * (k + 2) * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b))
            assert np.all(np.abs(got - a.astype(np.float64) @ b) <= bound + 1e-30), (dtype, m, k, n)
        z = kernels.dense_forward(a, b, np.ones(n, dtype), "tanh")
        assert np.allclose(z, np.tanh(a.astype(np.float64) @ b + 1), rtol=1e-4, atol=1e-4)
# small and narrow products (unpacked on AVX-512 and AVX2) give the bits of large ones
# (packed: more than blocking.DIRECT_MAX_PANELS column panels), k within and beyond KC
for k in (200, 700):
    big_a = rng.standard_normal((700, k)).astype(np.float32)
    b = rng.standard_normal((k, 150)).astype(np.float32)
    for threads in (1, 2):
        fastbp.set_num_threads(threads)
        wide = kernels.gemm(big_a, b)
        assert np.array_equal(kernels.gemm(big_a[:13], b), wide[:13])
        assert np.array_equal(kernels.gemm(np.asfortranarray(big_a[:29]), b), wide[:29])
        assert np.array_equal(kernels.gemm(big_a, b[:, 3:14]), wide[:, 3:14])
        assert np.array_equal(kernels.gemm(big_a, b[:, :32]), wide[:, :32])
        assert np.array_equal(kernels.gemm(big_a, b[:, 5:69]), wide[:, 5:69])
        assert np.array_equal(kernels.gemm(big_a, np.asfortranarray(b[:, :7])), wide[:, :7])
# the convolution's gather and max pooling without their AVX-512 paths
from fastbp._kernels import reference
for dtype in (np.float32, np.float64):
    for shape, kernel, geometry in (((3, 11, 9, 1), (5, 5, 1, 6), (1, 1, 2, 0, 1, 1)),
                                    ((2, 8, 7, 5), (3, 2, 5, 4), (2, 1, 1, 1, 2, 1))):
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(kernel).astype(dtype)
        bias = rng.standard_normal(kernel[3]).astype(dtype)
        sh, sw, pt, pl, dh, dw = geometry
        got = kernels.conv2d_forward(x, w, bias, stride=(sh, sw), padding=(pt, pl), dilation=(dh, dw))
        want = np.empty_like(got)
        reference.conv2d_forward(x, w, bias, geometry, 0, want, want, 1)
        np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)
        out, argmax = kernels.max_pool2d_forward(x, 2)
        want_out, want_at = np.empty_like(out), np.empty_like(argmax)
        reference.max_pool2d_forward(x, (2, 2, 2, 2, 0, 0), want_out, want_at, 1)
        assert np.array_equal(out, want_out) and np.array_equal(argmax, want_at)
print("ok")
""".format(isa=isa)
    env = dict(os.environ, FASTBP_CYTHON_ISA=isa)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_gemm_out_partly_overlapping_input_is_safe(backend, dtype, rng):
    buf = random_matrix(rng, (20, 16), dtype)
    a, b = buf[:16].copy(), random_matrix(rng, (16, 16), dtype)
    expected = kernels.gemm(a, b)
    out = buf[4:20]  # C-contiguous, overlapping rows 4..15 of buf[:16]
    kernels.gemm(buf[:16], b, out=out)  # the wrapper reads a copy of the overlapped operand
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kwargs,name", [(dict(beta=1e39), "beta"), (dict(alpha=-1e39), "alpha"),
                                         (dict(alpha=3.5e38), "alpha")])
def test_gemm_float32_alpha_beta_beyond_float32_are_refused(backend, rng, kwargs, name):
    a = random_matrix(rng, (4, 3), np.float32)
    out = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=f"{name}=.* is beyond the range of float32"):
        kernels.gemm(a, a.T, out=out, **kwargs)
    np.testing.assert_array_equal(out, 1.0)  # untouched
    a64, out64 = a.astype(np.float64), np.ones((4, 4))  # in float64 the same values are computed
    kernels.gemm(a64, a64.T, out=out64, **kwargs)
    alpha, beta = kwargs.get("alpha", 1.0), kwargs.get("beta", 0.0)
    np.testing.assert_allclose(out64, alpha * (a64 @ a64.T) + beta * np.ones((4, 4)), rtol=1e-14)
    np.testing.assert_array_equal(kernels.gemm(a, a.T, out=out, beta=3.4e38) > 1e38, True)  # in range: computed


def test_gemm_reads_a_broadcast_operand_without_materialising_it(backend, dtype):
    import tracemalloc

    m = k = 2048  # materialised, the broadcast a would take 16 or 32 MiB
    row = np.linspace(0, 1, k).astype(dtype)
    a = np.broadcast_to(row, (m, k))  # read-only, zero row stride
    b = np.ones((k, 2), dtype)
    kernels.gemm(a, b)  # warm the JIT and grow the packing buffers (kept) outside the measurement
    tracemalloc.start()
    try:
        out = kernels.gemm(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < m * k * dtype.itemsize / 4, f"{peak} bytes allocated for a {a.nbytes}-byte view"
    np.testing.assert_allclose(out, np.full((m, 2), row.astype(np.float64).sum()), rtol=k * eps(dtype))


def test_cython_thread_decisions_are_the_tables():
    """The Cython GEMM mirrors blocking.gemm_threads and gemm_tasks in C; the Numba one compiles them."""
    from fastbp._kernels.cython import _gemm

    for m, n, k in [(1, 1, 1), (64, 128, 32), (128, 128, 128), (256, 1024, 1024), (7, 9, 1 << 22)]:
        for n_threads in (1, 2, 3, 16):
            assert _gemm._gemm_threads(m, n, k, n_threads) == blocking.gemm_threads(m, n, k, n_threads)
    for n_tiles in (1, 3, 11, 43, 66, 86, 500):
        for n_panels in (1, 2, 8, 32, 128):
            for mr, nr, mc in ((12, 32, 144), (6, 16, 96)):
                for nt in (1, 2, 3, 4):
                    assert _gemm._gemm_tasks(n_tiles, n_panels, mr, nr, mc, nt) == \
                        blocking.gemm_tasks(n_tiles, n_panels, mr, nr, mc, nt)
    for n_tiles in (1, 2, 11, 66, 700):
        for n_panels in (1, 2, 8, 32, 300):
            for k in (1, 128, 784, 5000):
                for nt in (2, 3, 16):
                    assert _gemm._private_split(n_tiles, n_panels, k, 12, 32, nt) == \
                        blocking.private_split(n_tiles, n_panels, k, 12, 32, nt)
    # m = 256 on AVX2 (MR 6, MC 96), 2 threads: 8 row blocks, not 3
    assert blocking.gemm_tasks(43, 8, 6, 16, 96, 2) == (8, 1)
    # m = 32 on AVX-512 (3 tiles), n = 256: rows and 2 column parts of 128
    assert blocking.gemm_tasks(3, 8, 12, 32, 144, 2) == (3, 2)
