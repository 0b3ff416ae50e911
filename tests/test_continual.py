"""Continual learning (fastbp.continual): the Fisher diagonal, the fused EWC step, rehearsal,
persistence and bad input."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import kernels
from fastbp._kernels import reference as ref
from fastbp.continual import _fisher_per_sample, fisher_diagonal

from conftest import eps


def _data(rng, n, n_in=5, n_classes=3, dtype=np.float64):
    return rng.standard_normal((n, n_in)).astype(dtype), rng.integers(0, n_classes, n)


def _net(dtype, seed=0, hidden=7):
    return fb.Network([fb.Dense(5, hidden, "tanh"), fb.Dense(hidden, 3)], loss="softmax_cross_entropy",
                      dtype=dtype, seed=seed)


def _per_sample_fisher(net, X, y):
    """(1/n)·Σ_i g_i², g_i from a hand-written NumPy backward pass of sample i alone."""
    (l1, l2) = net.layers
    W1, b1, W2, b2 = (a.astype(np.float64) for a in (l1.W, l1.b, l2.W, l2.b))
    total = [np.zeros_like(a) for a in (W1, b1, W2, b2)]
    for x, t in zip(X.astype(np.float64), y):
        a1 = np.tanh(x @ W1 + b1)
        z2 = a1 @ W2 + b2
        p = np.exp(z2 - z2.max())
        p /= p.sum()
        d2 = p.copy()
        d2[t] -= 1
        d1 = (d2 @ W2.T) * (1 - a1 * a1)
        for acc, g in zip(total, (np.outer(x, d1), d1, np.outer(a1, d2), d2)):
            acc += g * g
    return np.concatenate([a.ravel() for a in total]) / X.shape[0]


@pytest.mark.parametrize("n_samples,batch_size", [(1, 256), (13, 4), (37, 256)])
def test_fisher_matches_per_sample_numpy(backend, dtype, rng, n_samples, batch_size):
    net = _net(dtype)
    X, y = _data(rng, n_samples, dtype=dtype)
    X_checked = net._check_X(X)
    y_checked, loss_kernel = net._check_y(y, n_samples)
    fisher = fisher_diagonal(net, X_checked, y_checked, loss_kernel, batch_size)
    assert fisher.dtype == dtype and fisher.shape == net.params.shape
    expected = _per_sample_fisher(net, X, y)
    np.testing.assert_allclose(fisher, expected, rtol=200 * eps(dtype), atol=200 * eps(dtype) * expected.max())
    # the per-sample path (recurrent layers take it) gives the same diagonal
    per_sample = np.zeros_like(net.params)
    _fisher_per_sample(net, X_checked, y_checked, loss_kernel, per_sample)
    np.testing.assert_allclose(per_sample / n_samples, expected, rtol=200 * eps(dtype),
                               atol=200 * eps(dtype) * expected.max())


def test_fisher_of_a_recurrent_network_is_per_sample(rng):
    net = fb.Network([fb.RNN(3, 4), fb.Dense(4, 2)], loss="softmax_cross_entropy", dtype=np.float64, seed=0)
    X, y = rng.standard_normal((5, 6, 3)), rng.integers(0, 2, 5)
    net.fit(X, y, epochs=1, verbose=0)
    ewc = fb.EWC(lam=1.0).consolidate(net, X, y)
    expected = np.zeros_like(net.params)
    for i in range(5):
        net.forward(X[i:i + 1])
        net.backward(y[i:i + 1])
        expected += net.grads ** 2
    np.testing.assert_allclose(ewc.fisher, expected / 5, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
@pytest.mark.parametrize("n", [1, 17, 40_000])
def test_fused_steps_match_reference(backend, dtype, rng, kind, n):
    p0, g, f, a = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    f = np.abs(f)
    state0 = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(2)]
    hyper = dict(lr=0.01, weight_decay=0.1)
    results = []
    for step in (getattr(kernels, f"{kind}_step"), getattr(ref, f"{kind}_step")):
        p, state = p0.copy(), [s.copy() for s in state0]
        if kind == "sgd":
            args = (p, g, state[0], hyper["lr"], 0.9, True, hyper["weight_decay"])
        elif kind == "rmsprop":
            args = (p, g, state[0], hyper["lr"], 0.9, 1e-8, hyper["weight_decay"])
        else:
            args = (p, g, state[0], state[1], hyper["lr"], 0.9, 0.999, 1e-8, hyper["weight_decay"], 3)
        if step is ref.__dict__[f"{kind}_step"]:
            assert step(*args, 1, fisher=f, anchor=a, lam=2.5)
        elif kind == "adam":
            assert step(p, g, state[0], state[1], 3, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                        weight_decay=0.1, fisher=f, anchor=a, lam=2.5)
        else:
            assert step(*args, fisher=f, anchor=a, lam=2.5)
        results.append((p, state))
    (p_got, s_got), (p_ref, s_ref) = results
    tol = 8 * eps(dtype)
    np.testing.assert_allclose(p_got, p_ref, rtol=tol, atol=tol)
    for got, expected in zip(s_got, s_ref):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    # and the penalty really entered: lam = 0 gives another result
    p_plain = p0.copy()
    plain_state = [s.copy() for s in state0]
    if kind == "sgd":
        kernels.sgd_step(p_plain, g, plain_state[0], 0.01, 0.9, True, 0.1)
    elif kind == "rmsprop":
        kernels.rmsprop_step(p_plain, g, plain_state[0], 0.01, 0.9, 1e-8, 0.1)
    else:
        kernels.adam_step(p_plain, g, plain_state[0], plain_state[1], 3, 0.01, 0.9, 0.999, 1e-8, 0.1)
    assert not np.array_equal(p_plain, p_got)


def test_fused_step_is_checked(backend):
    p, g, v = np.ones(5), np.ones(5), np.zeros(5)
    fisher, anchor = np.full(5, 1e308), np.full(5, -1e308)
    before = p.copy()
    assert not kernels.sgd_step(p, g, v, 0.1, 0.9, False, 0.0, fisher=fisher, anchor=anchor, lam=10.0)
    np.testing.assert_array_equal(p, before)
    np.testing.assert_array_equal(v, 0)


def test_ewc_gradient_matches_finite_differences(backend, rng):
    net = _net(np.float64)
    X, y = _data(rng, 11)
    net.fit(X, y, epochs=2, batch_size=4, verbose=0)
    ewc = fb.EWC(lam=3.0).consolidate(net, X, y)
    X2, y2 = _data(rng, 9)
    net.params[...] += 0.1 * rng.standard_normal(net.n_params)  # away from θ*

    def penalised(theta):
        saved = net.params.copy()
        net.params[...] = theta
        value = net.evaluate(X2, y2) + ewc.penalty_value(net)
        net.params[...] = saved
        return value

    theta = net.params.copy()
    net.forward(X2)
    net.backward(y2)
    # an SGD step with lr 1 moves by exactly the penalised gradient
    opt = fb.SGD(net, lr=1.0)
    opt.penalty = ewc.penalty(net)
    opt.step()
    analytic = theta - net.params
    h = 1e-6
    numeric = np.array([(penalised(theta + h * e) - penalised(theta - h * e)) / (2 * h)
                        for e in np.eye(theta.size)])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_online_ewc_accumulates(rng):
    net = _net(np.float64)
    X, y = _data(rng, 20)
    net.fit(X, y, epochs=1, verbose=0)
    ewc = fb.EWC(lam=1.0, gamma=0.5).consolidate(net, X, y)
    first = ewc.fisher.copy()
    net.fit(X[::-1], y[::-1], epochs=1, verbose=0, guard=ewc)
    ewc.consolidate(net, X, y)
    fresh = fisher_diagonal(net, net._check_X(X), *net._check_y(y, 20))
    np.testing.assert_allclose(ewc.fisher, 0.5 * first + fresh, rtol=1e-12)
    np.testing.assert_array_equal(ewc.anchor, net.params)
    assert ewc.n_tasks == 2


def _two_tasks(dtype, guard, threads=None, rng_seed=3):
    rng = np.random.default_rng(rng_seed)
    XA, yA = _data(rng, 40, dtype=dtype)
    XB, yB = _data(rng, 30, dtype=dtype)
    net = _net(dtype)
    opt = fb.Adam(net, lr=0.01)
    net.fit(XA, yA, opt, epochs=2, batch_size=8, verbose=0, guard=guard)
    if isinstance(guard, fb.EWC):
        guard.consolidate(net, XA, yA)
    return net, opt, XB, yB


@pytest.mark.parametrize("make_guard", [lambda: fb.EWC(lam=5.0), lambda: fb.Rehearsal(16, replay_ratio=0.5)],
                         ids=["ewc", "rehearsal"])
def test_guarded_training_same_bits_for_1_and_2_threads(backend, dtype, threads, make_guard):
    results = []
    for n in (1, 2):
        threads(n)
        guard = make_guard()
        net, opt, XB, yB = _two_tasks(dtype, guard)
        net.fit(XB, yB, opt, epochs=2, batch_size=8, verbose=0, guard=guard)
        results.append(net.params.copy())
    np.testing.assert_array_equal(results[0], results[1])


def test_rehearsal_reservoir_and_mixing(rng):
    net = _net(np.float32)
    guard = fb.Rehearsal(10, replay_ratio=0.5)
    X, y = _data(rng, 25, dtype=np.float64)
    guard.add(net, X, y)
    assert guard.X.dtype == np.float32 and guard.X.shape == (10, 5) and guard.n_kept == 10 and guard.n_seen == 25
    rows = {tuple(r) for r in X.astype(np.float32)}
    assert all(tuple(r) in rows for r in guard.X)  # every kept sample is one of those offered
    for r, t in zip(guard.X, guard.y):  # kept with its own target
        assert y[np.flatnonzero((X.astype(np.float32) == r).all(axis=1))[0]] == t
    assert guard.replay_rows(8) == 4
    before = net.params.copy()
    net.fit(X, y, epochs=1, batch_size=8, verbose=0, guard=guard)
    assert not np.array_equal(before, net.params)
    assert guard.n_seen == 50


def test_reservoir_is_uniform():
    net = _net(np.float64)
    counts = np.zeros(100)
    X = np.zeros((100, 5))
    X[:, 0] = np.arange(100)
    for seed in range(200):
        net._rng = np.random.default_rng(seed)
        guard = fb.Rehearsal(10)
        for start in range(0, 100, 20):
            guard.add(net, X[start:start + 20], np.zeros(20, np.int64))
        counts[guard.X[:, 0].astype(int)] += 1
    # each sample kept with probability 10/100: 20 expected per sample over 200 runs
    assert counts.sum() == 2000
    assert counts[:50].sum() / counts.sum() == pytest.approx(0.5, abs=0.05)
    assert counts.max() < 45


@pytest.mark.parametrize("make_guard", [lambda: fb.EWC(lam=5.0, gamma=0.9), lambda: fb.Rehearsal(16)],
                         ids=["ewc", "rehearsal"])
def test_save_load_and_resume_bitwise(backend, tmp_path, make_guard):
    guard = make_guard()
    net, opt, XB, yB = _two_tasks(np.float32, guard)
    path = tmp_path / "guarded.npz"
    net.save(path, optimizer=opt, epoch=0, guard=guard)
    loaded = fb.load_guard(path)
    assert type(loaded) is type(guard)
    for name in ("lam", "gamma", "n_tasks", "size", "replay_ratio", "n_kept", "n_seen"):
        assert getattr(loaded, name, None) == getattr(guard, name, None)
    for name in ("fisher", "anchor", "X", "y"):
        if getattr(guard, name, None) is not None:
            np.testing.assert_array_equal(getattr(loaded, name), getattr(guard, name))
            assert getattr(loaded, name).dtype == getattr(guard, name).dtype
    # uninterrupted: two epochs, a checkpoint saved at the end of the first (inside fit, as
    # ModelCheckpoint does); resumed: the second epoch from that file
    mid = tmp_path / "mid.npz"

    def checkpoint(network, epoch, logs):
        if epoch == 0:
            network.save(mid, optimizer=opt, epoch=1, guard=guard)

    net.fit(XB, yB, opt, epochs=2, batch_size=8, verbose=0, guard=guard, callbacks=[checkpoint])
    resumed_net, resumed_opt, epoch = fb.load_checkpoint(mid)
    resumed_guard = fb.load_guard(mid)
    resumed_net.fit(XB, yB, resumed_opt, epochs=1, batch_size=8, verbose=0, guard=resumed_guard,
                    initial_epoch=epoch)
    np.testing.assert_array_equal(resumed_net.params, net.params)
    if isinstance(guard, fb.Rehearsal):
        np.testing.assert_array_equal(resumed_guard.X, guard.X)


def test_files_without_a_guard_still_load(tmp_path):
    net = _net(np.float32)
    path = net.save(tmp_path / "plain.npz")
    assert fb.load_guard(path) is None
    np.testing.assert_array_equal(fb.load(path).params, net.params)
    # and a file with a guard loads as a plain model
    net._trained = True
    guard = fb.EWC(lam=1.0).consolidate(net, *_data(np.random.default_rng(0), 6))
    path = net.save(tmp_path / "guarded.npz", guard=guard)
    np.testing.assert_array_equal(fb.load(path).params, net.params)


def test_a_tampered_guard_array_is_refused(tmp_path):
    net = _net(np.float32)
    net._trained = True
    guard = fb.EWC(lam=1.0).consolidate(net, *_data(np.random.default_rng(0), 6))
    guard.fisher = guard.fisher[:-1]  # the wrong length, as a corrupted file would hold
    path = net.save(tmp_path / "bad.npz", guard=guard)
    with pytest.raises(ValueError, match="guard.fisher"):
        fb.load_guard(path)


# ---------------------------------------------------------------- bad input
def test_consolidating_an_untrained_network_is_refused(rng):
    net = _net(np.float64)
    ewc = fb.EWC(lam=1.0)
    with pytest.raises(RuntimeError, match="trained network"):
        ewc.consolidate(net, *_data(rng, 4))
    assert ewc.fisher is None and ewc.n_tasks == 0


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_bad_lambda(lam):
    with pytest.raises(ValueError, match="lam"):
        fb.EWC(lam=lam)
    with pytest.raises(ValueError, match="lam"):
        kernels.sgd_step(np.ones(3), np.ones(3), None, 0.1, fisher=np.ones(3), anchor=np.ones(3), lam=lam)


def test_bad_buffer_size():
    with pytest.raises(ValueError, match="size must be >= 0"):
        fb.Rehearsal(-1)
    with pytest.raises(TypeError, match="size"):
        fb.Rehearsal(2.5)
    with pytest.raises(ValueError, match="replay_ratio"):
        fb.Rehearsal(5, replay_ratio=-0.5)


def test_rehearsal_samples_of_the_wrong_shape_change_nothing(rng):
    net = _net(np.float64)
    guard = fb.Rehearsal(4).add(net, *_data(rng, 6))
    kept = guard.X.copy(), guard.y.copy(), guard.n_seen
    with pytest.raises(ValueError, match="6"):
        guard.add(net, rng.standard_normal((3, 6)), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="y"):
        guard.add(net, rng.standard_normal((3, 5)), np.zeros(4, np.int64))
    np.testing.assert_array_equal(guard.X, kept[0])
    np.testing.assert_array_equal(guard.y, kept[1])
    assert guard.n_seen == kept[2]
    # a buffer of another network's samples: refused by fit before any weight changes
    other = fb.Network([fb.Dense(4, 3)], loss="softmax_cross_entropy", dtype=np.float64)
    before = other.params.copy()
    with pytest.raises(ValueError, match="buffer"):
        other.fit(rng.standard_normal((5, 4)), np.zeros(5, np.int64), epochs=1, verbose=0, guard=guard)
    np.testing.assert_array_equal(other.params, before)


def test_ewc_of_another_network_is_refused_before_training(rng):
    net = _net(np.float64)
    X, y = _data(rng, 8)
    net.fit(X, y, epochs=1, verbose=0)
    ewc = fb.EWC(lam=1.0).consolidate(net, X, y)
    other = _net(np.float64, hidden=4)
    before = other.params.copy()
    with pytest.raises(ValueError, match="parameters"):
        other.fit(X, y, epochs=1, verbose=0, guard=ewc)
    np.testing.assert_array_equal(other.params, before)


def test_guard_of_the_wrong_type():
    net = _net(np.float64)
    with pytest.raises(TypeError, match="guard"):
        net.fit(np.zeros((2, 5)), np.zeros(2, np.int64), epochs=1, verbose=0, guard="ewc")


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
def test_fused_steps_same_bits_for_1_and_2_threads(backend, dtype, rng, threads, kind):
    n = 3 * 16384 + 5  # several chunks: the threaded path
    p0, g, f, a = (rng.standard_normal(n).astype(dtype) for _ in range(4))
    f = np.abs(f)
    results = []
    for n_threads in (1, 2):
        threads(n_threads)
        p, s1, s2 = p0.copy(), np.zeros(n, dtype), np.zeros(n, dtype)
        if kind == "sgd":
            assert kernels.sgd_step(p, g, s1, 0.1, 0.9, False, 0.0, fisher=f, anchor=a, lam=0.5)
        elif kind == "rmsprop":
            assert kernels.rmsprop_step(p, g, s1, 0.1, fisher=f, anchor=a, lam=0.5)
        else:
            assert kernels.adam_step(p, g, s1, s2, 1, 0.1, fisher=f, anchor=a, lam=0.5)
        results.append((p, s1, s2))
    for got, expected in zip(*results):
        np.testing.assert_array_equal(got, expected)
