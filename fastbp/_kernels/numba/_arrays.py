"""Array adaptation at the boundary of the jitted kernels.

Numba types a read-only array differently from a writable one, so passing one
would compile every kernel a second time; the wrappers copy it instead.
"""

import numpy as np


def writable(x):
    """``x``, or a writable copy of it if it is read-only."""
    return x if x.flags.writeable else np.array(x)
