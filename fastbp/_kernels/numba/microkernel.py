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
``direct_kernel_simd`` is the same tile for small products, read unpacked:
A broadcast from any strides, B's rows loaded as whole vectors (a full-width tile) or
masked ones (llvm.masked.load), C stored through masks, so edge tiles need no buffer.

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


def _fma_k_loop(builder, loop, entry, done, kc, mr, n_vec, zero, fma, load_b_row, load_a):
    """Emit in block ``loop`` (entered from ``entry``, leaving to ``done``) the tile's k loop:
    acc[i·n_vec + v] := fma(a(p, i), b(p)[v], acc[...]) for p = 0 .. kc-1, from acc = zero, in
    order. ``load_b_row(p)`` gives B's row p as n_vec vectors, ``load_a(p, i)`` A's value of row
    i at p broadcast. The accumulators are phi nodes, which the register allocator keeps in
    registers. Returns (accumulators after the last step, the block that exits to ``done``)."""
    i64 = ir.IntType(64)
    builder.position_at_end(loop)
    p = builder.phi(i64, name="p")
    p.add_incoming(ir.Constant(i64, 0), entry)
    acc = []
    for t in range(mr * n_vec):
        phi = builder.phi(zero.type, name=f"acc{t}")
        phi.add_incoming(zero, entry)
        acc.append(phi)
    b_vec = load_b_row(p)
    new_acc = []
    for i in range(mr):
        a_bcast = load_a(p, i)
        for v in range(n_vec):
            new_acc.append(builder.call(fma, [a_bcast, b_vec[v], acc[i * n_vec + v]]))
    p_next = builder.add(p, ir.Constant(i64, 1))
    builder.cbranch(builder.icmp_signed("<", p_next, kc), loop, done)
    p.add_incoming(p_next, builder.block)
    for phi, value in zip(acc, new_acc):
        phi.add_incoming(value, builder.block)
    return new_acc, builder.block


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

        def load_b_row(p):  # packed B: row p at p·NR
            b_row = builder.gep(pb_ptr, [builder.mul(p, ir.Constant(i64, nr))])
            return [builder.load(builder.bitcast(builder.gep(b_row, [ir.Constant(i64, v * lanes)]),
                                                 vty.as_pointer()), align=align)
                    for v in range(n_vec)]

        def load_a(p, i):  # packed A: column p at p·MR
            a_col = builder.gep(pa_ptr, [builder.mul(p, ir.Constant(i64, mr))])
            return _splat(builder, builder.load(builder.gep(a_col, [ir.Constant(i64, i)]), align=align), undef, splat)

        entry = builder.block
        loop = builder.append_basic_block("mk.k_loop")
        done = builder.append_basic_block("mk.done")
        builder.branch(loop)
        new_acc, _ = _fma_k_loop(builder, loop, entry, done, kc, mr, n_vec, zero, fma, load_b_row, load_a)

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


