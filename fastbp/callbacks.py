"""Callbacks for ``Network.fit``, and early stopping.

A callback is any callable ``callback(network, epoch, logs)``, called at the
end of every epoch (``epoch`` counts from 0) with ``logs``, the dict of that
epoch's metrics (``"loss"``, ``"val_loss"``, ``"val_accuracy"``, ``"lr"``,
``"samples_per_sec"``: those ``fit`` records). If it returns True, training
stops after this epoch. A callback may also define
``on_train_begin(network, metrics)``, called once before any weight changes
with the tuple of metric names ``fit`` will record (so it can reject a
missing metric early), and ``on_train_end(network)``, called when training
ends normally or stops early, and ``set_optimizer(optimizer)``, called first
with the optimizer ``fit`` trains with (as Keras's ``set_model``). While
callbacks run, ``optimizer.lr`` is the base learning rate (the schedule's
input), and ``epoch`` counts from ``fit``'s ``initial_epoch``.
"""

import math
import os

import numpy as np

__all__ = ["EarlyStopping", "ModelCheckpoint"]


class EarlyStopping:
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        Metric to watch, lower is better (default ``"val_loss"``, which needs
        ``validation_data``).
    patience : int >= 1
        Epochs without improvement after which training stops.
    min_delta : float >= 0
        An improvement must lower the best value by more than this.
    restore_best_weights : bool
        When training ends (stopped early or not), copy the weights of the best
        epoch back into the network.

    Attributes
    ----------
    best : float
        Best value seen.
    best_epoch : int or None
        Epoch (from 0) of the best value.
    stopped_epoch : int or None
        Epoch after which training stopped, None if it ran to the end.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=True):
        if isinstance(patience, bool) or not hasattr(patience, "__index__") or int(patience) < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        min_delta = float(min_delta)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = min_delta
        self.restore_best_weights = bool(restore_best_weights)
        self._best_params = None
        self._reset()

    def _reset(self):
        self.best = math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0

    def on_train_begin(self, network, metrics):
        if self.monitor not in metrics:
            hint = " (pass validation_data to fit)" if self.monitor.startswith("val_") else ""
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which fit does not record{hint}; "
                f"recorded metrics: {', '.join(metrics)}"
            )
        self._reset()
        params = network.parameters()[0]
        if self._best_params is None or self._best_params.shape != params.shape \
                or self._best_params.dtype != params.dtype:
            self._best_params = np.empty_like(params)

    def __call__(self, network, epoch, logs):
        value = logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            np.copyto(self._best_params, network.parameters()[0])
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, network):
        if self.restore_best_weights and self.best_epoch is not None:
            np.copyto(network.parameters()[0], self._best_params)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, restore_best_weights={self.restore_best_weights})")


class ModelCheckpoint:
    """Save the network with its optimizer's state every ``every`` epochs, or when it is the best yet.

    Each save is a checkpoint (``fb.save(net, path, optimizer=opt, epoch=epochs_done)``),
    written atomically (temporary file, then ``os.replace``): an interrupted save
    leaves the previous file whole. ``fb.load_checkpoint(path)`` resumes from it
    exactly (see ``Network.fit``'s ``initial_epoch``).

    Parameters
    ----------
    path : str or os.PathLike
        File to write. May hold ``{epoch}``, replaced by the number of epochs done
        (e.g. ``"ckpt-{epoch:03d}.npz"``) to keep one file per save; otherwise
        each save replaces the last.
    every : int >= 1
        Consider saving at the end of every ``every``-th epoch (epochs done a
        multiple of ``every``).
    save_best_only : bool
        Save only when ``monitor`` improved on the best value seen at the
        epochs considered, so the file holds the best epoch's weights.
    monitor : str
        Metric watched by ``save_best_only``, lower is better (default
        ``"val_loss"``, which needs ``validation_data``).
    min_delta : float >= 0
        An improvement must lower the best value by more than this.

    Attributes
    ----------
    best : float
        Best monitored value seen (with ``save_best_only``).
    best_epoch : int or None
        Epoch (from 0) of the last save with ``save_best_only``.
    saved : list of str
        Paths written, in order (a path repeats when it is replaced).
    """

    def __init__(self, path, every=1, save_best_only=False, monitor="val_loss", min_delta=0.0):
        path = os.fspath(path)
        try:
            path.format(epoch=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"path {path!r} may only hold the field {{epoch}}: {exc!r}") from None
        if isinstance(every, bool) or not hasattr(every, "__index__") or int(every) < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        min_delta = float(min_delta)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta}")
        self.path = path
        self.every = int(every)
        self.save_best_only = bool(save_best_only)
        self.monitor = monitor
        self.min_delta = min_delta
        self.optimizer = None
        self.saved = []
        self.best, self.best_epoch = math.inf, None

    def set_optimizer(self, optimizer):
        self.optimizer = optimizer

    def on_train_begin(self, network, metrics):
        if self.save_best_only and self.monitor not in metrics:
            hint = " (pass validation_data to fit)" if self.monitor.startswith("val_") else ""
            raise ValueError(
                f"ModelCheckpoint monitors {self.monitor!r}, which fit does not record{hint}; "
                f"recorded metrics: {', '.join(metrics)}"
            )
        self.best, self.best_epoch = math.inf, None

    def __call__(self, network, epoch, logs):
        done = epoch + 1
        if done % self.every:
            return False
        if self.save_best_only:
            value = logs[self.monitor]
            if not value < self.best - self.min_delta:
                return False
            self.best, self.best_epoch = value, epoch
        path = self.path.format(epoch=done)
        network.save(path, optimizer=self.optimizer, epoch=done if self.optimizer is not None else None)
        self.saved.append(path)
        return False

    def __repr__(self):
        return (f"ModelCheckpoint({self.path!r}, every={self.every}, save_best_only={self.save_best_only}, "
                f"monitor={self.monitor!r})")
