"""Checkpoints: optimizer state saved with the model, resuming bit for bit, ModelCheckpoint, Ctrl-C."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastbp as fb
from fastbp.schedules import StepDecay

OPTIMIZERS = {
    "sgd_momentum": lambda net: fb.SGD(net, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda net: fb.RMSprop(net, lr=0.01, rho=0.8, clip_value=5.0),
    "adam": lambda net: fb.Adam(net, lr=0.01, betas=(0.8, 0.95), clip_norm=10.0),
}


def classification(seed=0, n=53):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    return X, (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(np.int64) + (X[:, 2] > 1)


def make_net(kind="mlp", dtype=np.float32):
    if kind == "rnn":  # the layer-by-layer path (not the whole-network kernel)
        layers = [fb.RNN(5, 7, "tanh"), fb.Dense(7, 3)]
    else:
        layers = [fb.Dense(5, 9, "relu"), fb.Dense(9, 3)]
    return fb.Network(layers, loss="softmax_cross_entropy", dtype=dtype, seed=7)


def train_args(kind):
    X, y = classification()
    if kind == "rnn":
        X = X.reshape(-1, 1, 5).repeat(3, axis=1) * np.array([1.0, 0.5, -0.3])[None, :, None]
    # batches of 16 with a remainder of 5, shuffled, a schedule that changes the lr at epoch 2 and 4
    return X, y, dict(batch_size=16, shuffle=True, lr_schedule=StepDecay(step_size=2, gamma=0.5), verbose=0)


def state_arrays(optimizer):
    return {k: v for k, v in vars(optimizer.state).items()}


def assert_same_training_state(net_a, opt_a, net_b, opt_b):
    np.testing.assert_array_equal(net_a.params, net_b.params, strict=True)
    a, b = state_arrays(opt_a), state_arrays(opt_b)
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], np.ndarray):
            np.testing.assert_array_equal(a[name], b[name], strict=True)
        else:
            assert a[name] == b[name], name
    assert opt_a.get_config() == opt_b.get_config()


@pytest.mark.parametrize("kind", ["mlp", "rnn"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_resumed_training_is_bitwise_the_uninterrupted_one(backend, optimizer, kind, tmp_path):
    X, y, args = train_args(kind)
    straight = make_net(kind)
    straight_opt = OPTIMIZERS[optimizer](straight)
    straight.fit(X, y, optimizer=straight_opt, epochs=6, **args)

    first = make_net(kind)
    first_opt = OPTIMIZERS[optimizer](first)
    first.fit(X, y, optimizer=first_opt, epochs=3, **args)
    path = first.save(tmp_path / "ckpt.npz", optimizer=first_opt, epoch=3)
    del first, first_opt
    net, opt, epoch = fb.load_checkpoint(path)
    assert epoch == 3 and type(opt) is type(straight_opt)
    assert opt.params is net.params and opt.grads is net.grads
    history = net.fit(X, y, optimizer=opt, epochs=3, initial_epoch=epoch, **args)
    assert history["lr"] == [0.5 * straight_opt.lr, 0.25 * straight_opt.lr, 0.25 * straight_opt.lr]
    assert_same_training_state(straight, straight_opt, net, opt)
    assert not np.array_equal(net.params, make_net(kind).params)  # it trained


def test_without_the_saved_state_resuming_differs(tmp_path):
    """The test above can fail: a fresh optimizer, or a fresh shuffling Generator, gives other weights."""
    X, y, args = train_args("mlp")
    straight = make_net()
    straight.fit(X, y, optimizer=OPTIMIZERS["adam"](straight), epochs=6, **args)
    first = make_net()
    first_opt = OPTIMIZERS["adam"](first)
    first.fit(X, y, optimizer=first_opt, epochs=3, **args)
    path = first.save(tmp_path / "ckpt.npz", optimizer=first_opt, epoch=3)
    fresh_optimizer = fb.load(path)
    fresh_optimizer.fit(X, y, optimizer=OPTIMIZERS["adam"](fresh_optimizer), epochs=3, initial_epoch=3, **args)
    assert not np.array_equal(fresh_optimizer.params, straight.params)
    net, opt, _ = fb.load_checkpoint(path)
    net._rng = np.random.default_rng(7)  # the Generator as first seeded, not as saved
    net.fit(X, y, optimizer=opt, epochs=3, initial_epoch=3, **args)
    assert not np.array_equal(net.params, straight.params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_checkpoint_round_trip_restores_every_field(dtype, tmp_path):
    X, y, args = train_args("mlp")
    for name, make in OPTIMIZERS.items():
        net = make_net(dtype=dtype)
        opt = make(net)
        net.fit(X, y, optimizer=opt, epochs=2, **args)
        path = fb.save(net, tmp_path / f"{name}.npz", optimizer=opt)
        loaded, loaded_opt, epoch = fb.load_checkpoint(path)
        assert epoch is None and loaded.dtype == dtype
        assert_same_training_state(net, opt, loaded, loaded_opt)
        assert loaded._rng.bit_generator.state == net._rng.bit_generator.state
        assert loaded._rng is not net._rng
        plain = fb.load(path)  # a checkpoint is also a model file
        np.testing.assert_array_equal(plain.params, net.params)
    assert opt.state.step == 2 * 4  # Adam, 4 batches per epoch


def test_other_bit_generators_round_trip(tmp_path):
    net = fb.Network([fb.Dense(2, 2)], seed=None)
    net._rng = np.random.Generator(np.random.MT19937(3))
    net._rng.random(5)
    net.save(tmp_path / "c.npz", optimizer=fb.SGD(net))
    loaded = fb.load_checkpoint(tmp_path / "c.npz").network
    assert loaded._rng.random() == net._rng.random()


def test_plain_save_is_the_old_format_and_old_files_load(tmp_path):
    net = make_net()
    path = net.save(tmp_path / "model.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert "training" not in json.loads(str(archive["metadata"]))
        assert not [name for name in archive.files if name.startswith("optimizer.")]
    # a file written by fastbp before checkpoints: same members, version 1
    old = tmp_path / "old.npz"
    metadata = dict(net.get_config(), format="fastbp.Network", version=1)
    np.savez(old, metadata=np.array(json.dumps(metadata)),
             **{name: param for name, param, _ in net.named_parameters()})
    np.testing.assert_array_equal(fb.load(old).params, net.params)
    with pytest.raises(ValueError, match="no optimizer state.*fb.load"):
        fb.load_checkpoint(old)


def test_save_refuses_bad_arguments_before_writing(tmp_path):
    net, other = make_net(), make_net()
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match="other parameters"):
        net.save(path, optimizer=fb.Adam(other))
    with pytest.raises(TypeError, match="optimizer must be one of"):
        net.save(path, optimizer="adam")
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        net.save(path, optimizer=fb.Adam(net), epoch=-1)
    with pytest.raises(ValueError, match="pass optimizer= too"):
        net.save(path, epoch=3)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="initial_epoch must be >= 0"):
        net.fit(*classification(), initial_epoch=-1, verbose=0)
    with pytest.raises(TypeError, match="initial_epoch must be an integer"):
        net.fit(*classification(), initial_epoch=1.5, verbose=0)
    np.testing.assert_array_equal(net.params, make_net().params)  # nothing trained


def rewrite(path, out, edit_metadata=None, edit_arrays=None):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(str(arrays.pop("metadata")))
    if edit_metadata:
        edit_metadata(metadata)
    if edit_arrays:
        edit_arrays(arrays)
    np.savez_compressed(out, metadata=np.array(json.dumps(metadata)), **arrays)  # zeros stay small
    return out


@pytest.mark.parametrize("corruption, message", [
    (dict(edit_metadata=lambda m: m["training"].update(version=99)), "training state has version 99"),
    (dict(edit_metadata=lambda m: m["training"]["optimizer"].update(type="Adagrad")), "unknown optimizer type"),
    (dict(edit_metadata=lambda m: m["training"]["optimizer"]["counters"].update(step=-1)), "'step' must be"),
    (dict(edit_metadata=lambda m: m["training"]["optimizer"]["counters"].update(step=True)), "'step' must be"),
    (dict(edit_metadata=lambda m: m["training"]["optimizer"]["config"].update(lr=-1)), "Invalid learning rate"),
    (dict(edit_metadata=lambda m: m["training"]["optimizer"]["config"].update(foo=1)), "unexpected keyword"),
    (dict(edit_metadata=lambda m: m["training"].update(epoch="3")), "epoch must be an integer"),
    (dict(edit_metadata=lambda m: m["training"]["rng"].update(bit_generator="os.system")), "random generator"),
    (dict(edit_arrays=lambda a: a.pop("optimizer.exp_avg")), "state holds"),
    (dict(edit_arrays=lambda a: a.update({"optimizer.exp_avg": a["optimizer.exp_avg"][:-1]})), "has shape"),
    (dict(edit_arrays=lambda a: a.update({"optimizer.exp_avg": a["optimizer.exp_avg"].astype(np.float64)})),
     "dtype float64"),
    (dict(edit_arrays=lambda a: a.update({"optimizer.exp_avg": np.zeros(10**8, np.float32)})),
     r"shape \(100000000,\)"),  # 400 MB in a 0.4 MB member: refused from its header, never expanded
])
def test_load_checkpoint_refuses_a_malformed_training_state(tmp_path, corruption, message):
    net = make_net()
    opt = fb.Adam(net)
    path = net.save(tmp_path / "c.npz", optimizer=opt, epoch=1)
    bad = rewrite(path, tmp_path / "bad.npz", **corruption)
    with pytest.raises(ValueError, match=message):
        fb.load_checkpoint(bad)
    fb.load(bad)  # the model itself is intact


# ---------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_every_n_epochs_resumes_bitwise(backend, tmp_path):
    X, y, args = train_args("mlp")
    net = make_net()
    opt = OPTIMIZERS["adam"](net)
    checkpoint = fb.ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}.npz", every=2)
    net.fit(X, y, optimizer=opt, epochs=6, callbacks=[checkpoint], **args)
    assert [os.path.basename(p) for p in checkpoint.saved] == ["ckpt-02.npz", "ckpt-04.npz", "ckpt-06.npz"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    final = fb.load_checkpoint(tmp_path / "ckpt-06.npz")
    assert final.epoch == 6
    assert_same_training_state(net, opt, final.network, final.optimizer)  # lr saved is the base lr
    resumed, resumed_opt, epoch = fb.load_checkpoint(tmp_path / "ckpt-02.npz")
    assert epoch == 2
    resumed.fit(X, y, optimizer=resumed_opt, epochs=4, initial_epoch=epoch, **args)
    assert_same_training_state(net, opt, resumed, resumed_opt)


def test_model_checkpoint_best_only_keeps_the_best_epoch(backend, tmp_path):
    X, y, args = train_args("mlp")
    X_val, y_val = classification(1, n=40)
    net = make_net()
    snapshots = []
    checkpoint = fb.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    history = net.fit(X, y, optimizer=fb.SGD(net, lr=2.0, momentum=0.9), epochs=10,
                      validation_data=(X_val, y_val),
                      callbacks=[checkpoint, lambda n, e, logs: snapshots.append(n.params.copy())],
                      **dict(args, lr_schedule=None))
    best = int(np.argmin(history["val_loss"]))
    assert best != len(history["val_loss"]) - 1  # the large lr made it worse after the best epoch
    assert checkpoint.best_epoch == best and checkpoint.best == history["val_loss"][best]
    saved = fb.load_checkpoint(tmp_path / "best.npz")
    assert saved.epoch == best + 1
    np.testing.assert_array_equal(saved.network.params, snapshots[best])
    assert saved.network.evaluate(X_val, y_val) == pytest.approx(history["val_loss"][best], rel=1e-6)


def test_model_checkpoint_arguments(tmp_path):
    with pytest.raises(ValueError, match="every must be"):
        fb.ModelCheckpoint(tmp_path / "c.npz", every=0)
    with pytest.raises(ValueError, match="may only hold the field"):
        fb.ModelCheckpoint(str(tmp_path / "c-{step}.npz"))
    net = make_net()
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation_data"):
        net.fit(*classification(), callbacks=[fb.ModelCheckpoint(tmp_path / "c.npz", save_best_only=True)],
                verbose=0)
    assert os.listdir(tmp_path) == []


def test_model_checkpoint_survives_a_failed_save(tmp_path, monkeypatch):
    """Atomic: a save that fails leaves the previous checkpoint whole and no temporary file."""
    X, y, args = train_args("mlp")
    net = make_net()
    path = tmp_path / "last.npz"
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return os.rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        net.fit(X, y, optimizer=fb.Adam(net), epochs=3, callbacks=[fb.ModelCheckpoint(path)], **args)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.npz"]
    assert fb.load_checkpoint(path).epoch == 1


# ---------------------------------------------------------------- Ctrl-C
@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and fit rightly leaves an ignored SIGINT alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


CHILD = r"""
import signal
import sys
import numpy as np
import fastbp as fb