@intrinsic
def direct_kernel_simd(typingctx, mr_ty, nv_ty, kc_ty, a_ty, a_off_ty, rs_a_ty, cs_a_ty, b_ty, b_off_ty, rs_b_ty,
                       rows_ty, cols_ty, c_ty, c_off_ty, ldc_ty, alpha_ty, beta_ty):
    """C := alpha·A·B + beta·C on a rows x cols tile (rows <= MR, cols <= NV·W), A and B read in place.

    IN a (flat) with element strides rs_a, cs_a from a_off; IN b (flat), unit column
    stride, row stride rs_b from b_off; IN/OUT c (flat) rows of stride ldc from c_off,
    not read when beta == 0. Rows of B are loaded as NV vectors, the lanes past cols
    masked off (plain loads when cols == NV·W); tile rows past ``rows`` re-read A's first row and are not stored.
    Each element is the packed kernel's arithmetic for kc = k (acc from 0, one fma per
    p in increasing order, then alpha·acc [+ beta·C as mul, mul, add]): the same bits.
    """
    mr, nv = _literal_int(mr_ty), _literal_int(nv_ty)
    dtype = a_ty.dtype
    lanes = VECTOR_LANES[str(dtype)]
    sig = types.void(mr_ty, nv_ty, kc_ty, a_ty, a_off_ty, rs_a_ty, cs_a_ty, b_ty, b_off_ty, rs_b_ty,
                     rows_ty, cols_ty, c_ty, c_off_ty, ldc_ty, alpha_ty, beta_ty)

    def codegen(context, builder, signature, args):
        argtys = signature.args
        i64, i32 = ir.IntType(64), ir.IntType(32)

        def arg(index, ty=types.int64):
            return context.cast(builder, args[index], argtys[index], ty)

        kc, a_off, rs_a, cs_a, b_off, rs_b = arg(2), arg(4), arg(5), arg(6), arg(8), arg(9)
        rows, cols, c_off, ldc = arg(10), arg(11), arg(13), arg(14)
        alpha, beta = arg(15, dtype), arg(16, dtype)
        fty = context.get_value_type(dtype)
        vty = ir.VectorType(fty, lanes)
        mty = ir.VectorType(ir.IntType(1), lanes)
        align = context.get_abi_sizeof(fty)
        a_ptr = builder.gep(context.make_array(argtys[3])(context, builder, args[3]).data, [a_off])
        b_ptr = builder.gep(context.make_array(argtys[7])(context, builder, args[7]).data, [b_off])
        c_ptr = builder.gep(context.make_array(argtys[12])(context, builder, args[12]).data, [c_off])
        suffix = f"v{lanes}f{8 * align}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.{suffix}")
        vptr = vty.as_pointer()
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vptr, i32, mty, vty]), f"llvm.masked.load.{suffix}.p0")
        masked_store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vty, vptr, i32, mty]), f"llvm.masked.store.{suffix}.p0")
        zero = ir.Constant(vty, None)
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        align_arg = ir.Constant(i32, align)

        # Column masks: lane l of vector v is valid when v·W + l < cols.
        cols_v = _splat(builder, cols, ir.Constant(ir.VectorType(i64, lanes), ir.Undefined),
                        splat)
        col_mask = [builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, lanes), [v * lanes + l for l in range(lanes)]),
                                        cols_v) for v in range(nv)]
        # Rows past ``rows`` read A's row 0 (any valid row would do) and store nothing.
        a_rows = []
        for i in range(mr):
            valid = builder.icmp_signed("<", ir.Constant(i64, i), rows)
            a_rows.append(builder.gep(a_ptr, [builder.select(valid, builder.mul(ir.Constant(i64, i), rs_a),
                                                            ir.Constant(i64, 0))]))

        # Two copies of the k loop: B's rows as plain loads where the tile is NV whole vectors
        # wide, masked loads where it is narrower. In one masked loop LLVM rebuilt the masks
        # from cols on every k step (4 more port-5 operations beside the FMAs), which held a
        # 12 x 32 tile to ~130 GFLOP/s. Same arithmetic in both, so the same bits.
        entry = builder.block
        full_loop = builder.append_basic_block("dk.k_loop_full")
        masked_loop = builder.append_basic_block("dk.k_loop_masked")
        done = builder.append_basic_block("dk.done")
        builder.cbranch(builder.icmp_signed("==", cols, ir.Constant(i64, nv * lanes)), full_loop, masked_loop)

        def b_row_loader(load_b):
            """B's row p (at p·rs_b) as nv vectors, vector v loaded by load_b(pointer, v)."""
            def load_b_row(p):
                b_row = builder.gep(b_ptr, [builder.mul(p, rs_b)])
                return [load_b(builder.bitcast(builder.gep(b_row, [ir.Constant(i64, v * lanes)]), vptr), v)
                        for v in range(nv)]
            return load_b_row

        def load_a(p, i):  # A's row i at column p·cs_a, any strides
            return _splat(builder, builder.load(builder.gep(a_rows[i], [builder.mul(p, cs_a)]), align=align),
                          undef, splat)

        full_acc, full_exit = _fma_k_loop(builder, full_loop, entry, done, kc, mr, nv, zero, fma,
                                          b_row_loader(lambda ptr, v: builder.load(ptr, align=align)), load_a)
        masked_acc, masked_exit = _fma_k_loop(
            builder, masked_loop, entry, done, kc, mr, nv, zero, fma,
            b_row_loader(lambda ptr, v: builder.call(masked_load, [ptr, align_arg, col_mask[v], zero])), load_a)
        builder.position_at_end(done)
        new_acc = []
        for t in range(mr * nv):
            phi = builder.phi(vty, name=f"sum{t}")
            phi.add_incoming(full_acc[t], full_exit)
            phi.add_incoming(masked_acc[t], masked_exit)
            new_acc.append(phi)

        # Epilogue, as micro_kernel_simd's, through masked stores (and loads when beta != 0).
        alpha_v = _splat(builder, alpha, undef, splat)
        beta_v = _splat(builder, beta, undef, splat)
        no_lanes = ir.Constant(mty, [0] * lanes)
        masks = []
        for i in range(mr):
            valid = builder.icmp_signed("<", ir.Constant(i64, i), rows)
            masks.append([builder.select(valid, col_mask[v], no_lanes) for v in range(nv)])

        def c_vec_ptr(i, v):
            row = builder.gep(c_ptr, [builder.mul(ldc, ir.Constant(i64, i))])
            return builder.bitcast(builder.gep(row, [ir.Constant(i64, v * lanes)]), vptr)

        with builder.if_else(builder.fcmp_ordered("==", beta, ir.Constant(fty, 0.0))) as (overwrite, update):
            with overwrite:
                for i in range(mr):
                    for v in range(nv):
                        builder.call(masked_store, [builder.fmul(alpha_v, new_acc[i * nv + v]), c_vec_ptr(i, v),
                                                    align_arg, masks[i][v]])
            with update:
                for i in range(mr):
                    for v in range(nv):
                        ptr = c_vec_ptr(i, v)
                        old = builder.fmul(beta_v, builder.call(masked_load, [ptr, align_arg, masks[i][v], zero]))
                        new = builder.fmul(alpha_v, new_acc[i * nv + v])
                        builder.call(masked_store, [builder.fadd(new, old), ptr, align_arg, masks[i][v]])
        return context.get_dummy_value()

    return sig, codegen
