"""Train the same MLP with the same data and the same SGD step on fastbp and its CPU peers.

Usage: ``python -m fastbp.bench peers [--networks 784-256-128-10:128 ...] [--threads N] [--pipeline | --busy]``;
``python -m fastbp.bench rnn [--threads N] [--kinds RNN LSTM GRU]`` for the recurrent comparison
(see ``run_rnn``).

``--pipeline`` runs a NumPy matmul between training steps, ``--busy`` keeps one
core busy with another process (see ``situations``); both print each system's
rate in that situation and its ratio to the quiet, alone figure of the same run.
The header names the CPU and the ISA each fastbp backend runs.

Every system trains float32 relu MLPs with a softmax cross-entropy output by
plain mini-batch SGD (lr 0.01, no momentum, no weight decay) for one epoch over
the same samples in the same order; the figure is samples per second of the
fastest of ``--repeats`` epochs, after one warm-up epoch (JIT compilation is not
counted), best of ``--rounds`` measurements. Each measurement runs in a fresh
process of its own, so no other library's thread pool competes for the cores,
and the systems take turns in rotating order, so slow drifts of a shared machine
hit all of them. Peers that are not installed are skipped: none is required.
Run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, or NumPy's BLAS (the
baseline of every peer but JAX) runs a slower kernel.
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
DEFAULT_NETWORKS = ["784-256-128-10:128", "784-256-128-10:32", "64-32-10:32", "784-1024-1024-10:256"]


def parse_network(spec):
    """'784-256-128-10:128' -> ([784, 256, 128, 10], 128)."""
    sizes, batch = spec.split(":")
    return [int(s) for s in sizes.split("-")], int(batch)


def make_data(sizes, n_samples, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n_samples)
    return X, y


def init_weights(sizes, seed=0):
    """He-initialised float32 weights and zero biases, shared by every system."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((i, o)) * np.sqrt(2.0 / i)).astype(np.float32), np.zeros(o, np.float32))
            for i, o in zip(sizes[:-1], sizes[1:])]


# ------------------------------------------------------------------ systems
# Each returns a function that trains one epoch over (X, y) in batches.
# ``between_steps``: None, or a callable run after every update (the --pipeline situation).
def numpy_by_hand(sizes, batch, threads, between_steps=None):
    params = init_weights(sizes)

    def epoch(X, y):
        for start in range(0, len(X), batch):
            x, t = X[start:start + batch], y[start:start + batch]
            acts = [x]
            for i, (W, b) in enumerate(params):
                z = acts[-1] @ W + b
                acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(t)), t] -= 1
            delta = p / len(t)
            for i in range(len(params) - 1, -1, -1):
                W, b = params[i]
                dW, db = acts[i].T @ delta, delta.sum(axis=0)
                if i:
                    delta = (delta @ W.T) * (acts[i] > 0)
                W -= LR * dW
                b -= LR * db
            if between_steps is not None:
                between_steps()

    return epoch


def torch_eager(sizes, batch, threads, between_steps=None):
    import torch

    torch.set_num_threads(threads)
    layers = []
    for i, (W, b) in enumerate(init_weights(sizes)):
        linear = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T))
            linear.bias.copy_(torch.from_numpy(b))
        layers += [linear, torch.nn.ReLU()] if i < len(sizes) - 2 else [linear]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch(X, y):
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        for start in range(0, len(X), batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[start:start + batch]), yt[start:start + batch]).backward()
            opt.step()
            if between_steps is not None:
                between_steps()

    return epoch


def jax_jit(sizes, batch, threads, between_steps=None):
    import jax
    import jax.numpy as jnp

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in init_weights(sizes)]

    def loss(params, x, t):
        h = x
        for W, b in params[:-1]:
            h = jax.nn.relu(h @ W + b)
        logits = h @ params[-1][0] + params[-1][1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], axis=1))

    step = jax_sgd_step(loss, LR)

    state = {"params": params}

    def epoch(X, y):
        p = state["params"]
        for start in range(0, len(X) - batch + 1, batch):  # full batches only: one compiled shape
            p = step(p, X[start:start + batch], y[start:start + batch])
            if between_steps is not None:
                jax.block_until_ready(p)  # the step is done before the pipeline's next NumPy call
                between_steps()
        jax.block_until_ready(p)
        state["params"] = p

    return epoch


