# cython: language_level=3
"""Busy-machine back-off of the Cython kernels (see _threads.pxd, blocking.py)."""
# Process-wide state; a race between two calling threads only changes a count,
# never a result.

cdef Py_ssize_t BACKOFF_MIN_CALLS = 16
cdef Py_ssize_t BACKOFF_MAX_CALLS = 1024
cdef Py_ssize_t _serial_calls_left = 0  # GEMMs left to run on one thread
cdef Py_ssize_t _backoff_calls = 16  # how many the next back-off sends there
cdef double BACKOFF_SLACK_SECONDS = 2.5e-4


cdef Py_ssize_t gemm_threads_now(Py_ssize_t n_threads) noexcept nogil:
    global _serial_calls_left
    if n_threads > 1 and _serial_calls_left > 0:
        _serial_calls_left -= 1
        return 1
    return n_threads


cdef bint backing_off() noexcept nogil:
    return _serial_calls_left > 0


cdef void judge_parallel_call(double wall, double master_time, Py_ssize_t master_tasks,
                              Py_ssize_t n_tasks) noexcept nogil:
    """Back off when the call took longer than n_tasks x the busiest thread's mean task time
    (the thread that had a core) by more than BACKOFF_SLACK_SECONDS: the other threads did
    not get one in time, or spent it waiting, as on a busy machine. The slack tells waking
    a sleeping thread (tens of µs, on every parallel call after a pause) from waiting
    for a core (a time slice, ms)."""
    global _serial_calls_left, _backoff_calls
    if master_tasks == 0:
        return
    if wall > master_time / master_tasks * n_tasks + BACKOFF_SLACK_SECONDS:
        _serial_calls_left = _backoff_calls
        _backoff_calls = min(2 * _backoff_calls, BACKOFF_MAX_CALLS)
    else:
        _backoff_calls = BACKOFF_MIN_CALLS


cdef void judge_by_busiest(double wall, const double* stats, Py_ssize_t nt, Py_ssize_t n_tasks) noexcept nogil:
    """judge_parallel_call from the thread that took the most tasks (stats: per thread, up to
    64, seconds in tasks then tasks)."""
    cdef Py_ssize_t tid, busiest = 0
    for tid in range(min(nt, 64)):
        if stats[2 * tid + 1] > stats[2 * busiest + 1]:
            busiest = tid
    judge_parallel_call(wall, stats[2 * busiest], <Py_ssize_t>stats[2 * busiest + 1], n_tasks)


def _configure(Py_ssize_t backoff_min_calls, Py_ssize_t backoff_max_calls, double slack_seconds):
    """Set blocking.BACKOFF_MIN_CALLS, BACKOFF_MAX_CALLS, BACKOFF_SLACK_SECONDS; ends any back-off."""
    global BACKOFF_MIN_CALLS, BACKOFF_MAX_CALLS, BACKOFF_SLACK_SECONDS, _backoff_calls, _serial_calls_left
    if min(backoff_min_calls, backoff_max_calls) < 1:
        raise ValueError(f"back-off call counts must be positive, got {backoff_min_calls}, {backoff_max_calls}")
    if not slack_seconds >= 0:
        raise ValueError(f"the back-off slack must be >= 0 seconds, got {slack_seconds}")
    BACKOFF_SLACK_SECONDS = slack_seconds
    BACKOFF_MIN_CALLS = _backoff_calls = backoff_min_calls
    BACKOFF_MAX_CALLS = backoff_max_calls
    _serial_calls_left = 0


def _state():
    """(GEMMs left on one thread, length of the next back-off), for tests."""
    return _serial_calls_left, _backoff_calls


def _judge(double wall, double master_time, Py_ssize_t master_tasks, Py_ssize_t n_tasks):
    """judge_parallel_call, for tests."""
    judge_parallel_call(wall, master_time, master_tasks, n_tasks)
