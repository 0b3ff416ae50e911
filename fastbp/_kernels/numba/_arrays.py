"""Array adaptation at the boundary of the jitted kernels.

Numba types a read-only array differently from a writable one, so passing one
would compile every kernel a second time. The kernels never write their input
operands (the contract marks them IN), so a read-only operand is handed over as
a writable alias of the same memory: no copy, whatever its size. A broadcast
view (zero strides) copied instead would be materialised in full, gigabytes for
a view over a few megabytes.

Backpropagation through time reads a weight transposed, row by row; its copy
goes into a buffer kept per calling thread, so that after warm-up a training
step allocates nothing; so does a kernel's per-call scratch.
"""

import math
import threading

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


_kept = threading.local()


def kept_array(slot, shape, dtype):
    """An uninitialised C-contiguous array in a buffer kept per calling thread, ``slot`` and dtype,
    grown on demand: valid until this thread's next call for the slot, so for use within one kernel call."""
    size = math.prod(shape)
    key = (slot, dtype)
    buffer = _kept.__dict__.get(key)
    if buffer is None or buffer.size < size:
        buffer = _kept.__dict__[key] = np.empty(size, dtype)
    return buffer[:size].reshape(shape)


def kept_copy(a, slot, transpose=False):
    """A ``kept_array`` holding a copy of ``a`` (of 2-D ``a.T`` if ``transpose``)."""
    source = a.T if transpose else a
    out = kept_array(slot, source.shape, a.dtype)
    np.copyto(out, source)
    return out


def transposed(a):
    """``kept_copy`` of 2-D ``a.T``: the w_hhᵀ that backpropagation through time reads row by row."""
    return kept_copy(a, "transposed", transpose=True)
