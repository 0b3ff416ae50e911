"""Where users run fastbp: beside NumPy's BLAS in a pipeline, and on a machine that is busy.

``pipeline``: a NumPy matmul between two training steps, as a NumPy pipeline
does (preprocessing, metrics). OpenBLAS's workers keep spinning for a while after
their call returns and compete with the next step's threads. The matmul's own
time is measured and left out: the figure is the training steps' time. Its
alone figure runs the same per-step loop with nothing between the steps (for
sklearn that is one partial_fit per batch instead of one per epoch).

``busy``: one CPU-bound process pinned to one core (the last of this process's
cores) for as long as the measurement runs, as another job on a shared machine.

``alone`` is neither: the quiet figure every situation is compared with.
"""

import contextlib
import os
import subprocess
import sys
import time

import numpy as np

SITUATIONS = ("alone", "pipeline", "busy")
MATMUL_SIZE = 256  # a 256 x 256 float32 product: ~34 MFLOP, large enough that OpenBLAS uses its threads


class BetweenSteps:
    """A NumPy matmul to run between two training steps; ``seconds`` sums the time spent in it."""

    def __init__(self, size=MATMUL_SIZE, seed=0):
        rng = np.random.default_rng(seed)
        self.a = rng.standard_normal((size, size)).astype(np.float32)
        self.b = rng.standard_normal((size, size)).astype(np.float32)
        self.out = np.empty((size, size), np.float32)
        self.seconds = 0.0
        # False (or size 0): the same per-step call with nothing in it, for the alone figure.
        self.active = size > 0

    def __call__(self):
        start = time.perf_counter()
        if self.active:
            np.matmul(self.a, self.b, out=self.out)
        self.seconds += time.perf_counter() - start


def after_each_step(optimizer, hook):
    """Make ``optimizer.step()`` run ``hook()`` after each update (``Network.fit`` calls it once per batch)."""
    step = optimizer.step

    def step_then_hook(*args, **kwargs):
        result = step(*args, **kwargs)
        hook()
        return result

    optimizer.step = step_then_hook
    return optimizer


_SPIN = ("import os, sys\nif hasattr(os, 'sched_setaffinity'):\n    os.sched_setaffinity(0, {int(sys.argv[1])})\n"
         "while True:\n    pass\n")


@contextlib.contextmanager
def busy_core():
    """Run a CPU-bound process pinned to one core (the last usable one) until the block ends."""
    try:
        core = max(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows): an unpinned spinner
        core = 0
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN, str(core)])
    try:
        time.sleep(0.2)  # let it start spinning
        yield core
    finally:
        spinner.kill()
        spinner.wait()
