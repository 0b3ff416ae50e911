"""Start-up time: a fresh process's ``import fastbp`` plus its first training step.

Usage: ``python -m fastbp.bench start [--backend numba] [--runs 2]``.

Each case (the four demos' networks, the peer networks, the RNN) runs ``--runs``
times, each in a new interpreter; the first run of a case may compile (Numba
saves what it compiles to its on-disk cache), every later run should only load.
The figure is the time from before ``import fastbp`` to the end of one
``Network.fit`` step on one mini-batch (the memory demo: one step of each of its
two networks), measured inside the child, and the
number of functions the child compiled and saved to Numba's cache (0 when the
cache is reused).
"""

import json
import os
import subprocess
import sys

# (name, network, batch size, optimizer): the demos' networks (``python -m fastbp --task ...``,
# see fastbp/cli.py), the peer networks (fastbp/bench/peers.py) and the RNN bench's shape.
CASES = [
    ("digits demo 64-128-64-10:32", "digits", 32, "Adam"),
    ("cnn demo 8x8x1:32", "cnn", 32, "Adam"),
    ("sequence demo 12x1-32-13:32", "sequence", 32, "Adam"),
    ("memory demo GRU, RNN 50x2-32-1:32", "memory", 32, "Adam"),
    ("784-256-128-10:128", [784, 256, 128, 10], 128, "SGD"),
    ("784-256-128-10:32", [784, 256, 128, 10], 32, "SGD"),
    ("64-32-10:32", [64, 32, 10], 32, "SGD"),
    ("784-1024-1024-10:256", [784, 1024, 1024, 10], 256, "SGD"),
    ("rnn 32x50-128-10:64", "rnn", 64, "SGD"),
]

# Runs in the child: time the import and one step of each network, report as one JSON line.
_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import numpy as np
import fastbp as fb
backend, network, batch, optimizer = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fb.set_backend(backend)
rng = np.random.default_rng(0)


def dense_stack(sizes):
    return [fb.Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
            for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]


def demo_layers(task):
    from argparse import Namespace
    from fastbp.cli import digits_layers
    return digits_layers(Namespace(task=task, layers=[128, 64]))


# network -> [(layers, input shape, loss, n_classes or None for a regression target)]
if network == "digits":
    nets = [(demo_layers("digits"), (64,), "softmax_cross_entropy", 10)]
elif network == "cnn":
    nets = [(demo_layers("cnn"), (8, 8, 1), "softmax_cross_entropy", 10)]
elif network == "sequence":
    nets = [([fb.RNN(1, 32, "tanh"), fb.Dense(32, 13)], (12, 1), "softmax_cross_entropy", 13)]
elif network == "memory":  # the demo trains a GRU, then an Elman RNN
    nets = [([kind(2, 32), fb.Dense(32, 1)], (50, 2), "mse", None) for kind in (fb.GRU, fb.RNN)]
elif network == "rnn":
    nets = [([fb.RNN(32, 128, "tanh"), fb.Dense(128, 10)], (50, 32), "softmax_cross_entropy", 10)]
else:
    nets = [(dense_stack(network), (network[0],), "softmax_cross_entropy", network[-1])]
for layers, shape, loss, n_classes in nets:
    X = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, n_classes, size=batch) if n_classes else rng.standard_normal((batch, 1))
    net = fb.Network(layers, loss=loss, dtype=np.float32, seed=0)
    net.fit(X, y, optimizer=getattr(fb, optimizer)(net, lr=1e-3), epochs=1, batch_size=batch, shuffle=False,
            verbose=0)
print("RESULT " + json.dumps({"seconds": time.perf_counter() - started}), flush=True)
"""


def start_time(backend, network, batch, optimizer):
    """(seconds to import + first step, functions saved to Numba's cache) in a new interpreter."""
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, backend, json.dumps(network), str(batch), optimizer],
                          env=env, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT "):])
    return result["seconds"], sum(line.startswith("[cache] data saved") for line in lines)


def main(argv=None):
    import argparse

    from .machine import describe

    parser = argparse.ArgumentParser(prog="python -m fastbp.bench start", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba", choices=["numba", "cython"])
    parser.add_argument("--runs", type=int, default=2, help="fresh processes per case (the first may compile)")
    args = parser.parse_args(argv)
    print(describe())
    print(f"import fastbp + first training step, {args.backend} backend, float32; "
          "seconds per fresh process (functions saved to Numba's cache)")
    for name, network, batch, optimizer in CASES:
        cells = [f"{seconds:6.2f} s ({saved:2d})"
                 for seconds, saved in (start_time(args.backend, network, batch, optimizer) for _ in range(args.runs))]
        print(f"  {name:>34}: " + "   ".join(cells), flush=True)
