"""LSTM and GRU kernels: both backends against the reference, torch.nn.LSTM/GRU, finite
differences, truncated BPTT against its definition, threads (bit for bit), backends
against each other, bad input."""

import numpy as np
import pytest

import fastbp
from fastbp import kernels
from fastbp._kernels import reference

from conftest import eps

KINDS = ("lstm", "gru")
N_GATES = {"lstm": 4, "gru": 3}
# (batch, time, n_in, hidden): 1x1x1x1, sequence lengths 1, 2, 7, 50, primes, non-multiples of NR
SHAPES = [(1, 1, 1, 1), (3, 7, 5, 6), (2, 50, 3, 17), (5, 2, 4, 33), (4, 1, 2, 3)]


def problem(rng, kind, shape, dtype, with_states=True):
    """Random inputs of one call: dict of the forward's arguments plus grad_hs."""
    m, t, k, n = shape
    g = N_GATES[kind]
    p = {
        "x": rng.standard_normal((m, t, k)),
        "w_ih": rng.standard_normal((k, g * n)) / np.sqrt(k),
        "w_hh": rng.standard_normal((n, g * n)) / np.sqrt(n),
        "bias": 0.5 * rng.standard_normal(g * n),
        "h0": rng.standard_normal((m, n)) if with_states else None,
        "grad_hs": rng.standard_normal((m, t, n)),
    }
    if kind == "lstm":
        p["c0"] = rng.standard_normal((m, n)) if with_states else None
    else:
        p["bias_hn"] = 0.5 * rng.standard_normal(n)
    return {key: None if v is None else v.astype(dtype) for key, v in p.items()}


def run(kind, p, truncate=None):
    """Forward and backward through fastbp.kernels: (forward outputs, gradients) as tuples."""
    if kind == "lstm":
        fwd = kernels.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["bias"], p["h0"], p["c0"])
        grads = kernels.lstm_backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], p["h0"], p["c0"],
                                      truncate=truncate)
    else:
        fwd = kernels.gru_forward(p["x"], p["w_ih"], p["w_hh"], p["bias"], p["bias_hn"], p["h0"])
        grads = kernels.gru_backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], p["h0"], truncate=truncate)
    return fwd, grads


def run_reference(kind, p, truncate=None):
    """The same through reference.py, in the dtype of p."""
    x = p["x"]
    m, t, k = x.shape
    n = p["w_hh"].shape[0]
    dtype = x.dtype
    zeros = np.zeros((m, n), dtype)
    h0 = zeros if p["h0"] is None else p["h0"]
    truncate = t if truncate is None else min(truncate, t)
    e = lambda *s: np.full(s, np.nan, dtype)  # noqa: E731
    hs, dx = e(m, t, n), e(m, t, k)
    dw_ih, dw_hh, dh0 = e(*p["w_ih"].shape), e(*p["w_hh"].shape), e(m, n)
    gates, dgates, dbias = e(m, t, N_GATES[kind] * n), e(m, t, N_GATES[kind] * n), e(N_GATES[kind] * n)
    if kind == "lstm":
        c0 = zeros if p["c0"] is None else p["c0"]
        cs, dc0 = e(m, t, n), e(m, n)
        reference.lstm_forward(x, p["w_ih"], p["w_hh"], p["bias"], h0, c0, hs, cs, gates, None, 1)
        reference.lstm_backward(x, p["w_ih"], p["w_hh"], h0, c0, hs, cs, gates, p["grad_hs"], truncate, dgates, dx,
                                dw_ih, dw_hh, dbias, dh0, dc0, None, 1)
        return (hs, cs, gates), (dx, dw_ih, dw_hh, dbias, dh0, dc0)
    hn, dghh, dbias_hn = e(m, t, n), e(m, t, 3 * n), e(n)
    reference.gru_forward(x, p["w_ih"], p["w_hh"], p["bias"], p["bias_hn"], h0, hs, gates, hn, None, 1)
    reference.gru_backward(x, p["w_ih"], p["w_hh"], h0, hs, gates, hn, p["grad_hs"], truncate, dgates, dghh, dx,
                           dw_ih, dw_hh, dbias, dbias_hn, dh0, None, 1)
    return (hs, gates, hn), (dx, dw_ih, dw_hh, dbias, dbias_hn, dh0)


def assert_close(actual, expected, rtol, what=""):
    """Each array within rtol of the expected one, relative to its largest element."""
    for i, (a, b) in enumerate(zip(actual, expected)):
        scale = max(float(np.max(np.abs(b))), 1.0) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=f"{what} output {i}")


