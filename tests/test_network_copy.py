"""Copies of a Network (pickle, deepcopy, joblib's process workers) own their buffers and train."""

import copy
import pickle

import numpy as np
import pytest

import fastbp as fb


def _data(n=120, n_features=6, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features)).astype(np.float32)
    return X, rng.integers(0, n_classes, n)


def _network(loss="softmax_cross_entropy", n_out=3, seed=0):
    return fb.Network([fb.Dense(6, 8, "tanh"), fb.Dense(8, n_out)], loss=loss, seed=seed)


def _assert_views_of(net):
    for layer in net.layers:
        for _, param, grad in layer.parameters():
            assert np.shares_memory(param, net.params)
            assert np.shares_memory(grad, net.grads)


COPIES = {
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", list(COPIES))
def test_copy_trains_like_the_original(how):
    X, y = _data()
    original = _network()
    original.fit(X[:30], y[:30], epochs=1, verbose=0)  # workspaces and gathered buffers exist
    twin = COPIES[how](original)
    _assert_views_of(twin)
    assert not np.shares_memory(twin.params, original.params)
    np.testing.assert_array_equal(twin.predict(X), original.predict(X))

    before = twin.predict(X)
    twin.fit(X, y, epochs=5, verbose=0)
    original.fit(X, y, epochs=5, verbose=0)  # same seed state: the same run bit for bit
    after = twin.predict(X)
    assert not np.array_equal(after, before), "the copy's predictions did not change when it trained"
    np.testing.assert_array_equal(after, original.predict(X))
    np.testing.assert_array_equal(twin.params, original.params)


@pytest.mark.parametrize("how", list(COPIES))
def test_copy_with_its_optimizer_keeps_them_together(how):
    X, y = _data()
    net = _network()
    opt = fb.Adam(net, lr=1e-2)
    net.fit(X, y, optimizer=opt, epochs=2, verbose=0)
    net2, opt2 = COPIES[how]((net, opt))
    assert opt2.params is net2.params and opt2.grads is net2.grads
    assert opt2.state.step == opt.state.step
    net2.fit(X, y, optimizer=opt2, epochs=2, verbose=0)
    net.fit(X, y, optimizer=opt, epochs=2, verbose=0)
    np.testing.assert_array_equal(net2.params, net.params)


def test_save_after_copy_writes_the_trained_weights(tmp_path):
    X, y = _data()
    net = copy.deepcopy(_network())
    net.fit(X, y, epochs=3, verbose=0)
    net.save(tmp_path / "net.npz")
    loaded = fb.load(tmp_path / "net.npz")
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_copy_of_a_recurrent_network_is_bound():
    net = fb.Network([fb.RNN(3, 5), fb.Dense(5, 2)], loss="mse", seed=1)
    twin = pickle.loads(pickle.dumps(net))
    _assert_views_of(twin)
    X = np.random.default_rng(0).standard_normal((4, 7, 3))
    np.testing.assert_array_equal(twin.predict(X), net.predict(X))


def test_joblib_process_workers_train_their_copy():
    joblib = pytest.importorskip("joblib")
    X, y = _data()

    def train(net):
        net.fit(X, y, epochs=3, verbose=0)
        return net

    nets = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(train)(_network(seed=s)) for s in (0, 1))
    for seed, net in zip((0, 1), nets):
        _assert_views_of(net)
        here = train(_network(seed=seed))
        np.testing.assert_array_equal(net.predict(X), here.predict(X))


def test_predict_classes_with_one_output_is_one_label_per_sample():
    X, y = _data(n_classes=2)
    net = _network(loss="binary_cross_entropy", n_out=1)
    net.fit(X, y, epochs=20, verbose=0)
    labels = net.predict_classes(X)
    assert labels.shape == (X.shape[0],)
    np.testing.assert_array_equal(labels, (net.predict(X)[:, 0] > 0.5).astype(np.int64))
    assert 0.0 < np.mean(labels == y) <= 1.0
