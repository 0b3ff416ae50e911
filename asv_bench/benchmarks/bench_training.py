"""Whole training runs: one epoch of mini-batch SGD, its peak memory, and the time to the first step."""

import timeit

import numpy as np

import fastbp as fb

from .common import ALL_THREADS, BACKENDS, DTYPES, THREADS, KernelBenchmark

# The peer comparison's networks: "sizes:batch" -> samples per epoch.
NETWORKS = {
    "784-256-128-10:128": 8192,
    "784-256-128-10:32": 4096,
    "64-32-10:32": 32768,
    "784-1024-1024-10:256": 2048,
}


def build(spec, dtype, seed=0):
    sizes, batch = spec.split(":")
    sizes = [int(s) for s in sizes.split("-")]
    layers = [fb.Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
              for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]
    net = fb.Network(layers, loss="softmax_cross_entropy", dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((NETWORKS[spec], sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=NETWORKS[spec])
    return net, X, y, int(batch)


class TrainEpoch(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(NETWORKS)]
    param_names = ["backend", "dtype", "threads", "network"]

    def setup(self, backend, dtype, threads, network):
        self.configure(backend, dtype, threads)
        self.net, self.X, self.y, self.batch = build(network, dtype)
        self.opt = fb.SGD(self.net, lr=0.01)
        self.time_epoch(backend, dtype, threads, network)  # JIT, buffers

    def time_epoch(self, backend, dtype, threads, network):
        self.net.fit(self.X, self.y, optimizer=self.opt, epochs=1, batch_size=self.batch, shuffle=True, verbose=0)

    def peakmem_epoch(self, backend, dtype, threads, network):
        self.time_epoch(backend, dtype, threads, network)

    def track_seconds_per_1000_samples(self, backend, dtype, threads, network):
        """Best of 3 epochs, as time per 1,000 samples: lower is better, as asv assumes for every track_."""
        runs = timeit.repeat(lambda: self.time_epoch(backend, dtype, threads, network), number=1, repeat=3)
        return min(runs) / len(self.X) * 1000

    track_seconds_per_1000_samples.unit = "s"


class FirstStep:
    """Import fastbp and take one training step, in a fresh interpreter (JIT caches warm on disk)."""

    params = [BACKENDS]
    param_names = ["backend"]
    timeout = 300

    def setup_cache(self):
        # Fill Numba's on-disk cache once, so the timed runs measure a second run.
        for backend in BACKENDS:
            exec(self._code(backend))

    @staticmethod
    def _code(backend):
        return f"""
import numpy as np, fastbp as fb
fb.set_backend({backend!r})
net = fb.Network([fb.Dense(64, 32, activation="relu"), fb.Dense(32, 10)], loss="softmax_cross_entropy", seed=0)
X = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
net.fit(X, np.arange(32) % 10, optimizer=fb.SGD(net, lr=0.01), epochs=1, batch_size=32, verbose=0)
"""

    def timeraw_import_and_first_step(self, backend):
        return self._code(backend)


try:  # fastbp.bench.situations is newer than some commits asv may benchmark
    from fastbp.bench import situations
except ImportError:
    situations = None


class TrainSituations(KernelBenchmark):
    """A training epoch where users run it: a NumPy matmul between steps, or a core taken by another process.

    ``track_slowdown_vs_alone`` is the epoch's time in the situation over its time
    alone, measured one after the other in the same process (1.0 = unaffected;
    lower is better). In the pipeline the matmuls' own time is left out, and the
    alone epoch runs the same per-step hook with nothing in it.
    """

    params = [BACKENDS, ["pipeline", "busy"], ["784-256-128-10:128", "64-32-10:32"]]
    param_names = ["backend", "situation", "network"]
    rounds = 2

    def setup(self, backend, situation, network):
        if situations is None:
            raise NotImplementedError("this commit has no fastbp.bench.situations")
        self.configure(backend, "float32", ALL_THREADS)
        self.net, self.X, self.y, self.batch = build(network, "float32")
        self.hook = situations.BetweenSteps(size=situations.MATMUL_SIZE if situation == "pipeline" else 0)
        self.opt = situations.after_each_step(fb.SGD(self.net, lr=0.01), self.hook)
        self._epoch_seconds()  # JIT, buffers

    def _epoch_seconds(self, repeats=3):
        """Best of ``repeats`` epochs, less the time spent in the hook."""
        best = float("inf")
        for _ in range(repeats):
            hook_before = self.hook.seconds
            start = timeit.default_timer()
            self.net.fit(self.X, self.y, optimizer=self.opt, epochs=1, batch_size=self.batch, shuffle=False,
                         verbose=0)
            best = min(best, timeit.default_timer() - start - (self.hook.seconds - hook_before))
        return best

    def _in_situation(self, situation):
        if situation == "busy":
            with situations.busy_core():
                return self._epoch_seconds()
        return self._epoch_seconds()

    def track_seconds_per_1000_samples(self, backend, situation, network):
        return self._in_situation(situation) / len(self.X) * 1000

    track_seconds_per_1000_samples.unit = "s"

    def track_slowdown_vs_alone(self, backend, situation, network):
        if situation == "pipeline":
            self.hook.active = False  # the same per-step hook, without its matmul
            try:
                alone = self._epoch_seconds()
            finally:
                self.hook.active = True
        else:
            alone = self._epoch_seconds()
        return self._in_situation(situation) / alone

    track_slowdown_vs_alone.unit = "ratio"