def tol(dtype, n_steps):
    return 50 * np.sqrt(n_steps) * eps(dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_kernels_match_reference(backend, dtype, kind, rng, threads):
    """Every shape, truncation, with and without initial states, 1 and 2 threads (bit for bit)."""
    for shape in SHAPES:
        for with_states in (True, False):
            p = problem(rng, kind, shape, dtype, with_states)
            for truncate in sorted({None, 1, max(1, shape[1] // 2)}, key=lambda v: v or 0):
                expected = run_reference(kind, p, truncate)
                threads(1)
                one = run(kind, p, truncate)
                threads(2)
                two = run(kind, p, truncate)
                what = f"{kind} {shape} truncate={truncate} states={with_states}"
                assert_close(one[0] + one[1], expected[0] + expected[1], tol(dtype, shape[1]), what)
                for a, b in zip(one[0] + one[1], two[0] + two[1]):
                    assert np.array_equal(a, b), f"{what}: 1 and 2 threads differ"


@pytest.mark.parametrize("kind", KINDS)
def test_threads_bitwise_on_parallel_sizes(backend, kind, rng, threads):
    """Shapes large enough for the parallel GEMM and the parallel row passes, and (64·60 rows of 3 or 4 × 96
    gate values, >= 2^20) for the parallel bias column sums: 1 and 2 threads agree bit for bit."""
    for shape in [(64, 3, 5, 96), (64, 60, 3, 96)]:
        p = problem(rng, kind, shape, np.float32)
        results = []
        for n in (1, 2):
            threads(n)
            fwd, grads = run(kind, p)
            results.append(fwd + grads)
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b), shape


@pytest.mark.parametrize("kind", KINDS)
def test_backends_agree(kind, dtype, rng):
    for shape in SHAPES[1:3]:
        p = problem(rng, kind, shape, dtype)
        with fastbp.backend("cython"):
            cy = run(kind, p, truncate=3)
        with fastbp.backend("numba"):
            nb = run(kind, p, truncate=3)
        assert_close(nb[0] + nb[1], cy[0] + cy[1], tol(dtype, shape[1]), f"{kind} {shape}")


def torch_module(torch, kind, p):
    """torch.nn.LSTM/GRU (batch_first, float64) holding p's parameters, mapped as kernels.py documents."""
    x = p["x"]
    n = p["w_hh"].shape[0]
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(x.shape[2], n, batch_first=True).double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p["w_ih"].T.copy()))
        module.weight_hh_l0.copy_(torch.from_numpy(p["w_hh"].T.copy()))
        if kind == "lstm":  # bias = bias_ih + bias_hh: any split; take half each
            module.bias_ih_l0.copy_(torch.from_numpy(p["bias"] / 2))
            module.bias_hh_l0.copy_(torch.from_numpy(p["bias"] / 2))
        else:  # bias = bias_ih + (bias_hh[:2H], 0), bias_hn = bias_hh[2H:]
            module.bias_ih_l0.copy_(torch.from_numpy(p["bias"] - np.r_[p["bias"][:2 * n] / 2, np.zeros(n)]))
            module.bias_hh_l0.copy_(torch.from_numpy(np.r_[p["bias"][:2 * n] / 2, p["bias_hn"]]))
    return module


@pytest.mark.parametrize("kind", KINDS)
def test_equals_torch(backend, kind, rng):
    """Outputs and every gradient (weights, biases, inputs, initial states) equal torch's to 1e-10 relative."""
    torch = pytest.importorskip("torch")
    for shape in [(3, 7, 5, 6), (2, 1, 4, 3), (4, 50, 3, 9)]:
        p = problem(rng, kind, shape, np.float64)
        n = shape[3]
        module = torch_module(torch, kind, p)
        x = torch.from_numpy(p["x"]).requires_grad_()
        h0 = torch.from_numpy(p["h0"][None]).requires_grad_()
        if kind == "lstm":
            c0 = torch.from_numpy(p["c0"][None]).requires_grad_()
            out, _ = module(x, (h0, c0))
        else:
            out, _ = module(x, h0)
        (out * torch.from_numpy(p["grad_hs"])).sum().backward()
        fwd, grads = run(kind, p)
        close = dict(rtol=1e-10, what=f"{kind} {shape}")
        assert_close([fwd[0]], [out.detach().numpy()], **close)
        t = lambda v: v.detach().numpy()  # noqa: E731
        dx, dw_ih, dw_hh, dbias = grads[:4]
        expected = [t(x.grad), t(module.weight_ih_l0.grad).T, t(module.weight_hh_l0.grad).T, t(h0.grad[0])]
        actual = [dx, dw_ih, dw_hh, grads[-2] if kind == "lstm" else grads[-1]]
        if kind == "lstm":
            expected += [t(module.bias_ih_l0.grad), t(module.bias_hh_l0.grad), t(c0.grad[0])]
            actual += [dbias, dbias, grads[-1]]
        else:
            expected += [t(module.bias_ih_l0.grad), t(module.bias_hh_l0.grad)]
            actual += [dbias, np.r_[dbias[:2 * n], grads[4]]]
        assert_close(actual, expected, **close)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_gradients_by_finite_differences(kind, rng):
    """Every gradient of L = Σ grad_hs ⊙ hs from reference.py's backward, by central differences in float64."""
    p = problem(rng, kind, (2, 4, 3, 3), np.float64)

    def loss():
        return float(np.sum(p["grad_hs"] * run_reference(kind, p)[0][0]))

    _, grads = run_reference(kind, p)
    names = ["x", "w_ih", "w_hh", "bias"] + (["h0", "c0"] if kind == "lstm" else ["bias_hn", "h0"])
    h = 1e-6
    for name, grad in zip(names, grads):
        numeric = np.zeros_like(grad)
        flat, out = p[name].reshape(-1), numeric.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + h
            up = loss()
            flat[i] = keep - h
            down = loss()
            flat[i] = keep
            out[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_is_bptt_with_earlier_states_held_constant(backend, kind, rng):
    """truncate=k: the full gradient of the last k steps run from the (constant) states at T-k-1."""
    shape = (3, 9, 4, 5)
    p = problem(rng, kind, shape, np.float64)
    for truncate in (1, 4, 8):
        t0 = shape[1] - truncate
        fwd, grads = run(kind, p, truncate)
        tail = dict(p, x=p["x"][:, t0:].copy(), grad_hs=p["grad_hs"][:, t0:].copy(), h0=fwd[0][:, t0 - 1].copy())
        if kind == "lstm":
            tail["c0"] = fwd[1][:, t0 - 1].copy()
        _, expected = run(kind, tail)
        dx = grads[0]
        assert not dx[:, :t0].any()
        np.testing.assert_allclose(dx[:, t0:], expected[0], rtol=1e-12, atol=1e-12)
        for a, b in zip(grads[1:4], expected[1:4]):  # dw_ih, dw_hh, dbias
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        if kind == "gru":
            np.testing.assert_allclose(grads[4], expected[4], rtol=1e-12, atol=1e-12)  # dbias_hn
        initial_state_grads = grads[-2:] if kind == "lstm" else grads[-1:]  # (dh0, dc0) or (dh0,)
        assert not any(g.any() for g in initial_state_grads)


@pytest.mark.parametrize("kind", KINDS)
def test_out_buffers_and_work_are_used(backend, kind, rng):
    """Caller-provided caches, outputs and work are written in place and returned (no allocation needed)."""
    p = problem(rng, kind, (3, 5, 4, 6), np.float64)
    m, t, _, n = 3, 5, 4, 6
    g = N_GATES[kind]
    expected = run(kind, p)
    hs, gates, aux = np.empty((m, t, n)), np.empty((m, t, g * n)), np.empty((m, t, n))
    work = np.empty(kernels.GATED_WORK[kind, "backward"] * m * n)
    dx = np.empty_like(p["x"])
    if kind == "lstm":
        fwd = kernels.lstm_forward(p["x"], p["w_ih"], p["w_hh"], p["bias"], p["h0"], p["c0"], out=hs, cell_out=aux,
                                   gates_out=gates, work=work)
        grads = kernels.lstm_backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], p["h0"], p["c0"],
                                      dx_out=dx, work=work)
    else:
        fwd = kernels.gru_forward(p["x"], p["w_ih"], p["w_hh"], p["bias"], p["bias_hn"], p["h0"], out=hs,
                                  gates_out=gates, hn_out=aux, work=work)
        grads = kernels.gru_backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], p["h0"], dx_out=dx,
                                     work=work)
    assert fwd[0] is hs and grads[0] is dx
    for a, b in zip(fwd + grads, expected[0] + expected[1]):
        assert np.array_equal(a, b)


