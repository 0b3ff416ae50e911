"""The Cython kernels' busy-machine back-off (fastbp/_kernels/cython/_threads.pyx, blocking.BACKOFF_*)."""

import numpy as np

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

