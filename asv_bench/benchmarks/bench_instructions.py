"""Instructions per call of the key kernels (valgrind's callgrind): deterministic, lower is better.

The companion of the timings for tracking regressions on a noisy machine: the
count of one kernel call on one thread repeats within ~0.01 %, so
``asv continuous --factor 1.05 --bench Instructions`` flags a 5 % change that the
timings cannot tell from noise. See ``callgrind.py`` for how the count is taken.
Cython backend only: Numba's import and cache loading under valgrind take over
ten minutes on the development machine. Skipped without valgrind, or with
FASTBP_ASV_CALLGRIND=0.
"""

from . import callgrind
from .common import DTYPES

BACKENDS = ["cython"]


class Instructions:
    params = [BACKENDS, DTYPES, list(callgrind.CASES)]
    param_names = ["backend", "dtype", "kernel"]
    rounds = 1  # deterministic: one count is the count
    timeout = 1800

    def setup_cache(self):
        # One valgrind process per backend and dtype measures every kernel.
        counts = {}
        for backend in BACKENDS:
            for dtype in DTYPES:
                try:
                    counts[backend, dtype] = callgrind.measure(backend, dtype)
                except NotImplementedError as exc:
                    counts[backend, dtype] = str(exc)
        return counts

    def setup(self, counts, backend, dtype, kernel):
        if isinstance(counts.get((backend, dtype)), str):
            raise NotImplementedError(counts[backend, dtype])

    def track_instructions(self, counts, backend, dtype, kernel):
        return counts[backend, dtype][kernel]

    track_instructions.unit = "instructions"
