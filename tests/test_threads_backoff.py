"""The Cython kernels' busy-machine back-off (fastbp/_kernels/cython/_threads.pyx, blocking.BACKOFF_*)."""

import contextlib

import numpy as np
import pytest

import fastbp
from fastbp import kernels
from fastbp._kernels import blocking
from fastbp._kernels.cython import _threads


def test_backoff_doubles_while_parallel_calls_lose_and_resets_when_one_pays():
    _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)
    try:
        assert _threads._state() == (0, blocking.BACKOFF_MIN_CALLS)
        _threads._judge(3e-3, 8 * 1e-5, 8, 16)  # 3 ms for 16 tasks of 10 us: lost
        assert _threads._state() == (blocking.BACKOFF_MIN_CALLS, 2 * blocking.BACKOFF_MIN_CALLS)
        for _ in range(12):
            _threads._judge(1.0, 1e-5, 1, 16)
        assert _threads._state()[1] == blocking.BACKOFF_MAX_CALLS
        _threads._judge(1e-4, 8 * 1e-5, 8, 16)  # 0.1 ms for 16 tasks of 10 us: paid
        assert _threads._state()[1] == blocking.BACKOFF_MIN_CALLS
        _threads._judge(1.0, 0.0, 0, 16)  # the calling thread took no task: no verdict
        assert _threads._state()[1] == blocking.BACKOFF_MIN_CALLS
        # 60 us over the 160 us of one thread: a sleeping thread woken late, not a lost core
        _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)
        _threads._judge(1.6e-4 + 6e-5, 8 * 1e-5, 8, 16)
        assert _threads._state() == (0, blocking.BACKOFF_MIN_CALLS)
        _threads._judge(1.6e-4 + blocking.BACKOFF_SLACK_SECONDS + 1e-5, 8 * 1e-5, 8, 16)
        assert _threads._state()[0] == blocking.BACKOFF_MIN_CALLS
    finally:
        _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)


def test_gemm_during_a_backoff_counts_down_and_gives_the_same_bits(rng, threads):
    a = rng.standard_normal((200, 300)).astype(np.float32)
    b = rng.standard_normal((300, 150)).astype(np.float32)
    with fastbp.backend("cython"):
        threads(2)
        expected = kernels.gemm(a, b)
        _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)
        try:
            _threads._judge(1.0, 1e-5, 1, 16)
            left = _threads._state()[0]
            np.testing.assert_array_equal(kernels.gemm(a, b), expected)
            assert _threads._state()[0] == left - 1
        finally:
            _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)


def test_numba_backoff_follows_the_same_rules_and_is_reached_from_compiled_code(rng, threads):
    from fastbp._kernels.numba import _threads as numba_threads

    state = numba_threads.BACKOFF
    a = rng.standard_normal((200, 300)).astype(np.float32)
    b = rng.standard_normal((300, 150)).astype(np.float32)
    with fastbp.backend("numba"):
        threads(2)
        expected = kernels.gemm(a, b)
        state[:] = (0, blocking.BACKOFF_MIN_CALLS)
        try:
            numba_threads.judge_parallel_call(1.6e-4 + 6e-5, 8e-5, 8, 16)  # woken late: no back-off
            assert tuple(state) == (0, blocking.BACKOFF_MIN_CALLS)
            numba_threads.judge_parallel_call(3e-3, 8e-5, 8, 16)  # lost: back off
            assert tuple(state) == (blocking.BACKOFF_MIN_CALLS, 2 * blocking.BACKOFF_MIN_CALLS)
            assert numba_threads.backing_off()
            np.testing.assert_array_equal(kernels.gemm(a, b), expected)  # on one thread, counted
            assert state[0] == blocking.BACKOFF_MIN_CALLS - 1
            numba_threads.judge_parallel_call(1e-4, 8e-5, 8, 16)  # paid
            assert state[1] == blocking.BACKOFF_MIN_CALLS
        finally:
            state[:] = (0, blocking.BACKOFF_MIN_CALLS)



@contextlib.contextmanager
def forced_backoff(backend_name, calls=1 << 20):
    """A back-off of ``calls`` GEMMs on ``backend_name`` for the block; yields a function that
    returns the GEMMs left. Both backends' state is reset to blocking's on the way out."""
    from fastbp._kernels.numba import _threads as numba_threads

    def reset():
        _threads._configure(blocking.BACKOFF_MIN_CALLS, blocking.BACKOFF_MAX_CALLS, blocking.BACKOFF_SLACK_SECONDS)
        numba_threads.BACKOFF[:] = (0, blocking.BACKOFF_MIN_CALLS)

    reset()
    try:
        if backend_name == "cython":
            _threads._configure(calls, calls, blocking.BACKOFF_SLACK_SECONDS)
            _threads._judge(1.0, 1e-5, 1, 16)  # a lost call: the back-off starts
            yield lambda: _threads._state()[0]
        else:
            numba_threads.BACKOFF[:] = (calls, blocking.BACKOFF_MIN_CALLS)
            yield lambda: int(numba_threads.BACKOFF[0])
    finally:
        reset()


@pytest.mark.parametrize("backend_name", ["cython", "numba"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "fixed_point"])
def test_recurrent_kernels_during_a_backoff_give_the_same_bits(backend_name, kind, rng, threads):
    """Shapes whose row passes (and, for T = 60, the gated bias column sums) go parallel on 2
    threads: the same bits with the back-off forced on (every parallel decision then picks one
    thread) as without it, on 2 threads and on 1; the GEMMs of the call count the back-off down."""
    from test_lstm_gru import problem, run

    shapes = [(64, 3, 5, 96), (64, 60, 3, 96)] if kind in ("lstm", "gru") else [(256, 4, 0, 128)]
    with fastbp.backend(backend_name):
        for shape in shapes:
            if kind in ("lstm", "gru"):
                p = problem(rng, kind, shape, np.float32)
                call = lambda: sum(run(kind, p), ())  # noqa: E731
            elif kind == "rnn":
                m, t, _, n = shape
                x = rng.standard_normal((m, t, n)).astype(np.float32)
                wh = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
                grad = rng.standard_normal((m, t, n)).astype(np.float32)

                def call():
                    hs = kernels.rnn_forward(x, wh, "tanh")
                    return (hs, *kernels.rnn_backward(hs, wh, grad, "tanh"))
            else:
                m, _, _, n = shape
                x = rng.standard_normal((m, n)).astype(np.float32)
                wh = (0.3 * rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32)
                grad = rng.standard_normal((m, n)).astype(np.float32)

                def call():
                    h, _ = kernels.fixed_point_forward(x, wh, "tanh", tol=1e-6, max_iter=30)
                    delta, _ = kernels.fixed_point_adjoint(h, wh, grad, "tanh", tol=1e-6, max_iter=30)
                    return h, delta

            results = {}
            for n_threads in (2, 1):
                threads(n_threads)
                results[n_threads, False] = call()
                with forced_backoff(backend_name) as gemms_left:
                    before = gemms_left()
                    results[n_threads, True] = call()
                    assert 0 < gemms_left() <= before
                    if n_threads == 2 and not (kind == "fixed_point" and backend_name == "numba"):
                        # (a Numba fixed-point sweep calls no GEMM)
                        assert gemms_left() < before, "the kernels' GEMMs did not count the back-off"
            expected = results[2, False]
            for key, got in results.items():
                for a, b in zip(expected, got):
                    assert np.array_equal(a, b), f"{kind} {shape} {key}"
