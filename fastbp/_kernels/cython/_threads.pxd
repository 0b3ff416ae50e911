# Busy-machine back-off shared by every Cython kernel (blocking.py's BACKOFF_*):
# a parallel GEMM that took longer than its work would have on one thread
# sends the next GEMMs to one thread, and while that lasts every kernel runs
# on one thread. Thread counts never change results.

# n_threads, or 1 while a back-off lasts; counts one GEMM call of the back-off.
cdef Py_ssize_t gemm_threads_now(Py_ssize_t n_threads) noexcept nogil
# Whether a back-off lasts (the other kernels then run on one thread).
cdef bint backing_off() noexcept nogil
# Judge a parallel GEMM: wall seconds against the busiest thread's master_tasks
# task times (master_time seconds) scaled to n_tasks.
cdef void judge_parallel_call(double wall, double master_time, Py_ssize_t master_tasks,
                              Py_ssize_t n_tasks) noexcept nogil
