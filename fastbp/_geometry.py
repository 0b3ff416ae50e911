"""Geometry of convolutions and poolings over channels-last images: the one
place that turns stride, padding, dilation and window arguments into the
kernels' integer tuples and output shapes, and rejects impossible ones.

A window of size k with dilation d spans d·(k-1) + 1 pixels; over an input of
size n padded by (before, after) it gives (n + before + after - span) // stride + 1
outputs (torch's and TensorFlow's floor rule).
"""

import numbers


def positive_pair(name, value):
    """``value`` (an int or a pair of ints) as a pair of positive ints (height, width)."""
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        h, w = pair
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive int or a pair of them, got {value!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be a positive int or a pair of them, got {value!r}")
        if v < 1:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return int(h), int(w)


def paddings(padding, size, span, stride):
    """(top, bottom, left, right) for ``padding``: "valid", "same", an int, (ph, pw) or (top, bottom, left, right).

    "same" gives ceil(size / stride) outputs per axis (TensorFlow's rule; torch's
    padding="same" for stride 1): the padding total is split with the extra pixel
    at the bottom/right. ``size``, ``span``, ``stride`` are (height, width) pairs.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            pads = []
            for n, k, s in zip(size, span, stride):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple of ints, got {padding!r}")
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        pads = (padding,) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        pads = (padding[0], padding[0], padding[1], padding[1])
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(padding)
    else:
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple of 2 or 4 ints, got {padding!r}")
    for p in pads:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise TypeError(f"padding must hold ints, got {padding!r}")
        if p < 0:
            raise ValueError(f"padding must not be negative, got {padding!r}")
    return tuple(int(p) for p in pads)


def output_size(what, x_shape, window, span, stride, pads):
    """(out_h, out_w), or a ValueError when the window does not fit the padded image."""
    (_, h, w, _), (top, bottom, left, right) = x_shape, pads
    padded = (h + top + bottom, w + left + right)
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"{what}: the window {window[0]}x{window[1]} (spanning {span[0]}x{span[1]} pixels with its dilation) "
            f"is larger than the padded image {padded[0]}x{padded[1]} (x has shape {x_shape}, "
            f"padding (top, bottom, left, right) = {pads})")
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, span, stride))


def conv2d(x_shape, w_shape, stride, padding, dilation):
    """Output (n, out_h, out_w, c_out) and the kernels' (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w)."""
    stride = positive_pair("stride", stride)
    dilation = positive_pair("dilation", dilation)
    kh, kw = w_shape[:2]
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    pads = paddings(padding, x_shape[1:3], span, stride)
    out_h, out_w = output_size("conv2d", x_shape, (kh, kw), span, stride, pads)
    return (x_shape[0], out_h, out_w, w_shape[3]), (stride[0], stride[1], pads[0], pads[2], dilation[0], dilation[1])


def pool2d(what, x_shape, pool_size, stride, padding):
    """Output (n, out_h, out_w, c) and the kernels' (pool_h, pool_w, stride_h, stride_w, pad_top, pad_left).

    ``stride`` None means the pool size (torch's default). Each padding must be
    smaller than the window along its axis, so that every window holds a pixel.
    """
    pool = positive_pair("pool_size", pool_size)
    stride = pool if stride is None else positive_pair("stride", stride)
    pads = paddings(padding, x_shape[1:3], pool, stride)
    if max(pads[:2]) >= pool[0] or max(pads[2:]) >= pool[1]:
        raise ValueError(f"{what}: padding {pads} (top, bottom, left, right) must be smaller than the "
                         f"pool size {pool[0]}x{pool[1]} along each axis")
    out_h, out_w = output_size(what, x_shape, pool, pool, stride, pads)
    return (x_shape[0], out_h, out_w, x_shape[3]), (pool[0], pool[1], stride[0], stride[1], pads[0], pads[2])
