"""Tuning table of the kernels: the GEMM's block sizes, one row per instruction
set and dtype, and the work thresholds that decide how many threads a kernel
uses. Both backends read this module and nothing else for these decisions.

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

Threads: a parallel region costs ~2 µs to enter on a quiet machine and, on a
busy one, a scheduler time slice (ms) whenever one of its threads waits for
a core, so work goes parallel only when each thread gets enough of it
(``gemm_threads``, ``PARALLEL_MIN_ELEMENTS``, ``RECURRENT_PARALLEL_MIN_ELEMENTS``,
``OPTIMIZER_PARALLEL_MIN_VALUES``).
Tasks are shared out dynamically (a thread that lost its core takes fewer),
at least TASKS_PER_THREAD per thread when the product has that many blocks.
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

# A GEMM uses one thread per this many multiply-adds (m*n*k), up to the thread
# count asked for: below 2^21 it is serial (~15 µs on one core), as every layer
# of a 64-wide network is (64-128-64-10 at batch 32: 2^18 at most).
GEMM_MADDS_PER_THREAD = 1 << 20
# Dynamic scheduling: about this many output blocks per thread, so that one
# thread that loses its core (a busy machine, a BLAS pool still spinning)
# holds back at most a small part of the product.
TASKS_PER_THREAD = 4
# A column part of a task is at least this wide: every part packs its rows of A
# again, about as costly as 1/MIN_PART_COLUMNS of the part's arithmetic x ~20.
MIN_PART_COLUMNS = 128
# Element-wise kernels (activations, losses, column sums, pooling, the Cython
# RNN's row loops) go parallel from this many values.
PARALLEL_MIN_ELEMENTS = 1 << 15
# Recurrent kernels (both backends): a time step's row pass (an LSTM/GRU step's
# gate nonlinearities and cell update over batch x 4H or 3H gate values; a Numba
# RNN step's activation over batch x hidden states, added to the step's GEMM)
# runs on the calling thread below this many values per step, and while the
# busy-machine back-off lasts (one parallel region per step, T of them per pass:
# a region whose second thread has no core stalls every step). The value is the
# one the kernels were written with (af3d830, d32a536); no measurement of it is
# recorded. (The Cython RNN applies a step's activation in the GEMM epilogue;
# its remaining row loops use PARALLEL_MIN_ELEMENTS.)
RECURRENT_PARALLEL_MIN_ELEMENTS = 1 << 14
# The LSTM/GRU bias gradients' column sums (Cython) go parallel from this many
# values only: one parallel region (a worker woken on this KVM machine) cost
# ~0.25 ms, where the sums of the memory demo's 1600 x 96 gate gradients take
# ~0.1 ms alone, so GRU backward there took 0.72 ms on 2 threads against 0.49 ms
# on 1; at the bench's 3200 x 384 splitting them still saves ~0.4 ms of ~7 ms.
GATED_COLUMN_SUMS_PARALLEL_MIN_ELEMENTS = 1 << 20
# A fixed-point sweep of the Numba backend (src_row·W per row of the batch,
# 2·m·n² flops, no GEMM) runs on the calling thread below this many flops per
# sweep (the value since 98c04e3; no measurement recorded). The Cython sweep is
# a GEMM, whose threads are gemm_threads'.
FIXED_POINT_PARALLEL_MIN_FLOPS = 1 << 16
# Optimizer steps go parallel from this many parameters: a step is ~1 load and
# store per array per value, memory-bound, ~10 µs per 2^15 values; below this
# two parallel regions per step cost more than they save (the digits network,
# 17k parameters, took 3-4x longer per step on 2 threads with a busy core).
OPTIMIZER_PARALLEL_MIN_VALUES = 1 << 17

# Convolutions (both backends): the image-to-column matrix is gathered a block
# of CONV_BLOCK_VALUES values at a time (512 KiB in float32: in L2 beside the
# GEMM's packed panels), blocks of a multiple of CONV_ROW_ALIGN rows (a common
# multiple of every ISA's MR). Forward blocks are shared out among the threads
# (each gathers and multiplies its own on one thread, one parallel region per
# call) from CONV_BLOCKS_PER_THREAD blocks per thread; fewer run one at a time,
# each block's GEMM on all the threads. dW is summed in CONV_DW_GROUPS partial
# sums over fixed runs of blocks, then added in order (Cython; the runs depend
# on the shapes only, so the bits do not depend on the thread count). dx is
# gathered as a convolution of δ from CONV_GATHER_MIN_CHANNELS input channels
# (the GEMM's n is c_in; a narrower one ran slower than col2im's scatter:
# LeNet's 12x12x6 -> 16@5x5, batch 64, one thread, 0.9 ms scatter, 1.8 ms gather).
CONV_BLOCK_VALUES = 1 << 17
CONV_ROW_ALIGN = 48
CONV_BLOCKS_PER_THREAD = 2
CONV_DW_GROUPS = 8
CONV_GATHER_MIN_CHANNELS = 16


# Busy machine: a parallel GEMM that took longer than its work would have taken
# on one thread (the other threads did not get a core in time) sends the next
# BACKOFF_MIN_CALLS GEMMs to one thread, twice as many each time it happens
# again, up to BACKOFF_MAX_CALLS; a parallel call that pays resets it.
BACKOFF_MIN_CALLS = 16
BACKOFF_MAX_CALLS = 1024
# "Longer" means by more than this: a thread waiting for a core loses a time slice
# (ms), while waking a sleeping OpenMP thread costs tens of µs on every parallel
# call after a pause, after a back-off above all. Without the slack, that wake-up
# was judged a loss on a quiet machine, which backed off again, twice as long, and
# never recovered: on 2 quiet threads, 235 of 238 calls of 128x256x128 ran on one.
BACKOFF_SLACK_SECONDS = 2.5e-4

# Values of packed B per wave of KC slices, about: the threads pack a wave's B,
# meet once, then run their tasks over the wave's slices (1024^3 float32 is one
# wave; a long k with a small C is a few waves, not two regions per slice).
B_WAVE_VALUES = 1 << 21

# Products whose smaller packed operand (A: m x k rounded up to whole MR tiles; B:
# k x n to whole NR panels) has at most this many values run on several threads
# with that operand packed by each thread for itself (the private path): tasks
# cut the other operand, so nothing one core packs is read by another and the
# call is one parallel loop without a barrier. A packed B shared by the threads
# cost ~30 us per call on a quiet 2-core Sapphire Rapids (the packed panels move
# between the cores' caches, then the barrier): 128x256x128 ran no faster on 2
# threads than on one, 784-256-128-10 at batch 128 trained 1.27x one thread.
# 2^19 float32 values are 2 MiB: every operand of the peer networks' layers
# (256x1024x1024's A, 22 tiles of 12 rows x 1024, is just over 2^18: 234 -> 340 GFLOP/s).
PRIVATE_MAX_VALUES = 1 << 19

# Float32 products of at most this many multiply-adds with k <= KC run unpacked
# (with SIMD): the micro-kernel reads A and B where they lie, and packing both
# would cost as much as the arithmetic (32x64x32 on one core: 4.3 -> ~1.9 us).
DIRECT_MAX_MADDS = 1 << 20

# Float32 products with at most this many NR-wide column panels run unpacked at
# any size (Cython): a packed A serves one micro-kernel call per panel, so for
# one or two panels packing it is a whole extra pass over A for one or two uses.
# A convolution (A its gathered receptive fields, n its 32 or 64 channels) gains
# most: the small VGG's 32- and 64-channel layers, one Zen 4 core, forward
# 17.9 -> 15.6 ms and 14.3 -> 13.0 ms, dW 23 -> 18 ms.
DIRECT_MAX_PANELS = 2

# The unpacked path copies a B without unit column stride (δ·Wᵀ) row-major first
# when it has at most this many values; larger ones take the packed path.
DIRECT_B_COPY_MAX = 1 << 14

# The functions below are the decisions both backends make; the Numba backend
# compiles these very functions, the Cython backend mirrors them in _gemm.pyx
# (tests/test_gemm.py checks it against them).


def gemm_threads(m, n, k, n_threads):
    """Threads for an (m x k)·(k x n) product: one per GEMM_MADDS_PER_THREAD, in [1, n_threads]."""
    return max(1, min(n_threads, (m * n * k) // GEMM_MADDS_PER_THREAD))


def kc_slices(k, kc):
    """(number of slices, length of all but the last): k cut into near-equal slices of at most kc
    (k = 784, KC = 512: 2 x 392, not 512 + 272). Depends on k and KC only."""
    n_slices = -(-k // kc)
    return n_slices, -(-k // n_slices)


def wave_slices(n_slices, slice_values, n_threads):
    """KC slices of B packed at once: on one thread one (no barrier to save, and the slice
    just packed is still in cache: 32x784x256 ran ~14% slower with both slices packed
    first); on several, as many as fit B_WAVE_VALUES."""
    if n_threads == 1:
        return 1
    return min(n_slices, max(1, B_WAVE_VALUES // slice_values))


def gemm_tasks(n_tiles, n_panels, mr, nr, mc, n_threads):
    """(row blocks, column parts) of the 3rd loop's tasks, for a C of n_tiles MR-row tiles and
    n_panels NR-column micro-panels. Row blocks have near-equal heights of at most MC rows.
    With several threads, rows are cut first, into TASKS_PER_THREAD blocks per thread where
    there are tiles enough (row blocks cost nothing extra: B is packed once for all of them;
    m = 256 with MR 6, MC 96 on 2 threads: 8 blocks, not 3 for 2 threads); when rows are too
    few, columns too, into parts of at least MIN_PART_COLUMNS (each part packs its block of A
    again). Then rows are added up to a multiple of n_threads tasks where possible."""
    tiles_per_mc = max(1, mc // mr)
    n_blocks = -(-n_tiles // tiles_per_mc)
    n_parts = 1
    if n_threads > 1:
        target = TASKS_PER_THREAD * n_threads
        n_blocks = min(n_tiles, max(n_blocks, target))
        if n_blocks < target:
            n_parts = max(1, min(n_panels * nr // MIN_PART_COLUMNS, -(-target // n_blocks)))
        while (n_blocks * n_parts) % n_threads != 0 and n_blocks < n_tiles:
            n_blocks += 1
    return n_blocks, n_parts


def private_split(n_tiles, n_panels, k, mr, nr, n_threads):
    """0 (the shared path), 1 (B private, tasks over rows of A) or 2 (A private, tasks over
    columns of B) for a C of n_tiles MR-row tiles and n_panels NR-column micro-panels on
    n_threads > 1. The smaller packed operand goes private, unless the other has fewer tasks
    than threads; neither does when the private one exceeds PRIVATE_MAX_VALUES."""
    a_values, b_values = n_tiles * mr * k, n_panels * nr * k
    by_rows = (b_values <= a_values and n_tiles >= n_threads) or n_panels < n_threads
    if by_rows:
        return 1 if b_values <= PRIVATE_MAX_VALUES and n_tiles >= n_threads else 0
    return 2 if a_values <= PRIVATE_MAX_VALUES else 0


def block_sizes(isa, dtype):
    """Return (MR, NR, KC, MC, NC) for instruction set ``isa`` and ``dtype`` ('float32'/'float64')."""
    return _TABLE[(isa, str(dtype))]
