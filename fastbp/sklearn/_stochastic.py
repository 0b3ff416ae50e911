"""solver="sgd" and "adam": scikit-learn's epochs, batches, schedules and stopping rules on fastbp.

Each batch is one ``Objective`` call (fastbp's compiled loss and gradient) and
one step of a fastbp optimizer (one fused kernel over the flat parameters).
The rules are scikit-learn's (``_fit_stochastic`` in its
``_multilayer_perceptron.py``): shuffle the rows each epoch with
``random_state``, batches of ``batch_size`` rows, ``loss_`` the mean over the
epoch of the batch losses with their penalties, ``invscaling`` and
``adaptive`` learning rates for sgd, stopping after ``n_iter_no_change``
epochs without an improvement of ``tol`` of the training loss or, with
``early_stopping``, of the validation score, whose best weights are restored.

A ``guard`` (``guard_``, the estimator's copy) acts through the hooks
``Network.fit`` calls (``begin_fit``/``end_fit`` of fastbp.continual): EWC's
penalty sits on the optimizer only while the fit runs; with a Rehearsal
holding samples, each batch of b rows gets ``replay_rows(b)`` buffered rows
appended by ``Rehearsal.mix``, each of sample weight 1 (``class_weight`` is
not applied to them), and ``loss_`` is then the mixed batches' loss.
"""

import math
import types
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from .. import continual as _continual
from ..optim import SGD, Adam


