"""The kernel contract (see ``reference``) and its two compiled backends.

``reference`` is the plain-NumPy specification; ``numba`` and ``cython`` are
packages exporting the same names and signatures. ``fastbp._backend`` is the one
place that chooses between them.
"""