def sklearn_mlp(sizes, batch, threads, between_steps=None):
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), solver="sgd", learning_rate_init=LR,
                          momentum=0.0, nesterovs_momentum=False, alpha=0.0, batch_size=batch, shuffle=False)
    classes = np.arange(sizes[-1])

    def epoch(X, y):
        if between_steps is None:
            model.partial_fit(X, y, classes=classes)
            return
        for start in range(0, len(X), batch):  # one partial_fit per batch: a hook between steps
            model.partial_fit(X[start:start + batch], y[start:start + batch], classes=classes)
            between_steps()

    return epoch


def fastbp_backend(name):
    def build(sizes, batch, threads, between_steps=None):
        import fastbp as fb

        fb.set_backend(name)
        fb.set_num_threads(threads)
        layers = [fb.Dense(i, o, activation="relu" if k < len(sizes) - 2 else None)
                  for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]
        net = fb.Network(layers, loss="softmax_cross_entropy", dtype=np.float32, seed=0)
        for layer, (W, b) in zip(net.layers, init_weights(sizes)):
            layer.W[...] = W
            layer.b[...] = b
        opt = fb.SGD(net, lr=LR)
        if between_steps is not None:
            situations.after_each_step(opt, between_steps)  # fit steps the optimizer once per batch

        def epoch(X, y):
            net.fit(X, y, optimizer=opt, epochs=1, batch_size=batch, shuffle=False, verbose=0)

        return epoch

    return build


SYSTEMS = {
    "numpy by hand": numpy_by_hand,
    "torch eager": torch_eager,
    "jax jit": jax_jit,
    "sklearn": sklearn_mlp,
    "fastbp cython": fastbp_backend("cython"),
    "fastbp numba": fastbp_backend("numba"),
}


# ------------------------------------------------------------------ recurrent comparison
# One recurrent layer over (batch, time, features) sequences, its last state
# into a linear softmax classifier, trained by full BPTT and plain SGD, float32:
# the Elman RNN (tanh), the LSTM and the GRU, each against the torch.nn module
# of the same name, from the same weights, on the same data in the same order.
RNN_SHAPE = {"batch": 64, "time": 50, "n_in": 32, "hidden": 128, "classes": 10}
RNN_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}  # layer kind (fb.* and torch.nn.*): gate blocks of H columns


def rnn_data(n_samples, shape=RNN_SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, shape["time"], shape["n_in"])).astype(np.float32)
    return X, rng.integers(0, shape["classes"], size=n_samples)


def rnn_weights(kind, shape=RNN_SHAPE, seed=0):
    """torch's default U(-1/√H, 1/√H) draws, fastbp-shaped, shared by every system.

    Returns ``(recurrent, classifier)``: {fastbp parameter name: array} of the
    ``kind`` layer (Wx (n_in, G·H), Wh (H, G·H), b (G·H,), and the GRU's b_hn (H,))
    and of the Dense layer (W (H, classes), b (classes,)).
    """
    rng = np.random.default_rng(seed)
    n_in, n, width = shape["n_in"], shape["hidden"], RNN_GATES[kind] * shape["hidden"]
    k = 1 / np.sqrt(n)
    u = lambda *size: rng.uniform(-k, k, size).astype(np.float32)  # noqa: E731
    recurrent = {"Wx": u(n_in, width), "Wh": u(n, width), "b": u(width)}
    if kind == "GRU":
        recurrent["b_hn"] = u(n)
    return recurrent, {"W": u(n, shape["classes"]), "b": u(shape["classes"])}