signal.signal(signal.SIGINT, signal.default_int_handler)  # not an ignored SIGINT inherited from a background shell
fb.set_backend(sys.argv[1])
X = np.random.default_rng(0).standard_normal((64, 6))
y = np.sin(X[:, :2])
for trial in range(int(sys.argv[3])):
    net = fb.Network([fb.Dense(6, 16, "tanh"), fb.Dense(16, 2)], seed=trial)
    opt = fb.Adam(net, lr=1e-4)
    ready = lambda net, epoch, logs: epoch == 0 and print("ready", flush=True)
    try:
        net.fit(X, y, optimizer=opt, epochs=10**7, batch_size=None, verbose=0, callbacks=[ready])
    except KeyboardInterrupt:
        net.save(f"{sys.argv[2]}/trial{trial}.npz", optimizer=opt)
        print("interrupted", opt.state.step, flush=True)
    else:
        print("not interrupted", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_leaves_weights_moments_and_step_consistent(backend, tmp_path, python_sigint):
    """Real SIGINTs at random moments of fit: the saved Adam state replays exactly.

    Full-batch training makes step k the k-th epoch, so a fresh run of ``step``
    epochs must give the saved weights and moments bit for bit: an interrupt
    between Adam's update and its step counter (or mid-update) would not.
    """
    trials = 8
    root = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))  # this fastbp, not an installed one
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(tmp_path), str(trials)],
                             stdout=subprocess.PIPE, text=True, env=env)
    # the child trains for 10**7 epochs unless interrupted: whatever fails here, it must not outlive the test
    watchdog = threading.Timer(600, child.kill)
    watchdog.start()
    delays = random.Random(0)
    try:
        for _ in range(trials):
            assert child.stdout.readline().split() == ["ready"]
            time.sleep(delays.uniform(0.005, 0.08))
            os.kill(child.pid, signal.SIGINT)
            assert child.stdout.readline().split()[0] == "interrupted"
    finally:
        try:
            out, _ = child.communicate(timeout=120)
        finally:
            watchdog.cancel()
            child.kill()  # no-op once it has exited
    assert child.returncode == 0
    X = np.random.default_rng(0).standard_normal((64, 6))
    y = np.sin(X[:, :2])
    for trial in range(trials):
        net, opt, _ = fb.load_checkpoint(tmp_path / f"trial{trial}.npz")
        assert opt.state.step >= 1
        replay = fb.Network([fb.Dense(6, 16, "tanh"), fb.Dense(16, 2)], seed=trial)
        replay_opt = fb.Adam(replay, lr=1e-4)
        replay.fit(X, y, optimizer=replay_opt, epochs=opt.state.step, batch_size=None, verbose=0)
        assert_same_training_state(replay, replay_opt, net, opt)


