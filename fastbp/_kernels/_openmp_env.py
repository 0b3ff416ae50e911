"""How long idle OpenMP threads spin before they sleep: a default fastbp sets.

libgomp (GCC's OpenMP runtime, used by the Cython extensions and by Numba's
'omp' threading layer) makes a thread that has finished its part of a parallel
region spin for GOMP_SPINCOUNT = 300,000 pause instructions before sleeping:
~10-20 ms on CPUs whose pause takes ~140 cycles (Intel since Skylake). A
spinning fastbp thread takes the core from whoever else wants it (NumPy's BLAS
threads, another process, the thread of ours still working when the machine
is busy), and on a shared core every barrier then costs a scheduler slice.
GOMP_SPINCOUNT = SPIN_COUNT spins for some tens of microseconds: long enough
to catch the next region of a training step on a quiet machine, short enough
to let go of the core soon after.

libgomp reads these variables once, when it is loaded, so this must run before
the first extension that links it is imported; and it only applies when the
user has set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT (their choice wins).
If libgomp is already loaded (another library brought it in first), nothing
changes. The variable stays set in os.environ, so child processes inherit it.
"""

import os

SPIN_COUNT = 10_000


def _libgomp_loaded():
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:  # not Linux: no way to tell; setting the variable is harmless
        return False


def set_default_spin_count():
    """Set GOMP_SPINCOUNT = SPIN_COUNT unless the user chose a wait policy or libgomp is loaded.

    Returns whether it was set.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or _libgomp_loaded():
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