def test_work_table_is_what_the_kernels_need(rng):
    """The Cython kernels check work against reference.GATED_WORK: one short element is refused."""
    from fastbp._kernels import cython as backend

    p = problem(rng, "gru", (2, 3, 2, 4), np.float64)
    size = kernels.GATED_WORK["gru", "forward"] * 2 * 4
    out = [np.empty((2, 3, 4)), np.empty((2, 3, 12)), np.empty((2, 3, 4))]
    with pytest.raises(ValueError, match="work needs 24"):
        backend.gru_forward(p["x"], p["w_ih"], p["w_hh"], p["bias"], p["bias_hn"], p["h0"], *out,
                            np.empty(size - 1), 1)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_is_refused_before_anything_is_written(backend, kind, rng):
    p = problem(rng, kind, (2, 3, 4, 5), np.float64)
    forward = kernels.lstm_forward if kind == "lstm" else kernels.gru_forward
    extra = (p["c0"],) if kind == "lstm" else ()
    bias_args = (p["bias"],) if kind == "lstm" else (p["bias"], p["bias_hn"])

    def call(**change):
        q = dict(p, **change)
        qb = (q["bias"],) if kind == "lstm" else (q["bias"], q["bias_hn"])
        return forward(q["x"], q["w_ih"], q["w_hh"], *qb, q["h0"], *((q["c0"],) if kind == "lstm" else ()), out=out)

    out = np.full((2, 3, 5), 7.0)
    cases = [
        (dict(x=p["x"][:, 0]), ValueError, "3-D"),  # wrong rank
        (dict(x=p["x"][:, :0]), ValueError, r"time .*>= 1"),  # length-0 sequence
        (dict(x=p["x"][:, :, :3]), ValueError, r"w_ih must have shape \(n_in"),  # mismatched features
        (dict(w_hh=p["w_hh"][:4]), ValueError, "w_hh must have shape"),
        (dict(bias=p["bias"][:-1]), ValueError, "bias must have shape"),
        (dict(h0=p["h0"][:1]), ValueError, r"h0 must have shape \(2, 5\)"),
        (dict(x=p["x"].astype(np.float32)), TypeError, "dtype"),
        (dict(x=p["x"].astype(np.int64)), TypeError, "float32 or float64"),
        (dict(x=list(p["x"])), TypeError, "numpy.ndarray"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            call(**change)
        assert (out == 7.0).all(), change
    with pytest.raises(ValueError, match="out must have shape"):
        forward(p["x"], p["w_ih"], p["w_hh"], *bias_args, p["h0"], *extra, out=np.empty((2, 3, 4)))
    with pytest.raises(ValueError, match="work must not overlap"):
        forward(p["x"], p["w_ih"], p["w_hh"], *bias_args, p["h0"], *extra, work=p["x"].reshape(-1))
    fwd, _ = run(kind, p)
    backward = kernels.lstm_backward if kind == "lstm" else kernels.gru_backward
    states = (p["h0"], p["c0"]) if kind == "lstm" else (p["h0"],)
    for truncate in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="truncate"):
            backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], *states, truncate=truncate)
    with pytest.raises(ValueError, match="grad_hs must have shape"):
        backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"][:, :2], *states)
    with pytest.raises(ValueError, match="work must be 1-D with at least"):
        backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], *states, work=np.empty(5))
    with pytest.raises(ValueError, match="must not overlap"):
        backward(p["x"], p["w_ih"], p["w_hh"], *fwd, p["grad_hs"], *states, dx_out=p["x"])


def test_thread_thresholds_are_the_blocking_table():
    """Both backends' row passes and bias column sums use blocking.py's thresholds (the Cython
    module receives them at import through _configure; the Numba module imports them)."""
    from fastbp._kernels import blocking
    from fastbp._kernels.cython import _gated
    from fastbp._kernels.numba import gated as numba_gated

    assert _gated._thresholds() == (blocking.RECURRENT_PARALLEL_MIN_ELEMENTS,
                                    blocking.GATED_COLUMN_SUMS_PARALLEL_MIN_ELEMENTS)
    assert numba_gated.RECURRENT_PARALLEL_MIN_ELEMENTS == blocking.RECURRENT_PARALLEL_MIN_ELEMENTS
    assert not hasattr(numba_gated, "PARALLEL_MIN_ELEMENTS")  # no second, local table
    with pytest.raises(ValueError, match="positive"):
        _gated._configure(0, 1)
