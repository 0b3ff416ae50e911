"""fastbp.bench rnn: for every layer kind the comparison runs, and fastbp and torch, given the same
weights, compute the same loss before and after the same SGD epoch (so the timed work is the same)."""

import pytest

import fastbp as fb
from fastbp.bench import peers

TINY = {"batch": 4, "time": 5, "n_in": 3, "hidden": 6, "classes": 3}


@pytest.fixture(autouse=True)
def restore_runtime():
    """The bench's builders set the backend and the thread count, as a benchmark process would."""
    backend, threads = fb.get_backend(), fb.get_num_threads()
    yield
    fb.set_backend(backend)
    fb.set_num_threads(threads)


@pytest.mark.parametrize("kind", sorted(peers.RNN_GATES))
def test_same_weights_same_loss_before_and_after_an_epoch(kind):
    pytest.importorskip("torch")
    X, y = peers.rnn_data(3 * TINY["batch"], TINY)
    systems = {name: build(kind, 1, TINY) for name, build in peers.RNN_SYSTEMS.items()}
    before = {name: loss(X, y) for name, (_, loss) in systems.items()}
    for epoch, _ in systems.values():
        epoch(X, y)
    after = {name: loss(X, y) for name, (_, loss) in systems.items()}
    for name in systems:
        assert before[name] == pytest.approx(before["torch eager"], rel=1e-5), name
        assert after[name] == pytest.approx(after["torch eager"], rel=1e-5), name
        assert abs(after[name] - before[name]) > 1e-4, name  # the epoch trained: the second check is not vacuous


@pytest.mark.parametrize("kind", sorted(peers.RNN_GATES))
def test_comparison_runs(kind, capsys):
    pytest.importorskip("torch")
    results = peers.run_rnn(1, 1, n_batches=2, kinds=(kind,), shape=TINY)
    assert set(results) == {kind} and set(results[kind]) == set(peers.RNN_SYSTEMS)
    assert all(rate > 0 for rate in results[kind].values())
    printed = capsys.readouterr().out
    assert printed.startswith(kind) and printed.count(f"x torch.nn.{kind}") == 2
