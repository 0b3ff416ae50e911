"""Short runs of values copied, zeroed or added as vectors: the convolution's gather and scatter.

Design: the gather copies each output pixel's receptive field as runs of kw·c
contiguous values (5 for LeNet's one-channel 5x5 kernel, 30 for its second layer),
and col2im adds such runs back. A plain loop over a run is vectorised by LLVM for
long trip counts only (a vector body of 64 values, then the remainder one value at
a time, after run-time alias checks), so a short run ran scalar: the gather of
LeNet's first layer took 1.3-1.9 ms, half of the forward pass. Here a run is emitted
as LLVM IR by Numba intrinsics: whole vectors of the ISA's width (VECTOR_LANES), then
one masked vector (llvm.masked.load/store) for the remainder, so a run of 5 values
is one masked load and one masked store. Nothing is read or written outside the run
(a masked-off lane is not accessed), so runs written by different threads may touch.

Layout: ``dst`` and ``src`` are C-contiguous arrays read flat, ``d`` and ``s`` offsets
in values from their first element. Each value is handled on its own (a copy, or one
addition dst + src), so the results are those of the scalar loop, bit for bit.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._threads import VECTOR_LANES


def _emit_run(context, builder, signature, args, op):
    """IR of ``op`` ('copy', 'zero', 'add') over n values: whole vectors, then one masked one.

    args: (dst, d, src, s, n) for copy and add, (dst, d, n) for zero.
    """
    argtys = signature.args
    dtype = argtys[0].dtype
    lanes = VECTOR_LANES[str(dtype)]
    i64, i32 = ir.IntType(64), ir.IntType(32)
    fty = context.get_value_type(dtype)
    vty = ir.VectorType(fty, lanes)
    mty = ir.VectorType(ir.IntType(1), lanes)
    vptr = vty.as_pointer()
    align = context.get_abi_sizeof(fty)
    align_arg = ir.Constant(i32, align)
    suffix = f"v{lanes}f{8 * align}"
    masked_load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vty, [vptr, i32, mty, vty]), f"llvm.masked.load.{suffix}.p0")
    masked_store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vptr, i32, mty]), f"llvm.masked.store.{suffix}.p0")

    def pointer(index):
        data = context.make_array(argtys[index])(context, builder, args[index]).data
        return builder.gep(data, [context.cast(builder, args[index + 1], argtys[index + 1], types.int64)])

    dst = pointer(0)
    src = pointer(2) if op != "zero" else None
    n = context.cast(builder, args[-1], argtys[-1], types.int64)
    zero = ir.Constant(vty, None)
    step = ir.Constant(i64, lanes)

    def vector_at(base, i):
        return builder.bitcast(builder.gep(base, [i]), vptr)

    # Whole vectors while more than one vector's worth remains.
    entry = builder.block
    check = builder.append_basic_block("run.check")
    body = builder.append_basic_block("run.body")
    tail = builder.append_basic_block("run.tail")
    builder.branch(check)
    builder.position_at_end(check)
    i = builder.phi(i64, name="i")
    i.add_incoming(ir.Constant(i64, 0), entry)
    left = builder.sub(n, i)
    builder.cbranch(builder.icmp_signed(">", left, step), body, tail)
    builder.position_at_end(body)
    out = vector_at(dst, i)
    if op == "zero":
        value = zero
    else:
        value = builder.load(vector_at(src, i), align=align)
        if op == "add":
            value = builder.fadd(builder.load(out, align=align), value)
    builder.store(value, out, align=align)
    i.add_incoming(builder.add(i, step), body)
    builder.branch(check)

    # The remainder (1 to lanes values; none when n <= 0): lanes below ``left``.
    builder.position_at_end(tail)
    left_v = builder.insert_element(ir.Constant(ir.VectorType(i64, lanes), ir.Undefined), left, ir.Constant(i32, 0))
    left_v = builder.shuffle_vector(left_v, ir.Constant(ir.VectorType(i64, lanes), ir.Undefined),
                                    ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
    mask = builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, lanes), list(range(lanes))), left_v)
    out = vector_at(dst, i)
    if op == "zero":
        value = zero
    else:
        value = builder.call(masked_load, [vector_at(src, i), align_arg, mask, zero])
        if op == "add":
            value = builder.fadd(builder.call(masked_load, [out, align_arg, mask, zero]), value)
    builder.call(masked_store, [value, out, align_arg, mask])
    return context.get_dummy_value()


def _pair_signature(dst_ty, d_ty, src_ty, s_ty, n_ty):
    if not (isinstance(dst_ty, types.Array) and isinstance(src_ty, types.Array) and dst_ty.dtype == src_ty.dtype
            and str(dst_ty.dtype) in VECTOR_LANES
            and all(isinstance(t, types.Integer) for t in (d_ty, s_ty, n_ty))):
        return None
    return types.void(dst_ty, d_ty, src_ty, s_ty, n_ty)


@intrinsic
def copy_run(typingctx, dst_ty, d_ty, src_ty, s_ty, n_ty):
    """dst[d:d+n] := src[s:s+n] (flat, C-contiguous; nothing when n <= 0)."""
    sig = _pair_signature(dst_ty, d_ty, src_ty, s_ty, n_ty)
    return None if sig is None else (sig, lambda c, b, s, a: _emit_run(c, b, s, a, "copy"))


@intrinsic
def add_run(typingctx, dst_ty, d_ty, src_ty, s_ty, n_ty):
    """dst[d:d+n] += src[s:s+n] (flat, C-contiguous; nothing when n <= 0)."""
    sig = _pair_signature(dst_ty, d_ty, src_ty, s_ty, n_ty)
    return None if sig is None else (sig, lambda c, b, s, a: _emit_run(c, b, s, a, "add"))


@intrinsic
def zero_run(typingctx, dst_ty, d_ty, n_ty):
    """dst[d:d+n] := 0 (flat, C-contiguous; nothing when n <= 0)."""
    if not (isinstance(dst_ty, types.Array) and str(dst_ty.dtype) in VECTOR_LANES
            and isinstance(d_ty, types.Integer) and isinstance(n_ty, types.Integer)):
        return None
    return types.void(dst_ty, d_ty, n_ty), lambda c, b, s, a: _emit_run(c, b, s, a, "zero")
