"""Packing of GEMM operands into contiguous, zero-padded micro-panels.

Design: A and B arrive with any strides (C, F, transposed or negative-stride
views). Indexing a layout-'A' Numba array costs a wraparound test and a stride
multiply per element (~1 ns); here the operand is read through its raw data
pointer with element strides, which LLVM vectorises when a stride is 1
(~0.1-0.5 ns per element). The loop order follows the operand's smaller stride.

Layout written: A block as MR-row micro-panels ``pa[pa_off + ir*kc + p*MR + i]``,
B as NR-column micro-panels ``pb[pb_off + p*NR + j]``; rows / columns beyond the
matrix are zeros, so the micro-kernel always computes full tiles.
"""

import numba
from numba import types
from numba.extending import intrinsic


@intrinsic
def data_pointer(typingctx, arr_ty):
    """The address of element [0, ..., 0] of an array, as a typed pointer (indexable, no wraparound)."""
    if not isinstance(arr_ty, types.Array):
        return None

    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return types.CPointer(arr_ty.dtype)(arr_ty), codegen


@numba.njit(cache=True, nogil=True)
def pack_a(a, ic, mc, pc, kc, mr_block, pa, pa_off):
    """Pack A[ic:ic+mc, pc:pc+kc] into MR-row micro-panels of pa, zero-padded.  IN a any strides; OUT pa."""
    src = data_pointer(a)
    dst = data_pointer(pa)
    row_stride = a.strides[0] // a.itemsize
    col_stride = a.strides[1] // a.itemsize
    for ir in range(0, mc, mr_block):
        rows = min(mr_block, mc - ir)
        base = pa_off + ir * kc
        origin = (ic + ir) * row_stride + pc * col_stride
        if abs(col_stride) <= abs(row_stride):  # rows are contiguous: walk along k
            for i in range(rows):
                for p in range(kc):
                    dst[base + p * mr_block + i] = src[origin + i * row_stride + p * col_stride]
        else:  # columns are contiguous: walk down the rows
            for p in range(kc):
                for i in range(rows):
                    dst[base + p * mr_block + i] = src[origin + i * row_stride + p * col_stride]
        for p in range(kc):
            for i in range(rows, mr_block):
                dst[base + p * mr_block + i] = 0.0


@numba.njit(cache=True, nogil=True)
def pack_b_panel(b, pc, kc, col, cols, nr_block, pb, pb_off):
    """Pack B[pc:pc+kc, col:col+cols] into one NR-column micro-panel of pb, zero-padded.  IN b any strides; OUT pb."""
    src = data_pointer(b)
    dst = data_pointer(pb)
    row_stride = b.strides[0] // b.itemsize
    col_stride = b.strides[1] // b.itemsize
    origin = pc * row_stride + col * col_stride
    if abs(col_stride) <= abs(row_stride):
        for p in range(kc):
            for j in range(cols):
                dst[pb_off + p * nr_block + j] = src[origin + p * row_stride + j * col_stride]
    else:
        for j in range(cols):
            for p in range(kc):
                dst[pb_off + p * nr_block + j] = src[origin + p * row_stride + j * col_stride]
    for p in range(kc):
        for j in range(cols, nr_block):
            dst[pb_off + p * nr_block + j] = 0.0
