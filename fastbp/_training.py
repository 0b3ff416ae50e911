"""The training loop of ``Network.fit``: argument checks, row gathering, the
epoch loop, progress reporting and callbacks, each a function of its own.

Hot path: the arguments are checked and X, y converted once; each epoch
fetches the backend and thread count once (``fastbp._backend.runtime``) and
calls the kernels on preallocated buffers: no per-step checks, no per-step
allocations. When it shuffles, ``fit`` gathers the rows of several batches per
call (about 1 MB of X and y) into one pair of buffers kept on the network,
and trains on slices of them.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import _backend
from ._interrupt import DeferredInterrupt
from ._kernels import registry as _registry
from . import continual as _continual
from .optim import Adam, Optimizer

GATHER_BYTES = 1 << 20  # about this much of X and y gathered per np.take when fit shuffles
GATHER_MAX_ROWS = 4096


class NonFinite(ArithmeticError):
    """Raised by a training step, before its update, when the loss or a gradient is not finite."""


def check_count(name, value, allow_none=False):
    """``value`` as an int >= 1 (or None when allowed); TypeError/ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer{' or None' if allow_none else ''}, got {value!r}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------- one step
def train_step(net, ws, x, y, loss_kernel, optimizer, backend, n_threads):
    """One step on a batch: forward, loss, backward, update. Allocates nothing.

    Returns the batch loss. Raises ``NonFinite`` if the loss, a gradient or an
    updated weight is not finite, with the weights as they were before the step.
    """
    if net._stack is not None:  # a stack of Dense layers: one kernel call for forward, loss, backward
        loss = backend.mlp_loss_and_grad(x, y, _registry.LOSS_KERNEL_ID[loss_kernel], *net._stack,
                                         net.params, net.grads, *ws.flat, n_threads)
    else:
        net._forward(ws, x, backend, n_threads)
        loss = net._loss(ws, y, loss_kernel, backend, n_threads)
        net._backward(ws, x, backend, n_threads)
    if not math.isfinite(loss):
        raise NonFinite(f"the training loss became non-finite ({loss})")
    try:
        optimizer.step()  # checked: writes nothing if a gradient or a new value is not finite
    except FloatingPointError:
        if not backend.all_finite(net.grads, n_threads):  # one pass over the bits, no BLAS threads
            raise NonFinite(f"a gradient became non-finite (loss {loss})") from None
        raise NonFinite(f"the update made a weight or the optimizer state non-finite (loss {loss})") from None
    return loss


