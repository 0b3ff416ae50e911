"""The layer protocol: a layer type defined here, in the test, trains, saves and
loads, copies and passes gradcheck inside a Network with no edit anywhere else."""

import copy
import pickle

import numpy as np
import pytest

import fastbp as fb
from fastbp.layers import LAYER_TYPES, Gradient, Layer, LayerWorkspace, Parameter, layer_from_config


class Affine(Layer):
    """Feature-wise affine map ``a = x ⊙ scale + shift`` (a test-local layer type; NumPy passes)."""

    scale, shift = Parameter("scale"), Parameter("shift")
    dscale, dshift = Gradient("scale"), Gradient("shift")

    def __init__(self, n_features, start=1.0):
        self.n_in = self.n_out = int(n_features)
        self.start = float(start)

    def parameter_shapes(self):
        return [("scale", (self.n_in,)), ("shift", (self.n_in,))]

    def initialize(self, rng):
        self.scale[...] = self.start

    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[1] != self.n_in:
            raise ValueError(f"{self!r} takes input of shape (n_samples, {self.n_in}), got {tuple(input_shape)}")
        return tuple(input_shape)

    def workspace(self, input_shape, dtype):
        output = np.empty(self.output_shape(input_shape), dtype)
        return LayerWorkspace(output, np.empty_like(output), calls=[0, 0])

    def forward(self, backend, n_threads, x, ws):
        np.multiply(x, self.scale, out=ws.output)
        ws.output += self.shift
        ws.calls[0] += 1

    def backward(self, backend, n_threads, x, ws, dx):
        np.einsum("ij,ij->j", ws.delta, x, out=self.dscale)
        np.sum(ws.delta, axis=0, out=self.dshift)
        if dx is not None:
            np.multiply(ws.delta, self.scale, out=dx)
        ws.calls[1] += 1

    def get_config(self):
        return {"type": "Affine", "n_features": self.n_in, "start": self.start}


@pytest.fixture
def registered(monkeypatch):
    """Affine registered as a layer type for the test only (LAYER_TYPES is what load looks types up in)."""
    monkeypatch.setitem(LAYER_TYPES, "Affine", Affine)
    return Affine


def _net(dtype=np.float64, seed=0):
    return fb.Network([fb.Dense(5, 6, "tanh"), Affine(6, start=0.5), fb.Dense(6, 3)],
                      loss="softmax_cross_entropy", dtype=dtype, seed=seed)


def _data(n=40):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


def test_a_new_layer_type_trains_in_any_position(registered, backend):
    X, y = _data()
    for layers in ([Affine(5), fb.Dense(5, 3)], [fb.Dense(5, 6, "tanh"), Affine(6), fb.Dense(6, 3)]):
        net = fb.Network(layers, loss="softmax_cross_entropy", dtype=np.float64, seed=0)
        history = net.fit(X, y, optimizer=fb.Adam(net, lr=0.05), epochs=30, batch_size=8, verbose=0)
        assert history["loss"][-1] < 0.8 * history["loss"][0]
        assert any(np.any(layer.scale != layer.start) for layer in net.layers if isinstance(layer, Affine))
    assert [name for name, _, _ in net.named_parameters()] == [
        "layers.0.W", "layers.0.b", "layers.1.scale", "layers.1.shift", "layers.2.W", "layers.2.b"]


def test_a_new_layer_type_passes_gradcheck(registered, backend):
    X, y = _data(12)
    net = _net()
    net.layers[1].shift[...] = np.linspace(-1, 1, 6)
    errors = fb.gradcheck(net, X, y)
    assert set(errors) >= {"layers.1.scale", "layers.1.shift"}
    assert max(errors.values()) < 1e-6, errors


def test_a_new_layer_type_saves_loads_and_copies(registered, backend, tmp_path):
    X, y = _data()
    net = _net(np.float32)
    net.fit(X, y, epochs=2, verbose=0)
    path = net.save(tmp_path / "affine.npz")
    loaded = fb.load(path)
    assert isinstance(loaded.layers[1], Affine) and loaded.layers[1].start == 0.5
    np.testing.assert_array_equal(loaded.params, net.params)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert np.shares_memory(clone.layers[1].scale, clone.params)
        np.testing.assert_array_equal(clone.predict(X), net.predict(X))
    assert layer_from_config(net.layers[1].get_config()).get_config() == net.layers[1].get_config()


def test_an_unregistered_layer_type_does_not_load(backend, tmp_path, monkeypatch):
    monkeypatch.setitem(LAYER_TYPES, "Affine", Affine)
    path = _net().save(tmp_path / "affine.npz")
    monkeypatch.delitem(LAYER_TYPES, "Affine")
    with pytest.raises(ValueError, match="unknown layer type 'Affine'"):
        fb.load(path)


def test_shapes_that_do_not_chain_are_refused_naming_the_layer(registered):
    with pytest.raises(ValueError, match=r"layer sizes do not chain: layer 0 .* has 6 outputs but layer 1 "
                                         r"Affine\(n_features=4"):
        fb.Network([fb.Dense(5, 6), Affine(4), fb.Dense(4, 3)])


def test_every_built_in_layer_type_is_registered():
    assert {"Dense", "RNN", "FixedPoint"} <= set(LAYER_TYPES)
    for name, cls in LAYER_TYPES.items():
        assert issubclass(cls, Layer) and cls.__name__ == name
