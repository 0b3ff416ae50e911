"""Bad input to Network and fit: a clear TypeError/ValueError, raised before any weight changes."""

import numpy as np
import pytest

import fastbp as fb


def make_net(loss="softmax_cross_entropy", n_out=3):
    return fb.Network([fb.Dense(4, 5, "relu"), fb.Dense(5, n_out)], loss=loss, dtype=np.float64, seed=0)


X = np.random.default_rng(0).random((10, 4))
Y = np.arange(10) % 3

FIT_CASES = [
    (dict(X=X[:, :3]), ValueError, "X has 3 features but the network expects 4"),
    (dict(X=X[0]), ValueError, r"X must be 2-D .* got shape \(4,\); for one sample use X.reshape\(1, -1\)"),
    (dict(X=X[:0], y=Y[:0]), ValueError, "X is empty"),
    (dict(X=np.array([["a"] * 4] * 10)), TypeError, "X must be numeric, got dtype <U1"),
    (dict(X=X.astype(object)), TypeError, "X must be numeric, got dtype object"),
    (dict(X=np.where(np.eye(10, 4) > 0, np.nan, X)), ValueError, "X contains NaN or infinity"),
    (dict(X=np.where(np.eye(10, 4) > 0, np.inf, X)), ValueError, "X contains NaN or infinity"),
    (dict(y=Y[:9]), ValueError, "y has shape \\(9,\\) but X has 10 samples"),
    (dict(y=Y + 1), ValueError, r"class indices must lie in \[0, 3\) .* got values in \[1, 3\]"),
    (dict(y=Y - 1), ValueError, r"class indices must lie in \[0, 3\)"),
    (dict(y=Y + 0.5), ValueError, "class indices must be integers"),
    (dict(y=np.where(Y > 1, np.nan, Y)), ValueError, "y contains NaN or infinity"),
    (dict(y=np.eye(3)[Y][:, :2]), ValueError, r"y has shape \(10, 2\) but the network has 3 outputs"),
    (dict(y=np.array(["a"] * 10)), TypeError, "y must be numeric"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an integer or None"),
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(verbose=3), ValueError, "verbose must be 0, 1 or 2"),
    (dict(validation_data=(X[:, :3], Y)), ValueError, "X_val has 3 features"),
    (dict(validation_data=(X, Y[:3])), ValueError, "y_val has shape"),
    (dict(validation_data=X), TypeError, "validation_data must be a pair"),
    (dict(callbacks=[1]), TypeError, "each callback must be callable"),
    (dict(lr_schedule=0.1), TypeError, "lr_schedule must be callable"),
    (dict(optimizer="adam"), TypeError, "optimizer must be a fastbp optimizer"),
    (dict(optimizer=fb.Adam(make_net())), ValueError, "the optimizer was built on other parameters"),
    (dict(callbacks=[fb.EarlyStopping()]), ValueError, "EarlyStopping monitors 'val_loss'.*pass validation_data"),
]