class StochasticSolvers:
    """The stochastic solvers of BaseMLP (a mixin: it reads the estimator's parameters)."""

    def _make_optimizer(self, incremental):
        """The fastbp optimizer: kept across warm-started fits and partial_fit (its state too)."""
        net = self._network
        optimizer = self.__dict__.get("_optimizer")
        kind = SGD if self.solver == "sgd" else Adam
        if type(optimizer) is not kind or optimizer.params is not net.params:
            optimizer = None
        if optimizer is None:
            if self.solver == "sgd":
                optimizer = SGD(net, lr=self.learning_rate_init, momentum=self.momentum,
                                nesterov=self.nesterovs_momentum and self.momentum > 0)
            else:
                optimizer = Adam(net, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                                 eps=self.epsilon)
        elif not incremental:  # a warm-started fit: the current hyperparameters, the state kept
            optimizer.lr = self.learning_rate_init
            if self.solver == "sgd":
                optimizer.momentum = float(self.momentum)
                optimizer.nesterov = bool(self.nesterovs_momentum and self.momentum > 0)
            else:
                optimizer.betas, optimizer.eps = (float(self.beta_1), float(self.beta_2)), float(self.epsilon)
        self._optimizer = optimizer
        return optimizer

    def _validation_split(self, X, y, targets, sample_weight):
        """scikit-learn's early-stopping split: (train part, validation part), validation labels as y."""
        stratify = y if self._is_classifier() and self.n_outputs_ == 1 else None
        arrays = [X, y, targets] + ([] if sample_weight is None else [sample_weight])
        split = train_test_split(*arrays, random_state=self._random_state,
                                 test_size=self.validation_fraction, stratify=stratify)
        train, val = split[0::2], split[1::2]
        if val[0].shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                             "size of your dataset.")
        if sample_weight is None:
            train, val = train + [None], val + [None]
        return train, val

    def _fit_stochastic(self, objective, X, y, targets, sample_weight, incremental):
        optimizer = self._make_optimizer(incremental)
        early_stopping = self.early_stopping
        if early_stopping:
            if "_best_params" not in self.__dict__:  # restored at the end even if no epoch scores
                self._best_params = self._network.params.copy()
            (X, _, targets, sample_weight), (X_val, y_val, _, sw_val) = self._validation_split(
                X, y, targets, sample_weight)
        n_samples = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                              "clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        order = np.arange(n_samples)
        # The guard's hooks, as Network.fit calls them: EWC's penalty on the optimizer only while this
        # fit runs; Rehearsal's shape checks first and, after the fit, its samples offered to the buffer.
        guard = self.guard_
        guarded = types.SimpleNamespace(optimizer=optimizer, X=X, y=targets)
        if guard is not None:
            guard.begin_fit(self._network, guarded)
        replay = guard if isinstance(guard, _continual.Rehearsal) and guard.n_kept else None
        progress = None
        if self.verbose:
            from tqdm.auto import tqdm
            progress = tqdm(total=1 if incremental else self.max_iter, desc=type(self).__name__,
                            unit="epoch", dynamic_ncols=True)
        try:
            if not incremental:
                self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    self._random_state.shuffle(order)
                epoch_loss = self._epoch(objective, optimizer, X, targets, sample_weight, order, batch_size,
                                         replay)
                self.n_iter_ += 1
                self.loss_ = epoch_loss
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                self._update_no_improvement_count(early_stopping, X_val if early_stopping else None,
                                                  y_val if early_stopping else None,
                                                  sw_val if early_stopping else None)
                if progress is not None:
                    shown = {"loss": f"{self.loss_:.6g}"}
                    if early_stopping:
                        shown["val_score"] = f"{self.validation_scores_[-1]:.4g}"
                    progress.set_postfix(shown, refresh=False)
                    progress.update(1)
                if self.learning_rate == "invscaling" and self.solver == "sgd":
                    optimizer.lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    if not self._lower_learning_rate(optimizer, early_stopping):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                                  "the optimization hasn't converged yet.", ConvergenceWarning)
        finally:
            optimizer.penalty = None
            if progress is not None:
                progress.close()
        if early_stopping:
            np.copyto(self._network.params, self._best_params)
        if guard is not None:
            guard.end_fit(self._network, guarded)

    def _epoch(self, objective, optimizer, X, targets, sample_weight, order, batch_size, replay=None):
        """One pass over the rows of X in ``order``, batch by batch; returns scikit-learn's epoch loss.

        With ``replay`` (a fastbp.Rehearsal holding samples), each batch of b rows gets
        ``replay.replay_rows(b)`` buffered rows appended, each of sample weight 1.
        """
        n_samples = X.shape[0]
        # The batch's rows are gathered into buffers made once per epoch (mode="clip": unbuffered),
        # with room for the replayed rows after them.
        rows = batch_size + (replay.replay_rows(batch_size) if replay is not None else 0)
        gathered = [(a, np.empty((rows,) + a.shape[1:], a.dtype))
                    for a in (X, targets, sample_weight) if a is not None]
        total = 0.0
        for start in range(0, n_samples, batch_size):
            idx = order[start:start + batch_size]
            batch = [np.take(a, idx, axis=0, out=buf[:idx.size], mode="clip") for a, buf in gathered]
            if replay is not None:
                batch = self._mix_replay(replay, gathered, idx.size)
            data_loss, penalty = objective(*batch)
            if not math.isfinite(data_loss):
                raise ValueError("Solver produced non-finite parameter weights: the training loss "
                                 f"became {data_loss}. The input data may contain large values and "
                                 "need to be preprocessed.")
            try:
                optimizer.step()
            except FloatingPointError:
                raise ValueError("Solver produced non-finite parameter weights. The input data may "
                                 "contain large values and need to be preprocessed.") from None
            total += (objective.loss_factor * data_loss + penalty) * idx.size
        return total / n_samples

    def _mix_replay(self, replay, gathered, n_rows):
        """The batch's first ``n_rows`` gathered rows with replayed rows appended (in place in the buffers)."""
        extra = replay.replay_rows(n_rows)
        (_, x_buf), (_, t_buf) = gathered[:2]
        x, t = x_buf[:n_rows + extra], t_buf[:n_rows + extra]
        replay.mix(self._network, x[:n_rows], t[:n_rows], x, t)  # x[:n] := x[:n] (a no-op), then k rows
        batch = [x, t]
        if len(gathered) == 3:  # sample weights: the replayed rows weigh 1
            sw = gathered[2][1][:n_rows + extra]
            sw[n_rows:] = 1.0
            batch.append(sw)
        return batch

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, sw_val):
        """scikit-learn's rule: count epochs that do not improve the loss (or validation score) by tol."""
        if early_stopping:
            score = self._score(X_val, y_val, sw_val)
            self.validation_scores_.append(score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = self._network.params.copy()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _lower_learning_rate(self, optimizer, early_stopping):
        """After n_iter_no_change epochs without progress: divide the lr by 5 ('adaptive' sgd) or stop.

        Returns whether training goes on.
        """
        what = "Validation score did not improve" if early_stopping else "Training loss did not improve"
        msg = f"{what} more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
        if self.solver != "sgd" or self.learning_rate != "adaptive" or optimizer.lr <= 1e-6:
            if self.verbose:
                print(msg + (" Learning rate too small." if optimizer.lr <= 1e-6 else "") + " Stopping.")
            return False
        optimizer.lr /= 5.0
        if self.verbose:
            print(msg + f" Setting learning rate to {optimizer.lr:f}")
        return True
