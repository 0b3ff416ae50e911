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


def output_array(name, out, shape, dtype, inputs=None, may_alias=()):
    """Return ``out``, or a new C-contiguous array, checked to hold ``shape`` of ``dtype``.

    An ``out`` given by the caller must be writable, C-contiguous and must not
    overlap any array of ``inputs`` (a mapping name -> array; see ``no_overlap``),
    except that it may be exactly one named in ``may_alias``.
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
    no_overlap(name, out, inputs or {}, may_alias)
    return out


def _same_memory(a, b):
    """Whether ``a`` and ``b`` view exactly the same elements in the same order."""
    return a is b or (a.shape == b.shape and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def no_overlap(name, out, inputs, may_alias=()):
    """Refuse an ``out`` that shares memory with any array of ``inputs`` (name -> array or None).

    The one overlap rule of every kernel: a kernel reads its inputs while it
    writes ``out``, so any shared element can be overwritten before it is read.
    The inputs named in ``may_alias`` are those the kernel is written to update
    in place: ``out`` may be exactly such an input (same memory, shape and
    strides), but even these may not overlap it partly. ``np.may_share_memory``
    is conservative (memory bounds), so interleaved views are refused too.
    """
    for other_name, other in inputs.items():
        if other is None or not np.may_share_memory(out, other):
            continue
        if other_name in may_alias and _same_memory(out, other):
            continue
        if other_name in may_alias:
            raise ValueError(f"{name} must not overlap the inputs, but it partly overlaps {other_name} "
                             f"({name} may be {other_name} itself, not part of it)")
        raise ValueError(f"{name} must not overlap the inputs, but it overlaps {other_name}")


def scalar(name, value, dtype=None):
    """``value`` as a finite Python float; finite in ``dtype`` too when given.

    The kernels round a scalar to the dtype of their arrays, so a value beyond
    float32's range (``beta=1e39``) would become infinite there and poison every
    element: it is refused rather than computed.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if dtype is not None and abs(value) > float(np.finfo(dtype).max):
        raise ValueError(f"{name}={value:g} is beyond the range of {np.dtype(dtype).name}, the dtype of the "
                         f"arrays: |{name}| must be at most {float(np.finfo(dtype).max):g}")
    return value


def unit_interval(name, value):
    """``value`` as a float in [0, 1) (a decay rate such as Adam's betas or RMSprop's rho)."""
    value = scalar(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def same_length(name_a, a, name_b, b):
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of rows, got {a.shape} and {b.shape}"
        )
