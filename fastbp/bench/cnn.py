"""Train the same convolutional networks with the same data, weights and SGD step on fastbp and its peers.

Usage: ``python -m fastbp.bench cnn [--networks lenet vgg] [--threads N] [--repeats R] [--busy]``.

* ``lenet``: LeNet-5's shape, 28×28×1 → Conv 6@5×5 → max-pool 2 → Conv 16@5×5 →
  max-pool 2 → 120 → 84 → 10, relu, batch 64;
* ``vgg``: a small VGG block, 32×32×3 → two Conv 32@3×3 'same' → max-pool 2 →
  two Conv 64@3×3 'same' → max-pool 2 → 256 → 10, relu, batch 64.

float32, softmax cross-entropy, plain SGD (lr 0.01), synthetic data, the same
initial weights everywhere; the figure is samples per second of the fastest of
``--repeats`` epochs after a warm-up epoch (JIT compilation not counted).
Peers: torch eager (oneDNN) and JAX ``jit``, each on the same thread count;
one that is not installed is skipped; each system runs in a spawned process of
its own, so no other library's thread pool spins beside it. Images are channels-last in fastbp and
JAX, channels-first in torch (its default), the weights permuted to match.
``--busy`` measures every system again with one CPU-bound process on one core
(``situations.busy_core``) and prints, in brackets, its ratio to the same
system alone.
"""

import argparse
import contextlib
import multiprocessing
import os

import numpy as np

from . import situations
from ._common import jax_sgd_step, timed, usable_cores
from .machine import describe

LR = 0.01
BATCH = 64
# (kind, arguments): conv (in, out, kernel, padding), pool (size), flatten, dense (in, out, relu?)
NETWORKS = {
    "lenet": {"input": (28, 28, 1), "layers": [
        ("conv", 1, 6, 5, "valid"), ("pool", 2), ("conv", 6, 16, 5, "valid"), ("pool", 2), ("flatten",),
        ("dense", 4 * 4 * 16, 120, True), ("dense", 120, 84, True), ("dense", 84, 10, False)]},
    "vgg": {"input": (32, 32, 3), "layers": [
        ("conv", 3, 32, 3, "same"), ("conv", 32, 32, 3, "same"), ("pool", 2),
        ("conv", 32, 64, 3, "same"), ("conv", 64, 64, 3, "same"), ("pool", 2), ("flatten",),
        ("dense", 8 * 8 * 64, 256, True), ("dense", 256, 10, False)]},
}
N_BATCHES = {"lenet": 40, "vgg": 8}


def make_data(name, seed=0):
    shape = NETWORKS[name]["input"]
    rng = np.random.default_rng(seed)
    n = N_BATCHES[name] * BATCH
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, 10, n)


def init_weights(name, seed=0):
    """[(W, b)] per conv (W (kh, kw, in, out)) and dense (W (in, out)) layer: torch's U(-1/√fan_in, 1/√fan_in)."""
    rng = np.random.default_rng(seed)
    weights = []
    for kind, *args in NETWORKS[name]["layers"]:
        if kind == "conv":
            c_in, c_out, k, _ = args
            shape, fan_in = (k, k, c_in, c_out), k * k * c_in
        elif kind == "dense":
            shape, fan_in = (args[0], args[1]), args[0]
        else:
            continue
        bound = 1 / np.sqrt(fan_in)
        weights.append((rng.uniform(-bound, bound, shape).astype(np.float32),
                        rng.uniform(-bound, bound, shape[-1]).astype(np.float32)))
    return weights


def _feature_map(name):
    """(height, width, channels) of the image reaching the flatten."""
    h, w, c = NETWORKS[name]["input"]
    for kind, *args in NETWORKS[name]["layers"]:
        if kind == "conv":
            c_in, c, k, padding = args
            if padding == "valid":
                h, w = h - k + 1, w - k + 1
        elif kind == "pool":
            h, w = h // args[0], w // args[0]
        elif kind == "flatten":
            return h, w, c


# ------------------------------------------------------------------ systems
def fastbp_network(name):
    """The fastbp Network of ``name`` with the shared initial weights."""
    import fastbp as fb

    layers = []
    for kind, *args in NETWORKS[name]["layers"]:
        if kind == "conv":
            layers.append(fb.Conv2D(args[0], args[1], args[2], padding=args[3], activation="relu"))
        elif kind == "pool":
            layers.append(fb.MaxPool2D(args[0]))
        elif kind == "flatten":
            layers.append(fb.Flatten())
        else:
            layers.append(fb.Dense(args[0], args[1], activation="relu" if args[2] else None))
    net = fb.Network(layers, loss="softmax_cross_entropy", dtype=np.float32, seed=0)
    for layer, (W, b) in zip([layer for layer in net.layers if layer.n_params], init_weights(name)):
        layer.W, layer.b = W, b
    return net


def fastbp_cnn(backend):
    def build(name, threads):
        import fastbp as fb

        fb.set_backend(backend)
        fb.set_num_threads(threads)
        net = fastbp_network(name)
        opt = fb.SGD(net, lr=LR)

        def epoch(X, y):
            net.fit(X, y, optimizer=opt, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)

        return epoch

    return build


