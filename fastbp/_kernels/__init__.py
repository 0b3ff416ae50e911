"""The kernel contract (see ``reference``) and its two compiled backends.

``reference`` is the plain-NumPy specification; ``numba`` and ``cython`` are
packages exporting the same names and signatures. ``fastbp._backend`` is the one
place that chooses between them.
"""

from ._openmp_env import set_default_spin_count as _set_default_spin_count

# Before either backend loads libgomp (see _openmp_env).
OPENMP_SPIN_COUNT_SET = _set_default_spin_count()