@pytest.mark.parametrize("kwargs,error,message", FIT_CASES)
def test_fit_rejects_bad_input_before_changing_weights(backend, kwargs, error, message):
    net = make_net()
    before = net.params.copy()
    args = dict(X=X, y=Y, verbose=0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        net.fit(args.pop("X"), args.pop("y"), **args)
    np.testing.assert_array_equal(net.params, before)


@pytest.mark.parametrize("loss,y,message", [
    ("binary_cross_entropy", np.full((10, 1), 1.5), r"targets must lie in \[0, 1\]"),
    ("binary_cross_entropy", np.zeros((10, 2)), r"y has shape \(10, 2\) but the network has 1 outputs"),
    ("mse", np.zeros(10) + np.inf, "y contains NaN or infinity"),
])
def test_bad_targets_for_other_losses(backend, loss, y, message):
    net = make_net(loss, n_out=1)
    with pytest.raises(ValueError, match=message):
        net.fit(X, y, verbose=0)


def test_probability_rows_must_be_nonnegative(backend):
    with pytest.raises(ValueError, match="non-negative probabilities"):
        make_net().fit(X, -np.eye(3)[Y], verbose=0)


def test_network_construction_errors():
    with pytest.raises(ValueError, match="unknown activation 'swish'; known activations: identity, step"):
        fb.Dense(3, 4, activation="swish")
    with pytest.raises(ValueError, match="unknown init 'orthogonal'; known initialisers: auto, he_uniform"):
        fb.Dense(3, 4, init="orthogonal")
    with pytest.raises(ValueError, match="n_out must be >= 1"):
        fb.Dense(3, 0)
    with pytest.raises(TypeError, match="n_in must be an integer"):
        fb.Dense(3.0, 4)
    with pytest.raises(ValueError, match="layer sizes do not chain: layer 0 .* has 5 outputs but layer 1 .* "
                                         "expects 6 inputs"):
        fb.Network([fb.Dense(4, 5), fb.Dense(6, 2)])
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: mse, softmax_cross_entropy"):
        fb.Network([fb.Dense(4, 2)], loss="hinge")
    with pytest.raises(ValueError, match="activation 'softmax' but loss 'softmax_cross_entropy' takes logits"):
        fb.Network([fb.Dense(4, 2, "softmax")], loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="activation 'sigmoid' but loss 'binary_cross_entropy' takes logits"):
        fb.Network([fb.Dense(4, 1, "sigmoid")], loss="binary_cross_entropy")
    with pytest.raises(ValueError, match="softmax_cross_entropy needs at least 2 outputs"):
        fb.Network([fb.Dense(4, 1)], loss="softmax_cross_entropy")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        fb.Network([fb.Dense(4, 2)], dtype=np.int32)
    with pytest.raises(TypeError, match="layer 0 must be a fastbp.Dense"):
        fb.Network(["dense"])
    with pytest.raises(ValueError, match="at least one layer"):
        fb.Network([])
    layer = fb.Dense(4, 2)
    fb.Network([layer])
    with pytest.raises(ValueError, match="already belongs to a Network"):
        fb.Network([layer])
    fb.Network([fb.Dense(4, 2, "softmax")], loss="mse")  # softmax + mse is a valid pair


def test_backward_errors(backend):
    net = make_net()
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a forward\\(\\) first"):
        net.backward(Y)
    net.forward(X)
    with pytest.raises(ValueError, match="y has shape \\(4,\\) but X has 10 samples"):
        net.backward(Y[:4])
    with pytest.raises(ValueError, match="W must have shape \\(4, 5\\)"):
        net.layers[0].W = np.zeros((5, 4))


def test_non_finite_training_stops_with_epoch_and_step_and_keeps_weights(backend):
    """A huge learning rate blows up the weights; fit stops and leaves those before the failing step."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4))
    y = rng.standard_normal((32, 1))
    net = fb.Network([fb.Dense(4, 8, "relu"), fb.Dense(8, 1)], loss="mse", dtype=np.float32, seed=0)
    before_each_step = []

    class Recorder(fb.SGD):
        def step(self):
            before_each_step.append(self.params.copy())
            super().step()

    with pytest.raises(FloatingPointError, match=r"non-finite .* at epoch 1, step \d+ .* the weights are "
                                                 r"those before that step"):
        with np.errstate(all="ignore"):
            net.fit(X, y, optimizer=Recorder(net, lr=1e12), epochs=5, batch_size=8, shuffle=False, verbose=0)
    assert np.isfinite(net.params).all()
    np.testing.assert_array_equal(net.params, before_each_step[-1])


def test_non_finite_loss_is_caught_before_the_update(backend):
    net = fb.Network([fb.Dense(2, 1)], loss="mse", dtype=np.float32, seed=0)
    net.layers[0].W[...] = 3e38  # finite weights whose output overflows float32
    before = net.params.copy()
    with pytest.raises(FloatingPointError, match=r"training loss became non-finite .* at epoch 1, step 1"):
        with np.errstate(all="ignore"):
            net.fit(np.ones((4, 2)), np.zeros((4, 1)), optimizer=fb.SGD(net, lr=0.1), verbose=0)
    np.testing.assert_array_equal(net.params, before)
