"""Cache-blocking table of the GEMM, one row per instruction set and dtype.

The GEMM is BLIS's five loops around a micro-kernel (see the backends):
    5th loop (jc, NC) over columns of C and B
    4th loop (pc, KC) over the shared dimension; B[pc:pc+KC, jc:jc+NC] is packed
    3rd loop (ic, MC) over rows of C and A; A[ic:ic+MC, pc:pc+KC] is packed
    2nd loop (jr, NR) over micro-panels of packed B
    1st loop (ir, MR) over micro-panels of packed A -> micro-kernel, an MR x NR tile of C

C is row-major, so the micro-kernel holds NR columns in vector registers and
broadcasts MR values of A: with AVX-512 a float32 tile is 12 rows x 2 zmm
(24 accumulators, 2 loads and a broadcast: 27 of the 32 registers).

Sizes for this machine's caches (Zen 4: 32 KiB L1d, 1 MiB L2 per core, 32 MiB
L3): the packed A block (MC x KC) lives in L2, the packed B panel (KC x NC)
in L3. A packed B micro-panel (KC x NR) fits L1 at KC = 256; for AVX-512
float32 KC = 512 (64 KiB, so streamed from L2) measured ~5% faster at 1024^3
and no slower elsewhere: fewer C tile loads and stores per flop. Only the
AVX-512 float32 row is tuned; the others are starting points.

Determinism: a C element is summed over k in KC-sized slices in increasing
order, each slice in increasing k inside one micro-kernel call. Nothing here
depends on the thread count, so neither do the results.
"""

_TABLE = {
    # (isa, dtype): (MR, NR, KC, MC, NC)
    ("avx512", "float32"): (12, 32, 512, 144, 4096),
    ("avx512", "float64"): (12, 16, 256, 96, 4096),
    ("avx2", "float32"): (6, 16, 256, 96, 4096),
    ("avx2", "float64"): (6, 8, 256, 96, 4096),
    ("generic", "float32"): (6, 16, 256, 96, 4096),
    ("generic", "float64"): (6, 8, 256, 96, 4096),
}

ISAS = ("avx512", "avx2", "generic")


def block_sizes(isa, dtype):
    """Return (MR, NR, KC, MC, NC) for instruction set ``isa`` and ``dtype`` ('float32'/'float64')."""
    return _TABLE[(isa, str(dtype))]
