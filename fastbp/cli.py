"""``python -m fastbp``: train a network on scikit-learn's bundled digits (an
MLP, or with ``--task cnn`` a convolutional network), or (``--task sequence``)
a recurrent network on binary sequences.

digits: load_digits holds 1,797 real 8×8 scans of handwritten digits (no
download). Pixels are scaled to [0, 1], the data split stratified into train
and test, a network trained with Adam, and the test accuracy, the training
throughput (samples/s) and the path of the saved model printed.

cnn: the same digits as (8, 8, 1) images through Conv2D(1, 32, 3, same) ->
Conv2D(32, 32, 3, same) -> MaxPool2D(2) -> Conv2D(32, 64, 3, same) ->
MaxPool2D(2) -> Flatten -> Dense(256, 128) -> Dense(128, 10), relu throughout.

sequence: random binary sequences of ``--steps`` bits; the class is how many
bits are set (0..steps). An ``RNN`` reads the sequence one bit per step and a
``Dense`` layer classifies its last state; trained by backpropagation through
time, then the same figures are printed.

memory: the adding problem (Hochreiter & Schmidhuber, 1997), a long-range
memory task: each step carries a random number in [0, 1] and a marker; two
steps are marked, one in each half of the sequence, and the target is the sum
of their numbers. Predicting the mean (1) scores MSE 1/6 ≈ 0.167. A ``GRU``
and an Elman ``RNN`` of the same size are trained alike and their test MSEs
printed side by side: the gated layer carries the first marked number across
the ``--steps`` steps, the Elman RNN's gradient vanishes on the way.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

from . import __version__

DEFAULT_LR = {"digits": 2e-3, "cnn": 2e-3, "sequence": 2e-3, "memory": 5e-3}
DEFAULT_OUT = {"digits": "digits_model.npz", "cnn": "cnn_model.npz", "sequence": "sequence_model.npz",
               "memory": "memory_model.npz"}
DEFAULT_STEPS = {"sequence": 12, "memory": 50}
DEFAULT_EPOCHS = {"digits": 30, "cnn": 30, "sequence": 60, "memory": 10}
ADDING_BASELINE_MSE = 1 / 6  # predicting the mean 1: the variance of a sum of two U(0, 1)


# Option types: a bad value is an argparse error ("argument --epochs: ..."), not a traceback.
def _number(convert, accept, expected):
    """An argparse type: ``convert(text)``, refused unless ``accept(value)``; ``expected`` says what is wanted."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text if convert is float else value}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_seed = _number(int, lambda v: v >= 0, "an integer >= 0")
_learning_rate = _number(float, lambda v: v > 0 and math.isfinite(v), "a finite number > 0")


def _layers(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers, got {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("--layers needs at least one hidden layer size, e.g. 128,64")
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"--layers sizes must be >= 1, got {text!r}")
    return sizes


def _check_out(parser, path):
    """Refuse, before any training, a --out that cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        parser.error(f"argument --out: {path!r} is a directory; give a file name such as model.npz")
    if not os.path.isdir(directory):
        parser.error(f"argument --out: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        parser.error(f"argument --out: the directory {directory!r} is not writable")


def build_parser(prog=None):
    """The command line's parser; ``prog`` defaults to the name the program was called by."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a fastbp network on scikit-learn's digits (1,797 8x8 scans; an MLP, or a CNN with "
                    "--task cnn), an RNN on binary sequences (--task sequence) or a GRU and an RNN on the "
                    "adding problem (--task memory), and save it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (fastbp {__version__})")
    parser.add_argument("--task", choices=("digits", "cnn", "sequence", "memory"), default="digits",
                        help="digits: an MLP on 8x8 scans (default); cnn: a convolutional network on them; "
                             "sequence: an RNN counting the ones in binary sequences; memory: the adding "
                             "problem, a GRU against an Elman RNN")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="passes over the training set (default 30; 60 for sequence, 10 for memory)")
    parser.add_argument("--layers", type=_layers, default=[128, 64],
                        help="digits task: hidden layer sizes, comma-separated (default 128,64)")
    parser.add_argument("--backend", choices=("cython", "numba"), default=None,
                        help="kernel backend (default: the fastest that loads)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads for the kernels (default: OMP_NUM_THREADS if set, else all cores)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="mini-batch size (default 32)")
    parser.add_argument("--lr", type=_learning_rate, default=None,
                        help="Adam learning rate (default 2e-3 for digits, cnn and sequence, 5e-3 for memory)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed for the split, the weights and the shuffling")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="sequence task: bits per sequence (default 12); memory task: steps per "
                             "sequence (default 50)")
    parser.add_argument("--hidden", type=_positive_int, default=32,
                        help="sequence and memory tasks: recurrent state size (default 32)")
    parser.add_argument("--samples", type=_positive_int, default=None,
                        help="sequence and memory tasks: training sequences (default 4000; 1000 test)")
    parser.add_argument("--out", default=None,
                        help="where to save the model (default digits_model.npz, cnn_model.npz or "
                             "sequence_model.npz)")
    parser.add_argument("--quiet", action="store_true", help="print only the final results")
    return parser


