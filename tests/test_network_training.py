"""fit's pieces: early stopping, learning-rate schedules, callbacks, verbosity, the CLI."""

import math

import numpy as np
import pytest

import fastbp as fb
from fastbp.schedules import CosineDecay, ExponentialDecay, StepDecay


def regression(seed=0, n=60):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, np.sin(X @ np.array([[1.0], [-1.0], [0.5]]))


def make_net():
    return fb.Network([fb.Dense(3, 8, "tanh"), fb.Dense(8, 1)], loss="mse", dtype=np.float64, seed=0)


def test_schedules_follow_torch_formulas():
    step = StepDecay(step_size=3, gamma=0.5)
    assert [step(e, 1.0) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cosine = CosineDecay(T_max=4, eta_min=0.1)
    assert cosine(0, 1.0) == 1.0 and cosine(4, 1.0) == pytest.approx(0.1) and cosine(9, 1.0) == pytest.approx(0.1)
    assert cosine(2, 1.0) == pytest.approx(0.55)
    assert ExponentialDecay(0.9)(2, 1.0) == pytest.approx(0.81)
    with pytest.raises(ValueError, match="step_size must be an integer >= 1"):
        StepDecay(0)
    with pytest.raises(ValueError, match="Invalid gamma"):
        StepDecay(1, gamma=-0.5)


def test_schedule_sets_the_learning_rate_each_epoch(backend):
    X, y = regression()
    net = make_net()
    opt = fb.SGD(net, lr=0.1)
    history = net.fit(X, y, optimizer=opt, epochs=5, batch_size=None, verbose=0,
                      lr_schedule=StepDecay(step_size=2, gamma=0.1))
    np.testing.assert_allclose(history["lr"], [0.1, 0.1, 0.01, 0.01, 0.001])
    assert opt.lr == 0.1  # restored for the next fit
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    torch_opt = torch.optim.SGD([param], lr=0.1)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch_opt, T_max=5, eta_min=0.01)
    lrs = []
    for _ in range(5):
        lrs.append(torch_opt.param_groups[0]["lr"])
        torch_opt.step()
        torch_sched.step()
    history = net.fit(X, y, optimizer=opt, epochs=5, verbose=0, lr_schedule=CosineDecay(T_max=5, eta_min=0.01))
    np.testing.assert_allclose(history["lr"], lrs, rtol=1e-12)


def test_early_stopping_restores_the_best_weights(backend):
    X, y = regression(0)
    X_val, y_val = regression(1, n=30)
    net = make_net()
    seen = {}

    def remember(network, epoch, logs):  # a plain callback: record each epoch's weights
        seen[epoch] = (logs["val_loss"], network.params.copy())

    stopper = fb.EarlyStopping(patience=3)
    # a learning rate large enough that the validation loss wanders
    history = net.fit(X, y, optimizer=fb.SGD(net, lr=0.3, momentum=0.9), epochs=200, batch_size=4,
                      validation_data=(X_val, y_val), verbose=0, callbacks=[remember, stopper])
    n_epochs = len(history["val_loss"])
    assert stopper.stopped_epoch == n_epochs - 1 < 199
    assert n_epochs - 1 - stopper.best_epoch == 3
    best = min(seen, key=lambda e: seen[e][0])
    assert best == stopper.best_epoch
    np.testing.assert_array_equal(net.params, seen[best][1])
    assert net.evaluate(X_val, y_val) == pytest.approx(min(history["val_loss"]))


def test_a_callback_returning_true_stops_training(backend):
    X, y = regression()
    epochs = []
    history = make_net().fit(X, y, epochs=10, verbose=0,
                             callbacks=[lambda net, epoch, logs: epochs.append(epoch) or epoch == 2])
    assert epochs == [0, 1, 2] and len(history["loss"]) == 3
    assert set(history) == {"loss", "lr", "samples_per_sec"}


def test_history_has_one_entry_per_epoch(backend):
    X, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 3
    net = fb.Network([fb.Dense(4, 3)], loss="softmax_cross_entropy", dtype=np.float32, seed=0)
    history = net.fit(X, y, epochs=4, batch_size=8, validation_data=(X, y), verbose=0)
    assert set(history) == {"loss", "lr", "samples_per_sec", "val_loss", "val_accuracy"}
    assert all(len(v) == 4 for v in history.values())
    assert all(math.isfinite(v) and v > 0 for v in history["samples_per_sec"])


def test_verbosity(backend, capsys):
    X, y = regression()
    make_net().fit(X, y, epochs=2, validation_data=(X, y), verbose=0)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    make_net().fit(X, y, epochs=2, validation_data=(X, y), verbose=1)
    out, err = capsys.readouterr()
    assert "Epoch 2/2" in err and "val_loss" in err and "samples/s" in err
    make_net().fit(X, y, epochs=2, verbose=2)
    out, err = capsys.readouterr()
    assert out.count("\n") == 2 and "Epoch 1/2: loss=" in out


def test_cli_trains_and_saves(backend, threads, tmp_path, capsys):  # threads: restores the count
    pytest.importorskip("sklearn")
    from fastbp.cli import main

    path = tmp_path / "digits.npz"
    assert main(["--epochs", "12", "--layers", "64", "--backend", backend, "--threads", "1", "--lr", "3e-3",
                 "--out", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy: ")[1].split("%")[0])
    assert accuracy >= 96.0
    assert "samples/s" in out and path.exists()
    assert fb.load(path).layers[0].n_out == 64
