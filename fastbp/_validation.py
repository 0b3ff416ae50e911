"""Argument checks shared by the public wrappers.

Every check raises before any output is written, with a message that names
the argument, its shape and its dtype. The compiled kernels trust what passes.
"""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name, x, ndim=2, dtype=None):
    """Return ``x`` as given if it is an ndarray of float32/float64 with ``ndim`` dimensions.

    ``dtype``, when given, is the dtype ``x`` must have (that of the other operands).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other operands have dtype {np.dtype(dtype)}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not x.flags.aligned or any(s % x.itemsize for s in x.strides):
        raise ValueError(f"{name} must be aligned with strides a multiple of its item size, got strides {x.strides}")
    return x


def contiguous_input(name, x, ndim, dtype=None):
    """A checked float array, made C-contiguous (one copy) if it is not."""
    return np.ascontiguousarray(float_array(name, x, ndim, dtype))


def output_array(name, out, shape, dtype, inputs=()):
    """Return ``out``, or a new C-contiguous array, checked to hold ``shape`` of ``dtype``.

    An ``out`` given by the caller must be writable, C-contiguous and must not
    overlap any of ``inputs`` (except where the kernel allows aliasing, which the
    caller handles by leaving that input out of ``inputs``).
    """
    shape = tuple(shape)
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    for other in inputs:
        if other is not None and np.may_share_memory(out, other):
            raise ValueError(f"{name} must not overlap the inputs")
    return out


def scalar(name, value):
    """``value`` as a finite Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def same_length(name_a, a, name_b, b):
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows, got {a.shape} and {b.shape}"
        )
