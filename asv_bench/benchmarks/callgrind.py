"""Instruction counts of kernel calls under valgrind's callgrind (a helper, not a benchmark).

Timings on a shared 2-core machine move by 10-50 % from run to run; the number
of instructions a kernel call executes on one thread moves by < 0.01 %. A child
interpreter runs under ``valgrind --tool=callgrind`` with collection off; each
case warms up (JIT compilation, buffers), then calls its kernel ``N_CALLS`` times
inside ``operator.call(...)``. ``--toggle-collect=_operator_call`` counts only
what runs inside that C function (nothing else in fastbp, NumPy or Numba calls
``operator.call``), and ``--dump-after`` writes one profile per case, so one
valgrind process measures every case. The count per call includes the Python
wrapper's argument checks, as a user's call does.

One thread only: OpenMP workers spin-wait for a varying number of iterations,
so more threads are not deterministic. ``PYTHONHASHSEED`` is fixed for the same
reason. If valgrind is missing, or CPython's static symbols are stripped (the
toggle function is then never seen and nothing is counted), ``measure`` raises
NotImplementedError, which asv reports as a skipped benchmark.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

N_CALLS = 4
TOGGLE = "_operator_call"

# name -> set-up code defining ``call()``; run with ``np``, ``kernels`` and ``random`` in scope.
CASES = {
    "gemm_m0128_n0256_k0784": """
a, b, c = random((128, 784), 1), random((784, 256), 2), np.zeros((128, 256), DTYPE)
def call():
    kernels.gemm(a, b, out=c)
""",
    "dense_forward_relu_b0128_i0784_o0256": """
x, w, bias, out = random((128, 784), 1), random((784, 256), 2) / 28, random((256,), 3), np.zeros((128, 256), DTYPE)
def call():
    kernels.dense_forward(x, w, bias, "relu", out=out)
""",
    "mlp_loss_and_grad_64_32_10_b0032": """
widths = (64, 32, 10)
x, labels = random((32, 64), 1), np.random.default_rng(2).integers(0, 10, 32)
params = random((64 * 32 + 32 + 32 * 10 + 10,), 3) / 8
grads = np.zeros_like(params)
def call():
    kernels.mlp_loss_and_grad(x, labels, "softmax_cross_entropy", widths, ["relu", "identity"], params, grads)
""",
    "adam_step_n0065536": """
param, grad, m1, m2 = random((65536,), 1), random((65536,), 2), np.zeros(65536, DTYPE), np.zeros(65536, DTYPE)
def call():
    kernels.adam_step(param, grad, m1, m2, 1, 1e-3)
""",
}

_CHILD = """
import operator, sys
import numpy as np
import fastbp
from fastbp import kernels

backend, dtype, names = sys.argv[1], sys.argv[2], sys.argv[3:]
fastbp.set_backend(backend)
fastbp.set_num_threads(1)
DTYPE = np.dtype(dtype)

def random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPE)

def calls(call):
    for _ in range({n_calls}):
        call()

for name in names:
    scope = dict(np=np, kernels=kernels, random=random, DTYPE=DTYPE)
    exec(CASES[name], scope)
    scope["call"]()  # warm up: compilation, workspaces
    operator.call(calls, scope["call"])  # counted: one profile dump per case
"""


def available():
    """Whether valgrind is on the PATH (and not switched off by FASTBP_ASV_CALLGRIND=0)."""
    return os.environ.get("FASTBP_ASV_CALLGRIND", "1") != "0" and shutil.which("valgrind") is not None


def measure(backend, dtype, names=tuple(CASES)):
    """{case name: instructions per call} for ``backend`` and ``dtype`` on one thread."""
    if not available():
        raise NotImplementedError("valgrind is not installed (or FASTBP_ASV_CALLGRIND=0)")
    child = f"CASES = {dict((n, CASES[n]) for n in names)!r}\n" + _CHILD.format(n_calls=N_CALLS)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={TOGGLE}",
               f"--dump-after={TOGGLE}", f"--callgrind-out-file={out}", sys.executable, "-c", child,
               backend, dtype, *names]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"callgrind child failed:\n{proc.stderr[-3000:]}")
        parts = sorted(glob.glob(out + ".*"), key=lambda path: int(path.rsplit(".", 1)[1]))
        counts = [_total_instructions(path) for path in parts]
    if len(counts) != len(names) or not all(counts):
        raise NotImplementedError(f"callgrind counted nothing inside {TOGGLE}: CPython's symbols are stripped?")
    return {name: count / N_CALLS for name, count in zip(names, counts)}


def _total_instructions(path):
    """The Ir total of one callgrind profile ("summary:" or "totals:" line)."""
    with open(path) as profile:
        for line in profile:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    return 0