def torch_rnn(kind, threads, shape=RNN_SHAPE):
    """torch.nn.<kind> + Linear with ``rnn_weights`` mapped as fastbp.layers.gated documents
    (weight_ih = Wxᵀ, weight_hh = Whᵀ, bias_ih = b, bias_hh = 0 but the GRU's n block = b_hn).

    torch has two biases where fastbp has one (b = bias_ih + bias_hh): trained
    both, SGD would move the sum twice as far. So bias_hh's gradient is masked
    to the GRU's n block (fastbp's b_hn), and the rest of it stays 0.

    Returns ``(epoch, loss)``: one SGD epoch over (X, y), and the mean loss on (X, y).
    """
    import torch

    torch.set_num_threads(threads)
    recurrent, classifier = rnn_weights(kind, shape)
    n = shape["hidden"]
    rnn = getattr(torch.nn, kind)(shape["n_in"], n, batch_first=True)
    linear = torch.nn.Linear(n, shape["classes"])
    bias_hh = np.zeros_like(recurrent["b"])
    if kind == "GRU":
        bias_hh[2 * n:] = recurrent["b_hn"]
    with torch.no_grad():
        for name, value in [("weight_ih_l0", recurrent["Wx"].T), ("weight_hh_l0", recurrent["Wh"].T),
                            ("bias_ih_l0", recurrent["b"]), ("bias_hh_l0", bias_hh)]:
            getattr(rnn, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
        linear.weight.copy_(torch.from_numpy(classifier["W"].T.copy()))
        linear.bias.copy_(torch.from_numpy(classifier["b"]))
    trained = torch.zeros_like(rnn.bias_hh_l0)
    if kind == "GRU":
        trained[2 * n:] = 1
    rnn.bias_hh_l0.register_hook(lambda grad: grad * trained)
    params = list(rnn.parameters()) + list(linear.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = shape["batch"]

    def loss(X, y):
        with torch.no_grad():
            states, _ = rnn(torch.from_numpy(X))
            return float(loss_fn(linear(states[:, -1]), torch.from_numpy(y)))

    def epoch(X, y):
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        for start in range(0, len(X), batch):
            opt.zero_grad(set_to_none=True)
            states, _ = rnn(Xt[start:start + batch])
            loss_fn(linear(states[:, -1]), yt[start:start + batch]).backward()
            opt.step()

    return epoch, loss


def fastbp_rnn(backend_name):
    def build(kind, threads, shape=RNN_SHAPE):
        """fb.<kind> + Dense with ``rnn_weights``; returns ``(epoch, loss)`` as ``torch_rnn``."""
        import fastbp as fb

        fb.set_backend(backend_name)
        fb.set_num_threads(threads)
        n = shape["hidden"]
        net = fb.Network([getattr(fb, kind)(shape["n_in"], n), fb.Dense(n, shape["classes"])],
                         loss="softmax_cross_entropy", dtype=np.float32, seed=0)
        for layer, weights in zip(net.layers, rnn_weights(kind, shape)):
            for name, value in weights.items():
                layer.param(name)[...] = value
        opt = fb.SGD(net, lr=LR)

        def epoch(X, y):
            net.fit(X, y, optimizer=opt, epochs=1, batch_size=shape["batch"], shuffle=False, verbose=0)

        return epoch, net.evaluate

    return build


RNN_SYSTEMS = {"torch eager": torch_rnn, "fastbp cython": fastbp_rnn("cython"), "fastbp numba": fastbp_rnn("numba")}


def run_rnn(threads, repeats, n_batches=20, systems=tuple(RNN_SYSTEMS), kinds=tuple(RNN_GATES), shape=RNN_SHAPE):
    """Samples/s of one SGD epoch (n_batches batches) for each layer kind and system, one table per kind.

    Returns {kind: {system: samples/s}}; fastbp's rows show the ratio to torch's.
    """
    X, y = rnn_data(n_batches * shape["batch"], shape)
    results = {}
    for kind in kinds:
        result = results[kind] = {}
        for name in systems:
            try:
                epoch, _ = RNN_SYSTEMS[name](kind, threads, shape)
            except ImportError as exc:
                print(f"  skipping {name}: {exc}")
                continue
            epoch(X, y)  # warm-up
            result[name] = len(X) / min(timed(epoch, X, y) for _ in range(repeats))
        print(f"{kind}{' tanh' if kind == 'RNN' else ''}, batch {shape['batch']}, time {shape['time']}, "
              f"n_in {shape['n_in']}, hidden {shape['hidden']} -> Dense {shape['classes']}; float32, full BPTT, "
              f"SGD lr={LR}, {threads} threads; samples/s")
        peer = result.get("torch eager")
        for name, value in result.items():
            ratio = f"  {value / peer:5.2f}x torch.nn.{kind}" if peer and name.startswith("fastbp") else ""
            print(f"  {name:>14}: {value / 1e3:8.2f}k{ratio}", flush=True)
    return results


def blas_threads(n):
    """Limit NumPy's BLAS to n threads where threadpoolctl is installed; else leave it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


def samples_per_second(build, sizes, batch, threads, n_samples, repeats, situation="alone"):
    """Samples/s of the best of ``repeats`` epochs; with --pipeline, the matmuls' own time left out."""
    X, y = make_data(sizes, n_samples)
    if situation == "pipeline":
        hook = situations.BetweenSteps()
    elif situation == "stepwise":  # the pipeline's alone figure: the same per-step loop, nothing in between
        hook = situations.BetweenSteps(size=0)
    else:
        hook = None
    epoch = build(sizes, batch, threads, hook)
    epoch(X, y)  # warm-up: JIT compilation, buffer allocation
    best = float("inf")
    for _ in range(repeats):
        hook_before = hook.seconds if hook else 0.0
        seconds = timed(epoch, X, y)
        best = min(best, seconds - ((hook.seconds - hook_before) if hook else 0.0))
    return n_samples / best


def _measure_in_child(name, spec, threads, n_samples, repeats, situation):
    """samples/s of system ``name`` on network ``spec``; runs in a fresh interpreter."""
    blas_threads(threads)
    sizes, batch = parse_network(spec)
    return samples_per_second(SYSTEMS[name], sizes, batch, threads, n_samples, repeats, situation)


def measure_isolated(name, spec, threads, n_samples, repeats, situation="alone"):
    """``_measure_in_child`` in a spawned process of its own.

    Each system runs alone: no thread pool of another library (torch's OpenMP,
    XLA's, OpenBLAS's) is left spinning on the cores it needs, and no import
    or JIT state of one system leaks into the next. Raises ImportError when the
    system is not installed. ``situation="busy"`` keeps a core busy while it runs.
    """
    busy = situations.busy_core() if situation == "busy" else contextlib.nullcontext()
    with multiprocessing.get_context("spawn").Pool(1) as pool, busy:
        return pool.apply(_measure_in_child, (name, spec, threads, n_samples, repeats, situation))


def run(networks, threads, repeats, budget_flops, systems, rounds=2, situation="alone"):
    """Measure every system on every network, ``rounds`` times in rotating order; keep each best.

    In a situation other than "alone", each system is measured alone and in the
    situation, one after the other, and the row shows the situation's rate and
    its ratio to the alone one.
    """
    rows = []
    for spec in networks:
        sizes, batch = parse_network(spec)
        flops_per_sample = 6 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
        n_samples = int(np.clip(budget_flops / flops_per_sample, 4 * batch, 200_000)) // batch * batch
        row = {"network": spec, "samples": n_samples, **{name: None for name in systems}}
        alone = {name: None for name in systems}
        missing = set()
        for r in range(rounds):
            shift = r % len(systems)
            for name in systems[shift:] + systems[:shift]:  # rotate: no system always runs first
                if name in missing:
                    continue
                try:
                    rate = measure_isolated(name, spec, threads, n_samples, repeats, situation)
                    if situation != "alone":
                        quiet = "stepwise" if situation == "pipeline" else "alone"
                        alone[name] = max(measure_isolated(name, spec, threads, n_samples, repeats, quiet),
                                          alone[name] or 0.0)
                except ImportError as exc:
                    missing.add(name)
                    print(f"  skipping {name}: {exc}")
                    continue
                row[name] = max(rate, row[name] or 0.0)
        rows.append(row)
        if situation == "alone":
            print_row(row, systems)
        else:
            row["alone"] = alone
            print_situation_row(row, systems)
    return rows


def print_situation_row(row, systems):
    """The situation's samples/s of each system and, in brackets, its ratio to the alone figure."""
    cells = [f"{row['network']:>22}"]
    for s in systems:
        rate, alone = row[s], row["alone"][s]
        cells.append(f"{rate / 1e3:9.1f}k ({rate / alone:4.2f}x)" if rate and alone else f"{'-':>18}")
    print(" ".join(cells), flush=True)


def print_row(row, systems):
    peers = [row[s] for s in systems if not s.startswith("fastbp") and row[s]]
    best = max(peers) if peers else None
    cells = [f"{row['network']:>22}"]
    for s in systems:
        cells.append(f"{row[s] / 1e3:9.1f}k" if row[s] else f"{'-':>10}")
    for s in systems:
        if s.startswith("fastbp") and row[s] and best:
            cells.append(f"{row[s] / best:5.2f}x")
    print(" ".join(cells), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["peers", "rnn"], help="which comparison to run: MLPs or the recurrent layers")
    parser.add_argument("--networks", nargs="+", default=DEFAULT_NETWORKS, metavar="SIZES:BATCH")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gflop", type=float, default=40.0, help="work per epoch, sizing the sample count")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--kinds", nargs="+", default=list(RNN_GATES), choices=list(RNN_GATES),
                        help="rnn: the recurrent layers to compare with torch.nn's of the same name")
    parser.add_argument("--rounds", type=int, default=2,
                        help="peers: measurements of each system, each in a fresh process, in rotating order")
    situation = parser.add_mutually_exclusive_group()
    situation.add_argument("--pipeline", action="store_const", const="pipeline", dest="situation",
                           help="peers: a NumPy matmul between training steps (ratio to alone printed)")
    situation.add_argument("--busy", action="store_const", const="busy", dest="situation",
                           help="peers: one CPU-bound process on one core while measuring (ratio to alone)")
    args = parser.parse_args(argv)
    print(describe())
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var}={os.environ[var]} is set; NumPy's BLAS may run a slower kernel")
    if args.what == "rnn":
        limiter = blas_threads(args.threads)
        try:
            run_rnn(args.threads, args.repeats, kinds=args.kinds)
        finally:
            if limiter is not None:
                limiter.restore_original_limits()
        return
    systems = args.systems
    fastbp_cols = [s for s in systems if s.startswith("fastbp")]
    situation = args.situation or "alone"
    if situation == "alone":
        print(f"samples/s, float32, SGD lr={LR}, {args.threads} threads; ratio = fastbp / best peer")
        print(" ".join([f"{'network:batch':>22}"] + [f"{s[:10]:>10}" for s in systems]
                       + [f"{s[7:12]:>6}" for s in fastbp_cols]))
    else:
        what = {"pipeline": f"a {situations.MATMUL_SIZE}x{situations.MATMUL_SIZE} NumPy matmul between steps "
                            "(its own time left out)",
                "busy": "one CPU-bound process on one core"}[situation]
        print(f"samples/s, float32, SGD lr={LR}, {args.threads} threads, {what}; (ratio to the same system alone)")
        print(" ".join([f"{'network:batch':>22}"] + [f"{s[:18]:>18}" for s in systems]))
    run(args.networks, args.threads, args.repeats, args.gflop * 1e9, systems, args.rounds, situation)


if __name__ == "__main__":
    main()
