"""Numba's on-disk cache is reused: a second process loads every kernel and compiles nothing.

A function whose cache key differs from process to process (for instance a closure
capturing a dispatcher, whose pickle carries a per-process uuid) is compiled and
saved again by every process: ~10 s at each start. The child below runs the GEMM
driver on each path (unpacked, packed serial, packed parallel) in both dtypes, one
training step of an MLP and one of a CNN whose convolution takes the block-parallel
path (``conv._blocks_parallel``, 2 threads); the first child may compile, the second
must only load.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import numpy as np
import fastbp as fb
from fastbp import kernels

fb.set_backend("numba")
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for m, k, n in [(7, 13, 29), (200, 513, 70)]:  # unpacked; packed (parallel with 2 threads)
        a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        for threads in (1, 2):
            fb.set_num_threads(threads)
            kernels.gemm(a, b)
    net = fb.Network([fb.Dense(64, 32, activation="relu"), fb.Dense(32, 10)], loss="softmax_cross_entropy",
                     dtype=dtype, seed=0)
    X, y = rng.standard_normal((32, 64)), rng.integers(0, 10, size=32)
    net.fit(X, y, optimizer=fb.Adam(net), epochs=1, batch_size=32, verbose=0)
    # 32 x 8 x 8 output pixels, k = 3 * 3 * 32: five row blocks, enough for two threads to take whole ones
    cnn = fb.Network([fb.Conv2D(32, 8, 3, padding="same", activation="relu"), fb.MaxPool2D(2), fb.Flatten(),
                      fb.Dense(4 * 4 * 8, 10)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    images = rng.standard_normal((32, 8, 8, 32))
    # A busy machine may have started the back-off, which would run the convolution on one
    # thread: end it, so that the first layer's forward takes the block-parallel path.
    from fastbp._kernels.numba._threads import BACKOFF
    BACKOFF[0] = 0
    cnn.fit(images, y, optimizer=fb.Adam(cnn), epochs=1, batch_size=32, verbose=0)
"""


def run_child():
    """stdout of the child with Numba's cache events printed ("[cache] data saved/loaded ...")."""
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_second_process_reuses_the_cache():
    run_child()  # may compile (cold cache), saves what it compiles
    events = [line for line in run_child() if line.startswith("[cache]")]
    saved = [line for line in events if "data saved" in line]
    assert not saved, "the second process compiled again:\n" + "\n".join(saved)
    loaded = [line for line in events if "data loaded" in line]
    assert any("_make_driver" in line for line in loaded), "the GEMM driver was not loaded from the cache"
    assert any("mlp" in line for line in loaded), "the training step's kernels were not loaded from the cache"
    assert any("_blocks_parallel" in line for line in loaded), "the block-parallel convolution was not loaded"
