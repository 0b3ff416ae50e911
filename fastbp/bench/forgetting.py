"""Catastrophic forgetting, shown and guarded against: train task A, then task B.

Usage: ``python -m fastbp.bench forgetting [--backend cython|numba] [--threads N] [--dtype float32|float64]``.

Data: scikit-learn's bundled digits (1,797 × 64, scaled to [0, 1]), split once
into 70 % to train and 30 % to test (stratified, random_state=0).

* domain-incremental: A = the digits, B = the same digits with one fixed random
  permutation of the 64 pixels; same 10 classes.
* class-incremental: A = classes 0-4, B = classes 5-9, one 10-way softmax output.

Every method trains the same network (64-512-10, relu, softmax cross-entropy,
seed 0) with the same optimizer (SGD, lr 0.05, momentum 0.9, batch 32) for the
same epochs on A, then on B: ``none`` (plain fit), ``ewc`` (consolidated on A's
training set, λ below), ``rehearsal`` (a 200-sample reservoir buffer filled
during A's fit, replay_ratio 1: half of every B batch is replayed); ``joint``
(the upper bound) trains once on A ∪ B for the epochs of both. The table gives
test accuracy on A before B, on A after B, on B, and the wall time of B's
training (for joint: of its one fit), after a warm-up fit (Numba compiles then).
"""

import argparse
import time

import numpy as np

EPOCHS = 15
LR, MOMENTUM, BATCH = 0.05, 0.9, 32
HIDDEN = 512
EWC_LAMBDA = 3000.0  # the largest of a sweep (1500, 3000) stable with this lr: lr·λ·max F < 2(1 + momentum)
BUFFER = 200


def splits(dtype):
    """{setting: ((XA_tr, yA_tr, XA_te, yA_te), (XB_tr, yB_tr, XB_te, yB_te))}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(dtype)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    perm = np.random.default_rng(0).permutation(X.shape[1])
    domain = ((X_tr, y_tr, X_te, y_te), (X_tr[:, perm], y_tr, X_te[:, perm], y_te))
    a_tr, a_te = y_tr < 5, y_te < 5
    classes = ((X_tr[a_tr], y_tr[a_tr], X_te[a_te], y_te[a_te]),
               (X_tr[~a_tr], y_tr[~a_tr], X_te[~a_te], y_te[~a_te]))
    return {"domain": domain, "class": classes}


def _network(dtype):
    import fastbp as fb

    net = fb.Network([fb.Dense(64, HIDDEN, "relu"), fb.Dense(HIDDEN, 10)], loss="softmax_cross_entropy",
                     dtype=dtype, seed=0)
    return net, fb.SGD(net, lr=LR, momentum=MOMENTUM)


def _accuracy(net, X, y):
    return 100.0 * float(np.mean(net.predict_classes(X) == y))


def run(setting, task_a, task_b, method, dtype):
    """(acc A before B, acc A after B, acc B, seconds of B's training) for one method."""
    import fastbp as fb

    (XA, yA, XA_te, yA_te), (XB, yB, XB_te, yB_te) = task_a, task_b
    net, opt = _network(dtype)
    fit = dict(optimizer=opt, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    if method == "joint":
        started = time.perf_counter()
        net.fit(np.concatenate([XA, XB]), np.concatenate([yA, yB]), **dict(fit, epochs=2 * EPOCHS))
        seconds = time.perf_counter() - started
        before = _accuracy(net, XA_te, yA_te)
        return before, before, _accuracy(net, XB_te, yB_te), seconds
    guard = {"none": None, "ewc": fb.EWC(lam=EWC_LAMBDA), "rehearsal": fb.Rehearsal(BUFFER)}[method]
    net.fit(XA, yA, guard=guard, **fit)
    if method == "ewc":
        guard.consolidate(net, XA, yA)
    before = _accuracy(net, XA_te, yA_te)
    started = time.perf_counter()
    net.fit(XB, yB, guard=guard, **fit)
    seconds = time.perf_counter() - started
    return before, _accuracy(net, XA_te, yA_te), _accuracy(net, XB_te, yB_te), seconds


METHODS = ("none", "ewc", "rehearsal", "joint")


def main(argv=None):
    import fastbp as fb

    parser = argparse.ArgumentParser(prog="python -m fastbp.bench forgetting", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=fb.available_backends(), default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    if args.backend:
        fb.set_backend(args.backend)
    if args.threads:
        fb.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    data = splits(dtype)
    run("domain", data["domain"][0], data["domain"][1], "ewc", dtype)  # warm-up: JIT, workspaces
    print(f"backend {fb.get_backend()}, {fb.get_num_threads()} thread(s), {dtype}, "
          f"64-{HIDDEN}-10 relu, SGD lr {LR} momentum {MOMENTUM}, batch {BATCH}, {EPOCHS} epochs per task; "
          f"EWC λ {EWC_LAMBDA}; rehearsal buffer {BUFFER}, replay_ratio 1")
    print(f"{'split':<20} {'method':<10} {'A before B':>10} {'A after B':>10} {'B':>7} {'train s':>8}")
    for setting, label in (("domain", "domain-incremental"), ("class", "class-incremental")):
        task_a, task_b = data[setting]
        for method in METHODS:
            before, after, acc_b, seconds = run(setting, task_a, task_b, method, dtype)
            print(f"{label:<20} {method:<10} {before:>9.1f}% {after:>9.1f}% {acc_b:>6.1f}% {seconds:>8.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
