"""Array adaptation at the boundary of the jitted kernels.

Numba types a read-only array differently from a writable one, so passing one
would compile every kernel a second time. The kernels never write their input
operands (the contract marks them IN), so a read-only operand is handed over as
a writable alias of the same memory: no copy, whatever its size. A broadcast
view (zero strides) copied instead would be materialised in full, gigabytes for
a view over a few megabytes.
"""

import numpy as np


class _WritableAlias:
    """Exposes ``x``'s memory, shape and strides through the array interface, marked writable."""

    def __init__(self, x):
        interface = dict(x.__array_interface__)
        interface["data"] = (interface["data"][0], False)  # (pointer, read_only)
        self.__array_interface__ = interface
        self.base = x  # the alias's base holds this object, which holds x: x's memory outlives the alias


def writable(x):
    """``x``, or if it is read-only a writable alias of its memory (no copy): for IN operands only."""
    return x if x.flags.writeable else np.asarray(_WritableAlias(x))
