"""``python -m fastbp``: train a network on scikit-learn's bundled digits.

load_digits holds 1,797 real 8×8 scans of handwritten digits (no download).
Pixels are scaled to [0, 1], the data split stratified into train and test,
a network trained with Adam, and the test accuracy, the training throughput
(samples/s) and the path of the saved model printed.
"""

import argparse
import sys
import time

import numpy as np


def _layers(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers, got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"--layers sizes must be >= 1, got {text!r}")
    return sizes


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastbp",
        description="Train a fastbp network on scikit-learn's digits (1,797 8x8 scans) and save it.",
    )
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    parser.add_argument("--layers", type=_layers, default=[128, 64],
                        help="hidden layer sizes, comma-separated (default 128,64)")
    parser.add_argument("--backend", choices=("cython", "numba"), default=None,
                        help="kernel backend (default: the fastest that loads)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the kernels (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the shuffling")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--out", default="digits_model.npz", help="where to save the model (default digits_model.npz)")
    parser.add_argument("--quiet", action="store_true", help="print only the final results")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
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
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=args.seed)
    sizes = [X.shape[1]] + args.layers
    layers = [fb.Dense(n_in, n_out, activation="relu") for n_in, n_out in zip(sizes, sizes[1:])]
    layers.append(fb.Dense(sizes[-1], 10))
    net = fb.Network(layers, loss="softmax_cross_entropy", dtype=np.dtype(args.dtype), seed=args.seed)
    optimizer = fb.Adam(net, lr=args.lr)
    if not args.quiet:
        print(f"fastbp {fb.__version__}: backend {fb.get_backend()}, {fb.get_num_threads()} threads, "
              f"{args.dtype}; {len(X_train)} training and {len(X_test)} test digits")
        print(net)

    started = time.perf_counter()
    history = net.fit(X_train, y_train, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                      validation_data=(X_test, y_test), verbose=0 if args.quiet else 1)
    elapsed = time.perf_counter() - started
    train_throughput = np.median(history["samples_per_sec"])  # steady state: excludes JIT warm-up
    accuracy = float(np.mean(net.predict_classes(X_test) == y_test))
    path = net.save(args.out)

    print(f"test accuracy: {accuracy:.2%} ({len(X_test)} digits)")
    print(f"training: {len(history['loss'])} epochs in {elapsed:.2f} s, "
          f"{train_throughput:,.0f} samples/s (median epoch)")
    print(f"model saved to {path}")
    return 0