def test_fit_leaves_an_ignored_sigint_ignored():
    """A process that ignores SIGINT (started with nohup, or in the background by a script) keeps ignoring it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        X, y = classification()
        net = make_net()
        history = net.fit(X, y, epochs=2, verbose=0, callbacks=[lambda *args: os.kill(os.getpid(), signal.SIGINT)])
        assert len(history["loss"]) == 2  # the SIGINTs after each epoch interrupted nothing
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fit_in_another_thread_leaves_signals_alone(python_sigint):
    """Only the main thread may set handlers: elsewhere fit defers nothing and does not fail."""
    X, y = classification()
    net = make_net()
    errors = []
    thread = threading.Thread(target=lambda: errors.append(net.fit(X, y, epochs=2, verbose=0)))
    thread.start()
    thread.join()
    assert len(errors[0]["loss"]) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_handler_is_restored_and_deferred_interrupt_raises(backend, python_sigint):
    """The deferring handler lives only while fit runs; a SIGINT during fit surfaces as KeyboardInterrupt
    after a whole step."""
    X, y = classification()
    net = make_net()
    opt = fb.Adam(net)
    steps = []

    def interrupt_at_epoch_one(network, epoch, logs):
        steps.append(opt.state.step)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # recorded by fit's handler, raised after the callbacks
        return False

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer=opt, epochs=5, batch_size=16, verbose=0, callbacks=[interrupt_at_epoch_one])
    assert steps == [4, 8] and opt.state.step == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
