"""save/load: round trip, atomic writes, and clear errors for missing, truncated or foreign files."""

import json
import os

import numpy as np
import pytest

import fastbp as fb


def make_net(dtype):
    net = fb.Network([fb.Dense(4, 6, "gelu", init="glorot_normal"), fb.Dense(6, 3)],
                     loss="softmax_cross_entropy", dtype=dtype, seed=3)
    net.layers[1].b[...] = [0.1, -0.2, 0.3]
    return net


def test_round_trip(backend, dtype, tmp_path):
    net = make_net(dtype)
    path = tmp_path / "model.npz"
    assert net.save(path) == str(path)
    loaded = fb.load(path)
    assert loaded.dtype == dtype and loaded.loss == net.loss
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in net.layers]
    np.testing.assert_array_equal(loaded.params, net.params)
    X = np.random.default_rng(0).random((5, 4))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary file left behind


def test_file_holds_no_pickle_and_readable_metadata(tmp_path):
    path = tmp_path / "m.npz"
    fb.save(make_net(np.float32), path)
    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(str(archive["metadata"]))
        assert metadata["format"] == "fastbp.Network" and metadata["dtype"] == "float32"
        assert archive["layers.0.W"].shape == (4, 6)


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = make_net(np.float64)
    old.save(path)
    content = path.read_bytes()
    new = make_net(np.float64)
    new.params[...] = 7.0

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    np.testing.assert_array_equal(fb.load(path).params, old.params)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        fb.load(tmp_path / "missing.npz")
    good = tmp_path / "good.npz"
    make_net(np.float32).save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fb.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    with pytest.raises(ValueError, match="not a valid fastbp model file: it has no fastbp metadata"):
        fb.load(foreign)
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fb.load(single)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fb.load(pickled)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fb.load(text)
