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
# The same verdict on a parallel call of wall seconds and n_tasks tasks (dynamically
# scheduled), from the thread that took the most: stats holds, per thread (up to 64;
# later ones share the last slot), its seconds in tasks then its task count.
cdef void judge_by_busiest(double wall, const double* stats, Py_ssize_t nt, Py_ssize_t n_tasks) noexcept nogil
