"""GEMM micro-kernel: one MR x NR tile of A·B from packed micro-panels.

Design: C is row-major, so the tile is held as MR rows of NR/W vector
registers (W lanes: 16 float32 / 8 float64 with AVX-512, 8 / 4 with AVX2).
Each k step loads NR/W vectors of the packed B row, broadcasts the MR values
of the packed A column and issues MR*NR/W fused multiply-adds. Left to LLVM's
auto-vectoriser a loop nest like this spills the tile (~30 GF/s), so the
whole k loop is emitted as LLVM IR by a Numba intrinsic: the accumulators are
SSA values carried by phi nodes, which the register allocator keeps in
registers (AVX-512 float32 12 x 32: 24 zmm accumulators + 2 B loads + 1
broadcast). ``micro_kernel_loops`` is the plain-loop fallback for 'generic'.

Layout: packed A micro-panel ``pa[pa_off + p*MR + i]``, packed B micro-panel
``pb[pb_off + p*NR + j]`` (both zero-padded to full MR / NR), C tile
``c[c_off + i*ldc + j]`` in a flat array: the caller passes C itself for a
full tile, a small MR x NR buffer for an edge tile (then copies the valid part).
The epilogue C := alpha·AB + beta·C is done on the registers (C unread when
beta == 0), so a later KC slice passes beta = 1.

Determinism: every tile element is one lane of one accumulator summed over p
in increasing order, the same in every tile, whatever the thread count.
"""

import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._threads import VECTOR_LANES


def _literal_int(ty):
    if not isinstance(ty, types.IntegerLiteral):
        raise numba.core.errors.TypingError("micro_kernel: MR and NR must be compile-time constants")
    return ty.literal_value


def _splat(builder, scalar, undef, mask):
    """A vector with every lane ``scalar`` (a broadcast)."""
    return builder.shuffle_vector(builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0)), undef, mask)