def torch_network(name):
    """The torch model of ``name`` (channels-first) with the shared initial weights, permuted."""
    import torch

    nn = torch.nn
    modules, weights = [], iter(init_weights(name))
    h, w, c = _feature_map(name)
    for kind, *args in NETWORKS[name]["layers"]:
        if kind == "conv":
            conv = nn.Conv2d(args[0], args[1], args[2], padding=args[3])
            W, b = next(weights)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(W.transpose(3, 2, 0, 1).copy()))
                conv.bias.copy_(torch.from_numpy(b))
            modules += [conv, nn.ReLU()]
        elif kind == "pool":
            modules.append(nn.MaxPool2d(args[0]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
            first_dense = True
        else:
            linear = nn.Linear(args[0], args[1])
            W, b = next(weights)
            if first_dense:  # fastbp flattens (h, w, c), torch (c, h, w): permute the rows to match
                W = W.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(W.shape)
                first_dense = False
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(W.T.copy()))
                linear.bias.copy_(torch.from_numpy(b))
            modules += [linear, nn.ReLU()] if args[2] else [linear]
    return nn.Sequential(*modules)


def torch_eager(name, threads):
    import torch

    torch.set_num_threads(threads)
    nn = torch.nn
    model = torch_network(name)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()

    def epoch(X, y):
        Xt, yt = torch.from_numpy(X.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
        for start in range(0, len(X), BATCH):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[start:start + BATCH]), yt[start:start + BATCH]).backward()
            opt.step()

    return epoch


def jax_jit(name, threads):
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                                       f"intra_op_parallelism_threads={threads}")
    import jax
    import jax.numpy as jnp

    layers = NETWORKS[name]["layers"]
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in init_weights(name)]

    def forward(params, x):
        weights = iter(params)
        for kind, *args in layers:
            if kind == "conv":
                W, b = next(weights)
                x = jax.lax.conv_general_dilated(x, W, (1, 1), args[3].upper(),
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                x = jax.nn.relu(x + b)
            elif kind == "pool":
                k = args[0]
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, k, k, 1), "VALID")
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            else:
                W, b = next(weights)
                x = x @ W + b
                if args[2]:
                    x = jax.nn.relu(x)
        return x

    def loss(params, x, y):
        logits = forward(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    step = jax_sgd_step(loss, LR)

    state = {"params": params}

    def epoch(X, y):
        p = state["params"]
        for start in range(0, len(X), BATCH):
            p = step(p, X[start:start + BATCH], y[start:start + BATCH])
        jax.block_until_ready(p)
        state["params"] = p

    return epoch


SYSTEMS = {"torch eager": torch_eager, "jax jit": jax_jit,
           "fastbp cython": fastbp_cnn("cython"), "fastbp numba": fastbp_cnn("numba")}
PEERS = ("torch eager", "jax jit")


def _measure_in_child(system, name, threads, repeats):
    """samples/s of ``system`` on network ``name``: the best of ``repeats`` epochs after a warm-up one."""
    X, y = make_data(name)
    epoch = SYSTEMS[system](name, threads)
    epoch(X, y)  # warm-up: JIT compilation, buffers
    return len(X) / min(timed(epoch, X, y) for _ in range(repeats))


def measure_isolated(system, name, threads, repeats, busy=False):
    """``_measure_in_child`` in a spawned process of its own (as ``peers.measure_isolated``): no
    thread pool of another system (torch's OpenMP, XLA's) is left spinning on the cores it needs.
    With ``busy``, a CPU-bound process keeps one core busy meanwhile. ImportError: not installed."""
    loaded = situations.busy_core() if busy else contextlib.nullcontext()
    with multiprocessing.get_context("spawn").Pool(1) as pool, loaded:
        return pool.apply(_measure_in_child, (system, name, threads, repeats))


def run(name, threads, repeats, systems=tuple(SYSTEMS), busy=False):
    """{system: samples/s} for network ``name``, printing a table row per system with its ratio to the
    best peer; with ``busy``, {system: (alone, busy)} and the busy figure's ratio to alone."""
    result = {}
    for system in systems:
        try:
            result[system] = measure_isolated(system, name, threads, repeats)
        except ImportError as exc:
            print(f"  skipping {system}: {exc}")
    peers = {s: v for s, v in result.items() if s in PEERS}
    best = max(peers.values()) if peers else None
    print(f"{name}: batch {BATCH}, float32, SGD lr={LR}, {threads} threads; samples/s"
          + (f", ratio to the best peer ({max(peers, key=peers.get)})" if peers else ""))
    for system, value in result.items():
        ratio = f"  {value / best:5.2f}x" if best and system.startswith("fastbp") else ""
        print(f"  {system:>14}: {value:10.0f}{ratio}", flush=True)
    if not busy:
        return result
    loaded = {system: measure_isolated(system, name, threads, repeats, busy=True) for system in result}
    print(f"{name}, one core busy with another process; samples/s (ratio to the same system alone)")
    for system, value in loaded.items():
        print(f"  {system:>14}: {value:10.0f} ({value / result[system]:4.2f}x)", flush=True)
    return {system: (result[system], loaded[system]) for system in loaded}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench cnn", description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--busy", action="store_true",
                        help="also measure with one CPU-bound process on one core, as a ratio to alone")
    args = parser.parse_args(argv)
    print(describe())
    for name in args.networks:
        run(name, args.threads, args.repeats, args.systems, busy=args.busy)


if __name__ == "__main__":
    main()
