"""ONNX export: the exported model gives what Network.predict gives, for every layer type and activation."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp as fb
from fastbp._kernels import registry as R
from fastbp.layers import LAYER_TYPES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fastbp.onnx_export import ACTIVATION_EXPORTERS, LAYER_EXPORTERS  # noqa: E402  (after the skips)

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-11}


def erf64():
    """onnx.reference's Erf rounds through float32; this one is exact in float64 (math.erf)."""
    from onnx.reference.ops.op_erf import Erf

    class Erf64(Erf):
        op_domain = ""

        def _run(self, x):
            return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)

    Erf64.__name__ = "Erf"
    return Erf64


def run_onnx(model, X):
    """Run with onnxruntime; a float64 Erf (gelu), which onnxruntime does not implement, with onnx.reference."""
    float64_erf = X.dtype == np.float64 and any(node.op_type == "Erf" for node in model.graph.node)
    if float64_erf:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model, new_ops=[erf64()]).run(None, {"X": X})[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})[0]


def assert_matches_predict(net, shapes, tolerance=None):
    model = net.to_onnx()
    rng = np.random.default_rng(5)
    tolerance = TOLERANCE[net.dtype.type] if tolerance is None else tolerance
    for shape in shapes:  # dynamic batch (and steps): one model, several shapes
        X = (2 * rng.standard_normal(shape)).astype(net.dtype)
        out = run_onnx(model, X)
        assert out.dtype == net.dtype and out.shape == net.predict(X).shape
        np.testing.assert_allclose(out, net.predict(X), rtol=tolerance, atol=tolerance)


def test_tables_cover_every_activation_and_layer_type():
    assert set(ACTIVATION_EXPORTERS) == set(R.ACTIVATIONS)
    assert set(LAYER_EXPORTERS) == set(LAYER_TYPES.values())


@pytest.mark.parametrize("activation", R.ACTIVATIONS)
def test_dense_every_activation(backend, dtype, activation):
    net = fb.Network([fb.Dense(6, 9, activation), fb.Dense(9, 4, "tanh"), fb.Dense(4, 3)], dtype=dtype, seed=1)
    net.layers[0].b[...] = np.linspace(-1, 1, 9)
    assert_matches_predict(net, [(1, 6), (7, 6), (300, 6)])


@pytest.mark.parametrize("loss", R.LOSSES)
def test_output_activation_of_each_loss(dtype, loss):
    net = fb.Network([fb.Dense(5, 8, "relu"), fb.Dense(8, 4)], loss=loss, dtype=dtype, seed=2)
    assert_matches_predict(net, [(3, 5), (64, 5)])


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("activation", R.RECURRENT_ACTIVATIONS)
def test_rnn(backend, dtype, activation, return_sequences):
    net = fb.Network([fb.RNN(3, 6, activation, return_sequences=return_sequences), fb.Dense(6, 4, "gelu"),
                      fb.Dense(4, 2)], loss="softmax_cross_entropy", dtype=dtype, seed=3)
    net.layers[0].b[...] = np.linspace(-0.5, 0.5, 6)
    assert_matches_predict(net, [(1, 1, 3), (5, 9, 3), (40, 2, 3)])


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_stacked_bidirectional_rnn(backend, dtype, return_sequences):
    """Two bidirectional RNNs (the first with return_sequences), every parameter of both directions distinct."""
    net = fb.Network([fb.RNN(3, 4, "tanh", return_sequences=True, bidirectional=True),
                      fb.RNN(8, 5, "relu", return_sequences=return_sequences, bidirectional=True),
                      fb.Dense(10, 2)], loss="softmax_cross_entropy", dtype=dtype, seed=6)
    net.params[...] = np.random.default_rng(7).uniform(-0.6, 0.6, net.n_params)
    assert_matches_predict(net, [(1, 1, 3), (5, 9, 3), (40, 2, 3)])


@pytest.mark.parametrize("activation", R.RECURRENT_ACTIVATIONS)
def test_fixed_point(backend, dtype, activation):
    tol = 1e-6 if dtype == np.float32 else 1e-11
    net = fb.Network([fb.Dense(4, 5, "tanh"), fb.FixedPoint(5, 7, activation, tol=tol, max_iter=500),
                      fb.Dense(7, 2)], dtype=dtype, seed=4)
    if activation == "step":  # a step map is no contraction: it may cycle unless Wh is small
        net.layers[1].Wh[...] *= 1e-3
    # both stop at a change <= tol, maybe one sweep apart: they agree to about tol
    assert_matches_predict(net, [(1, 4), (33, 4)], tolerance=max(TOLERANCE[dtype.type], 10 * tol))


def test_fixed_point_after_rnn_sequences(backend, dtype):
    """FixedPoint then relaxes every (sample, step) row at once, residual over all of them, as fastbp does."""
    net = fb.Network([fb.RNN(3, 5, return_sequences=True), fb.FixedPoint(5, 6, tol=1e-6 if dtype == np.float32
                      else 1e-11), fb.Dense(6, 2)], dtype=dtype, seed=8)
    assert_matches_predict(net, [(1, 1, 3), (6, 4, 3)], tolerance=max(TOLERANCE[dtype.type], 1e-10))


@pytest.mark.parametrize("opset", [17, 18, 21])
def test_later_opsets(opset):
    net = fb.Network([fb.RNN(2, 3), fb.FixedPoint(3, 3), fb.Dense(3, 2, "softplus")], seed=0)
    model = net.to_onnx(opset=opset)
    assert model.opset_import[0].version == opset
    X = np.random.default_rng(0).standard_normal((4, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(model, X), net.predict(X), rtol=1e-5, atol=1e-5)


def test_fixed_point_iterates_to_its_tolerance_not_a_fixed_count():
    """A loose tolerance stops the relaxation early, in fastbp and in ONNX alike."""
    def net(tol):
        return fb.Network([fb.FixedPoint(4, 6, "tanh", tol=tol, max_iter=200)], dtype=np.float64, seed=6)

    X = np.random.default_rng(0).standard_normal((20, 4))
    loose, tight = net(1e-2), net(1e-12)
    assert np.abs(loose.predict(X) - tight.predict(X)).max() > 1e-4  # the tolerance matters here
    for model in (loose, tight):
        np.testing.assert_allclose(run_onnx(model.to_onnx(), X), model.predict(X), rtol=1e-12, atol=1e-12)


def test_written_file_loads_and_runs(tmp_path):
    net = fb.Network([fb.Dense(3, 4, "elu"), fb.Dense(4, 2)], loss="binary_cross_entropy", seed=0)
    path = tmp_path / "model.onnx"
    model = fb.export_onnx(net, path)
    assert os.listdir(tmp_path) == ["model.onnx"]
    loaded = onnx.load(str(path))
    assert loaded == model
    onnx.checker.check_model(loaded, full_check=True)
    assert [i.name for i in loaded.graph.input] == ["X"] and [o.name for o in loaded.graph.output] == ["Y"]
    X = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(run_onnx(loaded, X), net.predict(X), rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a fastbp.Network"):
        fb.export_onnx("model")
    net = fb.Network([fb.Dense(2, 2)])
    with pytest.raises(ValueError, match="opset must be an integer >= 17"):
        net.to_onnx(opset=11)


def test_import_fastbp_does_not_import_onnx():
    code = "import sys, fastbp; sys.exit(bool({'onnx', 'onnxruntime'} & set(sys.modules)))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))  # this fastbp, not an installed one
    assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=root)).returncode == 0
