"""Short runs of values copied, zeroed or added as vectors: the convolution's gather and scatter.

Design: the gather copies each output pixel's receptive field as runs of kw·c
contiguous values (5 for LeNet's one-channel 5x5 kernel, 30 for its second layer),
and col2im adds such runs back. A plain loop over a run is vectorised by LLVM for
long trip counts only (a vector body of 64 values, then the remainder one value at
a time, after run-time alias checks), so a short run ran scalar: the gather of
LeNet's first layer took 1.3-1.9 ms, half of the forward pass. Here a run is emitted
as LLVM IR by Numba intrinsics: whole vectors of the ISA's width (VECTOR_LANES), then
one masked vector (llvm.masked.load/store, as the GEMM's unpacked micro-kernel) for
the remainder, so a run of 5 values is one masked load and one masked store. Nothing is read or written outside the run
(a masked-off lane is not accessed), so runs written by different threads may touch.

Layout: ``dst`` and ``src`` are C-contiguous arrays read flat, ``d`` and ``s`` offsets
in values from their first element. Each value is handled on its own (a copy, or one
addition dst + src), so the results are those of the scalar loop, bit for bit.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._threads import VECTOR_LANES


class _Vectors:
    """LLVM types and masked load / store of ``lanes``-wide vectors of ``dtype`` in one module."""

    def __init__(self, context, builder, dtype, lanes):
        i32 = ir.IntType(32)
        self.lanes, self.builder = lanes, builder
        fty = context.get_value_type(dtype)
        self.vty = ir.VectorType(fty, lanes)
        self.align = context.get_abi_sizeof(fty)
        self.align_arg = ir.Constant(i32, self.align)
        self.zero = ir.Constant(self.vty, None)
        mty = ir.VectorType(ir.IntType(1), lanes)
        vptr = self.vty.as_pointer()
        suffix = f"v{lanes}f{8 * self.align}"
        self.load_fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [vptr, i32, mty, self.vty]), f"llvm.masked.load.{suffix}.p0")
        self.store_fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [self.vty, vptr, i32, mty]),
            f"llvm.masked.store.{suffix}.p0")

    def at(self, base, i):
        """The vector at base[i] (a typed element pointer, an i64 index)."""
        return self.builder.bitcast(self.builder.gep(base, [i]), self.vty.as_pointer())

    def lanes_below(self, left):
        """The mask of the lanes l < left (an i64)."""
        i64, i32 = ir.IntType(64), ir.IntType(32)
        b = self.builder
        undef = ir.Constant(ir.VectorType(i64, self.lanes), ir.Undefined)
        splat = b.shuffle_vector(b.insert_element(undef, left, ir.Constant(i32, 0)), undef,
                                 ir.Constant(ir.VectorType(i32, self.lanes), [0] * self.lanes))
        return b.icmp_signed("<", ir.Constant(ir.VectorType(i64, self.lanes), list(range(self.lanes))), splat)

    def load(self, ptr, mask):
        return self.builder.call(self.load_fn, [ptr, self.align_arg, mask, self.zero])

    def store(self, value, ptr, mask):
        self.builder.call(self.store_fn, [value, ptr, self.align_arg, mask])


def _masked_step(vec, op, dst, src, i, left):
    """``op`` on the values i .. i+left-1 (left <= vec.lanes; none when left <= 0): one masked vector."""
    mask = vec.lanes_below(left)
    out = vec.at(dst, i)
    value = vec.zero
    if op != "zero":
        value = vec.load(vec.at(src, i), mask)
        if op == "add":
            value = vec.builder.fadd(vec.load(out, mask), value)
    vec.store(value, out, mask)


def _emit_run(context, builder, signature, args, op):
    """IR of ``op`` ('copy', 'zero', 'add') over n values: whole vectors while more than one
    vector's worth remains, then one masked vector, of half the width where that holds the rest
    (runs of 5 float32 values: LeNet's first gather 0.41 -> 0.37 ms, its col2im 0.15 -> 0.14 ms).

    args: (dst, d, src, s, n) for copy and add, (dst, d, n) for zero.
    """
    argtys = signature.args
    dtype = argtys[0].dtype
    lanes = VECTOR_LANES[str(dtype)]
    vec = _Vectors(context, builder, dtype, lanes)
    i64 = ir.IntType(64)

    def pointer(index):
        data = context.make_array(argtys[index])(context, builder, args[index]).data
        return builder.gep(data, [context.cast(builder, args[index + 1], argtys[index + 1], types.int64)])

    dst = pointer(0)
    src = pointer(2) if op != "zero" else None
    n = context.cast(builder, args[-1], argtys[-1], types.int64)
    step = ir.Constant(i64, lanes)

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
    out = vec.at(dst, i)
    if op == "zero":
        # A masked store (every lane on, which LLVM cannot prove): a loop of plain stores
        # becomes a call of memset, and the caller's loop spilled its values around it.
        vec.store(vec.zero, out, vec.lanes_below(left))
    else:
        value = builder.load(vec.at(src, i), align=vec.align)
        if op == "add":
            value = builder.fadd(builder.load(out, align=vec.align), value)
        builder.store(value, out, align=vec.align)
    i.add_incoming(builder.add(i, step), body)
    builder.branch(check)

    builder.position_at_end(tail)
    half = builder.append_basic_block("run.half")
    whole = builder.append_basic_block("run.whole")
    done = builder.append_basic_block("run.done")
    builder.cbranch(builder.icmp_signed("<=", left, ir.Constant(i64, lanes // 2)), half, whole)
    for block, width in ((half, lanes // 2), (whole, lanes)):
        builder.position_at_end(block)
        _masked_step(_Vectors(context, builder, dtype, width), op, dst, src, i, left)
        builder.branch(done)
    builder.position_at_end(done)
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