@intrinsic
def micro_kernel_simd(typingctx, mr_ty, nr_ty, kc_ty, pa_ty, pa_off_ty, pb_ty, pb_off_ty,
                      c_ty, c_off_ty, ldc_ty, alpha_ty, beta_ty):
    """C := alpha·Σ_p pa[p, :]ᵀ pb[p, :] + beta·C over p < kc, the MR x NR tile at c[c_off] with row stride ldc.

    IN pa, pb packed micro-panels; IN/OUT c (flat), not read when beta == 0.
    """
    mr, nr = _literal_int(mr_ty), _literal_int(nr_ty)
    dtype = pa_ty.dtype
    lanes = VECTOR_LANES[str(dtype)]
    if nr % lanes:
        raise numba.core.errors.TypingError(f"micro_kernel: NR={nr} is not a multiple of {lanes} lanes")
    n_vec = nr // lanes
    sig = types.void(mr_ty, nr_ty, kc_ty, pa_ty, pa_off_ty, pb_ty, pb_off_ty, c_ty, c_off_ty, ldc_ty,
                     alpha_ty, beta_ty)

    def codegen(context, builder, signature, args):
        _, _, kc, pa, pa_off, pb, pb_off, c, c_off, ldc, alpha, beta = args
        i64 = ir.IntType(64)
        fty = context.get_value_type(dtype)
        vty = ir.VectorType(fty, lanes)
        align = context.get_abi_sizeof(fty)
        argtys = signature.args
        kc = context.cast(builder, kc, argtys[2], types.int64)
        pa_off = context.cast(builder, pa_off, argtys[4], types.int64)
        pb_off = context.cast(builder, pb_off, argtys[6], types.int64)
        c_off = context.cast(builder, c_off, argtys[8], types.int64)
        ldc = context.cast(builder, ldc, argtys[9], types.int64)
        alpha = context.cast(builder, alpha, argtys[10], dtype)
        beta = context.cast(builder, beta, argtys[11], dtype)
        pa_ptr = builder.gep(context.make_array(argtys[3])(context, builder, pa).data, [pa_off])
        pb_ptr = builder.gep(context.make_array(argtys[5])(context, builder, pb).data, [pb_off])
        c_ptr = builder.gep(context.make_array(argtys[7])(context, builder, c).data, [c_off])
        suffix = f"v{lanes}f{8 * context.get_abi_sizeof(fty)}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.{suffix}")
        zero = ir.Constant(vty, None)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

        entry = builder.block
        loop = builder.append_basic_block("mk.k_loop")
        done = builder.append_basic_block("mk.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        p = builder.phi(i64, name="p")
        p.add_incoming(ir.Constant(i64, 0), entry)
        acc = []
        for t in range(mr * n_vec):
            phi = builder.phi(vty, name=f"acc{t}")
            phi.add_incoming(zero, entry)
            acc.append(phi)
        b_row = builder.gep(pb_ptr, [builder.mul(p, ir.Constant(i64, nr))])
        b_vec = [
            builder.load(builder.bitcast(builder.gep(b_row, [ir.Constant(i64, v * lanes)]), vty.as_pointer()),
                         align=align)
            for v in range(n_vec)
        ]
        a_col = builder.gep(pa_ptr, [builder.mul(p, ir.Constant(i64, mr))])
        new_acc = []
        for i in range(mr):
            a_bcast = _splat(builder, builder.load(builder.gep(a_col, [ir.Constant(i64, i)]), align=align), undef, splat)
            for v in range(n_vec):
                new_acc.append(builder.call(fma, [a_bcast, b_vec[v], acc[i * n_vec + v]]))
        p_next = builder.add(p, ir.Constant(i64, 1))
        builder.cbranch(builder.icmp_signed("<", p_next, kc), loop, done)
        p.add_incoming(p_next, builder.block)
        for phi, value in zip(acc, new_acc):
            phi.add_incoming(value, builder.block)

        # Epilogue: C := alpha·AB (beta == 0, C unread) or alpha·AB + beta·C, as mul then add.
        builder.position_at_end(done)
        alpha_v = _splat(builder, alpha, undef, splat)
        beta_v = _splat(builder, beta, undef, splat)
        c_rows = [builder.gep(c_ptr, [builder.mul(ldc, ir.Constant(i64, i))]) for i in range(mr)]

        def c_vec_ptr(i, v):
            return builder.bitcast(builder.gep(c_rows[i], [ir.Constant(i64, v * lanes)]), vty.as_pointer())

        with builder.if_else(builder.fcmp_ordered("==", beta, ir.Constant(fty, 0.0))) as (overwrite, update):
            with overwrite:
                for i in range(mr):
                    for v in range(n_vec):
                        builder.store(builder.fmul(alpha_v, new_acc[i * n_vec + v]), c_vec_ptr(i, v), align=align)
            with update:
                for i in range(mr):
                    for v in range(n_vec):
                        ptr = c_vec_ptr(i, v)
                        old = builder.fmul(beta_v, builder.load(ptr, align=align))
                        new = builder.fmul(alpha_v, new_acc[i * n_vec + v])
                        builder.store(builder.fadd(new, old), ptr, align=align)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def micro_kernel_loops(mr, nr, kc, pa, pa_off, pb, pb_off, c, c_off, ldc, alpha, beta, ab):
    """As ``micro_kernel_simd`` with plain loops (the 'generic' ISA); ab (MR*NR,) is scratch."""
    for t in range(mr * nr):
        ab[t] = 0.0
    for p in range(kc):
        for i in range(mr):
            a_val = pa[pa_off + p * mr + i]
            for j in range(nr):
                ab[i * nr + j] += a_val * pb[pb_off + p * nr + j]
    for i in range(mr):
        row = c_off + i * ldc
        if beta == 0.0:
            for j in range(nr):
                c[row + j] = alpha * ab[i * nr + j]
        else:
            for j in range(nr):
                c[row + j] = alpha * ab[i * nr + j] + beta * c[row + j]