# ---------------------------------------------------------------- gathering shuffled rows
def gather_rows(X, y, batch_size):
    """Rows fit gathers per call when it shuffles: whole batches, about GATHER_BYTES of them.

    One np.take per batch cost ~1.5 us of overhead each for X and y, as much as
    a small network's whole step; per chunk it is paid once for many batches.
    """
    row_bytes = X[:1].nbytes + y[:1].nbytes
    rows = min(GATHER_MAX_ROWS, max(1, GATHER_BYTES // row_bytes))
    return batch_size * max(1, rows // batch_size)


def gather_buffers(net, X, y, rows):
    """(x, y) buffers for ``rows`` gathered rows of X and y, kept on the network between fits."""
    shape_x, shape_y = (rows,) + X.shape[1:], (rows,) + y.shape[1:]
    buffers = net._gather
    if buffers is None or buffers[0].shape != shape_x or buffers[1].shape != shape_y \
            or buffers[1].dtype != y.dtype:
        buffers = net._gather = (np.empty(shape_x, net.dtype), np.empty(shape_y, y.dtype))
    return buffers


# ---------------------------------------------------------------- checks
class FitArguments:
    """fit's arguments, checked and converted, all before any weight changes."""

    def __init__(self, net, X, y, optimizer, epochs, batch_size, validation_data, verbose, callbacks,
                 lr_schedule, initial_epoch, guard=None):
        self.guard = _continual.check_guard(guard)
        self.X = X = net._check_X(X)
        self.n_samples = n_samples = X.shape[0]
        self.y, self.loss_kernel = net._check_y(y, n_samples, n_steps=net._n_steps(X))
        self.epochs = check_count("epochs", epochs)
        if isinstance(initial_epoch, (bool, np.bool_)) or not hasattr(initial_epoch, "__index__"):
            raise TypeError(f"initial_epoch must be an integer, got {initial_epoch!r}")
        if int(initial_epoch) < 0:
            raise ValueError(f"initial_epoch must be >= 0, got {initial_epoch}")
        self.initial_epoch = int(initial_epoch)
        batch_size = check_count("batch_size", batch_size, allow_none=True)
        self.batch_size = n_samples if batch_size is None else min(batch_size, n_samples)
        if verbose not in (0, 1, 2) or isinstance(verbose, float):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.verbose = verbose
        if optimizer is None:
            optimizer = Adam(net)
        elif not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastbp optimizer (fb.Adam(net), ...), got {type(optimizer).__name__}")
        if optimizer.params is not net.params or optimizer.grads is not net.grads:
            raise ValueError("the optimizer was built on other parameters; build it with this network: fb.Adam(net)")
        self.optimizer = optimizer
        self.validation = None
        if validation_data is not None:
            try:
                X_val, y_val = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a pair (X_val, y_val)") from None
            X_val = net._check_X(X_val, "X_val")
            y_val, val_kernel = net._check_y(y_val, X_val.shape[0], "y_val", net._n_steps(X_val))
            self.validation = (X_val, y_val, val_kernel)
        callbacks = [] if callbacks is None else list(callbacks) if not callable(callbacks) else [callbacks]
        for cb in callbacks:
            if not callable(cb):
                raise TypeError(f"each callback must be callable as callback(network, epoch, logs), got {cb!r}")
        self.callbacks = callbacks
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule must be callable as lr_schedule(epoch, base_lr), got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.metrics = ["loss", "lr", "samples_per_sec"]
        if self.validation is not None:
            self.metrics.append("val_loss")
            if net.loss != "mse":
                self.metrics.append("val_accuracy")


# ---------------------------------------------------------------- progress and callbacks
def _postfix(logs):
    shown = {"loss": logs["loss"]}
    for name in ("val_loss", "val_accuracy"):
        if name in logs:
            shown[name] = logs[name]
    shown["samples/s"] = logs["samples_per_sec"]
    return {k: (round(v) if k == "samples/s" and math.isfinite(v) else float(f"{v:.4g}"))
            for k, v in shown.items()}


class Progress:
    """verbose=1: a tqdm bar per epoch; verbose=2: one line per epoch; 0: nothing."""

    def __init__(self, verbose, n_samples, last_epoch):
        self.verbose, self.n_samples, self.last_epoch = verbose, n_samples, last_epoch
        self.bar = None
        if verbose == 1:
            from tqdm.auto import tqdm
            self._tqdm = tqdm

    def start_epoch(self, epoch):
        if self.verbose == 1:
            self.bar = self._tqdm(total=self.n_samples, desc=f"Epoch {epoch + 1}/{self.last_epoch}",
                                  unit="sample", leave=True, dynamic_ncols=True)

    def update(self, rows):
        if self.bar is not None:
            self.bar.update(rows)

    def end_epoch(self, epoch, logs):
        if self.bar is not None:
            self.bar.set_postfix(_postfix(logs), refresh=False)
            self.close()
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.last_epoch}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in _postfix(logs).items()), flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def callbacks_begin(net, args):
    for cb in args.callbacks:
        if hasattr(cb, "set_optimizer"):
            cb.set_optimizer(args.optimizer)
        if hasattr(cb, "on_train_begin"):
            cb.on_train_begin(net, tuple(args.metrics))


def callbacks_epoch_end(net, args, epoch, logs):
    """Run every callback (each one, even after one asked to stop); whether training should stop."""
    stop_training = False
    for cb in args.callbacks:
        stop_training = bool(cb(net, epoch, logs)) or stop_training
    return stop_training


def callbacks_end(net, args):
    for cb in args.callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(net)


# ---------------------------------------------------------------- the loop
class _Batches:
    """The epoch's batches: the workspaces (at most two batch sizes, each made once) and the gathered rows."""

    def __init__(self, net, args, shuffle):
        X, y, n_samples, batch_size = args.X, args.y, args.n_samples, args.batch_size
        self.gather = shuffle and batch_size != n_samples  # a full batch's loss does not depend on row order
        sizes = {batch_size, n_samples % batch_size or batch_size}
        # Rehearsal: each batch of b new rows gets replay_rows(b) buffered rows appended (mixed here)
        self.replay = args.guard if isinstance(args.guard, _continual.Rehearsal) and args.guard.n_kept else None
        self.extra = {size: self.replay.replay_rows(size) if self.replay else 0 for size in sizes}
        self.workspaces = {size: net._workspace((size + self.extra[size],) + X.shape[1:]) for size in sizes}
        if self.replay is not None:
            rows = max(size + self.extra[size] for size in sizes)
            self.mixed = (np.empty((rows,) + X.shape[1:], net.dtype), np.empty((rows,) + y.shape[1:], y.dtype))
        self.chunk = n_samples
        if self.gather:  # shuffled rows are gathered several batches at a time
            self.chunk = gather_rows(X, y, batch_size)
            self.gather_x, self.gather_y = gather_buffers(net, X, y, self.chunk)

    def __call__(self, net, args, order):
        """Yield (start, stop, workspace, x, y) for every batch of the epoch, rows ``order`` when gathering."""
        X, y, n_samples, batch_size = args.X, args.y, args.n_samples, args.batch_size
        for chunk_start in range(0, n_samples, self.chunk):
            chunk_stop = min(chunk_start + self.chunk, n_samples)
            if self.gather:
                idx = order[chunk_start:chunk_stop]
                xs = np.take(X, idx, axis=0, out=self.gather_x[:idx.size], mode="clip")  # clip: unbuffered
                ys = np.take(y, idx, axis=0, out=self.gather_y[:idx.size], mode="clip")
                offset = chunk_start
            else:
                xs, ys, offset = X, y, 0
            for start in range(chunk_start, chunk_stop, batch_size):
                stop = min(start + batch_size, n_samples)
                x, t = xs[start - offset:stop - offset], ys[start - offset:stop - offset]
                extra = self.extra[stop - start]
                if extra:
                    rows = stop - start + extra
                    x, t = self.mixed[0][:rows], self.mixed[1][:rows]
                    self.replay.mix(net, xs[start - offset:stop - offset], ys[start - offset:stop - offset], x, t)
                yield start, stop, self.workspaces[stop - start], x, t


def _run_epoch(net, args, batches, epoch, progress, interrupt):
    """Train one epoch; the logs of its end (loss, lr, samples/s, validation)."""
    optimizer = args.optimizer
    order = net._rng.permutation(args.n_samples) if batches.gather else None
    progress.start_epoch(epoch)
    backend, n_threads = _backend.runtime()
    started = time.perf_counter()
    total = 0.0
    for step, (start, stop, ws, x, y) in enumerate(batches(net, args, order), 1):
        try:
            loss = train_step(net, ws, x, y, args.loss_kernel, optimizer, backend, n_threads)
        except NonFinite as exc:
            raise FloatingPointError(
                f"{exc} at epoch {epoch + 1}, step {step} (batch of samples "
                f"{start}..{stop - 1}); training stopped and the weights are those before "
                f"that step. Try a smaller learning rate or gradient clipping."
            ) from None
        interrupt.check()  # Ctrl-C lands here, between whole steps
        total += loss * (stop - start)  # with rehearsal: the loss of the mixed batch
        progress.update(stop - start)
    elapsed = time.perf_counter() - started
    return {"loss": total / args.n_samples, "lr": optimizer.lr,
            "samples_per_sec": args.n_samples / elapsed if elapsed > 0 else math.inf}


def _validate(net, args, logs):
    if args.validation is not None:
        X_val, y_val, val_kernel = args.validation
        logs["val_loss"] = net._evaluate(X_val, y_val, val_kernel)
        if "val_accuracy" in args.metrics:
            logs["val_accuracy"] = net._val_accuracy(X_val, y_val)


def fit(net, X, y, optimizer, epochs, batch_size, shuffle, validation_data, verbose, callbacks, lr_schedule,
        initial_epoch, guard=None):
    """``Network.fit``: see its docstring."""
    args = FitArguments(net, X, y, optimizer, epochs, batch_size, validation_data, verbose, callbacks,
                        lr_schedule, initial_epoch, guard)
    if args.guard is not None:  # its checks, before any weight changes
        args.guard.begin_fit(net, args)
    try:
        history = _fit_loop(net, args, shuffle)
    finally:
        if args.guard is not None:
            args.optimizer.penalty = None
    if args.guard is not None:
        args.guard.end_fit(net, args)
    return history


def _fit_loop(net, args, shuffle):
    optimizer = args.optimizer
    callbacks_begin(net, args)
    batches = _Batches(net, args, shuffle)
    net._cache = None
    history = {name: [] for name in args.metrics}
    base_lr = optimizer.lr
    last_epoch = args.initial_epoch + args.epochs
    progress = Progress(args.verbose, args.n_samples, last_epoch)
    interrupt = DeferredInterrupt()
    interrupt.install()
    try:
        for epoch in range(args.initial_epoch, last_epoch):
            if args.lr_schedule is not None:
                optimizer.lr = args.lr_schedule(epoch, base_lr)
            logs = _run_epoch(net, args, batches, epoch, progress, interrupt)
            net._trained = True  # continual.EWC.consolidate needs a trained network
            optimizer.lr = base_lr  # between epochs: what a checkpoint must store
            _validate(net, args, logs)
            for name in args.metrics:
                history[name].append(logs[name])
            progress.end_epoch(epoch, logs)
            stop_training = callbacks_epoch_end(net, args, epoch, logs)
            interrupt.check()
            if stop_training:
                break
    finally:
        interrupt.uninstall()
        progress.close()
        optimizer.lr = base_lr
    interrupt.check()  # one recorded after the last check
    callbacks_end(net, args)
    return history