def counting_data(n_samples, n_steps, rng):
    """Binary sequences (n_samples, n_steps, 1) and their number of ones, the class (0..n_steps)."""
    X = rng.integers(0, 2, size=(n_samples, n_steps, 1)).astype(np.float32)
    return X, X.sum(axis=(1, 2)).astype(np.int64)


def adding_data(n_samples, n_steps, rng):
    """The adding problem: X (n_samples, n_steps, 2) of (number in [0, 1], marker), y (n_samples, 1).

    One marked step in the first half, one in the second; y is the sum of their numbers.
    """
    X = np.zeros((n_samples, n_steps, 2), np.float32)
    X[..., 0] = rng.uniform(0, 1, (n_samples, n_steps))
    half = max(n_steps // 2, 1)
    rows = np.arange(n_samples)
    X[rows, rng.integers(0, half, n_samples), 1] = 1
    X[rows, rng.integers(n_steps - half, n_steps, n_samples) if n_steps > 1 else 0, 1] = 1
    return X, (X[..., 0] * X[..., 1]).sum(axis=1, keepdims=True)


def _report(net, history, elapsed, accuracy, n_test, what, out):
    path = net.save(out)
    train_throughput = np.median(history["samples_per_sec"])  # steady state: excludes JIT warm-up
    print(f"test accuracy: {accuracy:.2%} ({n_test} {what})")
    print(f"training: {len(history['loss'])} epochs in {elapsed:.2f} s, "
          f"{train_throughput:,.0f} samples/s (median epoch)")
    print(f"model saved to {path}")


def sequence_main(args):
    """Train RNN(1, hidden) -> Dense(hidden, steps + 1) to count the ones of binary sequences."""
    import fastbp as fb

    rng = np.random.default_rng(args.seed)
    X_train, y_train = counting_data(args.samples, args.steps, rng)
    X_test, y_test = counting_data(1000, args.steps, rng)
    net = fb.Network([fb.RNN(1, args.hidden, "tanh"), fb.Dense(args.hidden, args.steps + 1)],
                     loss="softmax_cross_entropy", dtype=np.dtype(args.dtype), seed=args.seed)
    optimizer = fb.Adam(net, lr=args.lr)
    if not args.quiet:
        print(f"fastbp {fb.__version__}: backend {fb.get_backend()}, {fb.get_num_threads()} threads, "
              f"{args.dtype}; count the ones in {len(X_train)} training and {len(X_test)} test sequences "
              f"of {args.steps} bits")
        print(net)
    started = time.perf_counter()
    history = net.fit(X_train, y_train, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=(X_test, y_test), verbose=0 if args.quiet else 1)
    elapsed = time.perf_counter() - started
    accuracy = float(np.mean(net.predict_classes(X_test) == y_test))
    _report(net, history, elapsed, accuracy, len(X_test), "sequences", args.out)
    return 0


def digits_layers(args):
    """The digits task's MLP, or the cnn task's convolutional network (input (8, 8, 1) images)."""
    import fastbp as fb

    if args.task == "cnn":
        return [fb.Conv2D(1, 32, 3, padding="same", activation="relu"),
                fb.Conv2D(32, 32, 3, padding="same", activation="relu"),
                fb.MaxPool2D(2),  # 8x8 -> 4x4
                fb.Conv2D(32, 64, 3, padding="same", activation="relu"),
                fb.MaxPool2D(2),  # 4x4 -> 2x2
                fb.Flatten(),
                fb.Dense(2 * 2 * 64, 128, activation="relu"),
                fb.Dense(128, 10)]
    sizes = [64] + args.layers
    layers = [fb.Dense(n_in, n_out, activation="relu") for n_in, n_out in zip(sizes, sizes[1:])]
    return layers + [fb.Dense(sizes[-1], 10)]


def memory_main(args):
    """Train GRU(2, hidden) -> Dense(hidden, 1) and RNN(2, hidden) -> Dense(hidden, 1) on the adding problem."""
    import fastbp as fb

    rng = np.random.default_rng(args.seed)
    X_train, y_train = adding_data(args.samples, args.steps, rng)
    X_test, y_test = adding_data(1000, args.steps, rng)
    if not args.quiet:
        print(f"fastbp {fb.__version__}: backend {fb.get_backend()}, {fb.get_num_threads()} threads, "
              f"{args.dtype}; the adding problem over {args.steps} steps, {len(X_train)} training and "
              f"{len(X_test)} test sequences; predicting the mean scores MSE {ADDING_BASELINE_MSE:.3f}")
    results = {}
    for kind in (fb.GRU, fb.RNN):
        net = fb.Network([kind(2, args.hidden), fb.Dense(args.hidden, 1)], loss="mse",
                         dtype=np.dtype(args.dtype), seed=args.seed)
        started = time.perf_counter()
        net.fit(X_train, y_train, optimizer=fb.Adam(net, lr=args.lr), epochs=args.epochs,
                batch_size=args.batch_size, verbose=0 if args.quiet else 1)
        results[kind.__name__] = (net, net.evaluate(X_test, y_test), time.perf_counter() - started)
    for name, (_, mse, elapsed) in results.items():
        print(f"{name:>3} test MSE: {mse:.4f} ({mse / ADDING_BASELINE_MSE:.1%} of the baseline "
              f"{ADDING_BASELINE_MSE:.3f}; {args.epochs} epochs in {elapsed:.1f} s)")
    print(f"model saved to {results['GRU'][0].save(args.out)}")
    return 0


def main(argv=None, prog=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.task]
    if args.out is None:
        args.out = DEFAULT_OUT[args.task]
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS[args.task]
    if args.steps is None:
        args.steps = DEFAULT_STEPS.get(args.task)
    if args.samples is None:
        args.samples = 4000
    _check_out(parser, args.out)
    if args.task in ("sequence", "memory"):
        import fastbp as fb

        if args.backend is not None:
            fb.set_backend(args.backend)
        if args.threads is not None:
            fb.set_num_threads(args.threads)
        return sequence_main(args) if args.task == "sequence" else memory_main(args)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        print("the digits demo needs scikit-learn: pip install 'fastbp[demo]'", file=sys.stderr)
        return 2
    import fastbp as fb

    if args.backend is not None:
        fb.set_backend(args.backend)
    if args.threads is not None:
        fb.set_num_threads(args.threads)

    X, y = load_digits(return_X_y=True)
    X = X / 16.0  # pixel intensities 0..16 -> [0, 1]
    if args.task == "cnn":
        X = X.reshape(-1, 8, 8, 1)  # images, channels-last
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=args.seed)
    net = fb.Network(digits_layers(args), loss="softmax_cross_entropy", dtype=np.dtype(args.dtype),
                     seed=args.seed)
    optimizer = fb.Adam(net, lr=args.lr)
    if not args.quiet:
        print(f"fastbp {fb.__version__}: backend {fb.get_backend()}, {fb.get_num_threads()} threads, "
              f"{args.dtype}; {len(X_train)} training and {len(X_test)} test digits")
        print(net)

    started = time.perf_counter()
    history = net.fit(X_train, y_train, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=(X_test, y_test), verbose=0 if args.quiet else 1)
    elapsed = time.perf_counter() - started
    accuracy = float(np.mean(net.predict_classes(X_test) == y_test))
    _report(net, history, elapsed, accuracy, len(X_test), "digits", args.out)
    return 0
