"""save/load: round trip, atomic writes, and clear errors for missing, truncated or foreign files."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tracemalloc
import zipfile

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


# ---------------------------------------------------------------- issue 12: hostile and malformed files
def write_model(path, metadata, arrays, compression=zipfile.ZIP_STORED):
    """An .npz written member by member, as an attacker would: no check of what it claims."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        members = {"metadata": np.array(metadata if isinstance(metadata, str) else json.dumps(metadata))}
        members.update(arrays)
        for name, value in members.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as f:
                if isinstance(value, bytes):  # a raw member: header and data as given
                    f.write(value)
                else:
                    np.lib.format.write_array(f, value, allow_pickle=True)


def good_metadata(layers=None):
    """The metadata save writes for Network([Dense(4, 3)]), or for ``layers``; a new dict each call."""
    if layers is None:
        layers = [{"type": "Dense", "n_in": 4, "n_out": 3, "activation": "identity", "init": "glorot_uniform"}]
    return {"format": "fastbp.Network", "version": 1, "loss": "mse", "dtype": "float32", "seed": 0,
            "layers": layers}


def peak_memory(function):
    """Bytes allocated at the peak while ``function()`` raises its ValueError; the error's message."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as excinfo:
            function()
        return tracemalloc.get_traced_memory()[1], str(excinfo.value)
    finally:
        tracemalloc.stop()


def test_load_checks_array_headers_before_reading_or_allocating(tmp_path):
    # 1. A 130 KB deflated member that would expand to 128 MiB, where metadata wants (4, 3).
    bomb = tmp_path / "bomb.npz"
    write_model(bomb, good_metadata(), {"layers.0.W": np.zeros((4096, 4096)),
                                        "layers.0.b": np.zeros(3, np.float32)}, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20
    peak, message = peak_memory(lambda: fb.load(bomb))
    assert re.search(r"array 'layers.0.W' has shape \(4096, 4096\) and dtype float64, expected \(4, 3\)", message)
    assert peak < 4 << 20, peak
    # 2. A 1 KB file whose metadata claims Dense(15000, 15000), 225M parameters, and holds no arrays.
    huge = good_metadata([{"type": "Dense", "n_in": 15000, "n_out": 15000, "activation": "identity",
                           "init": "glorot_uniform"}])
    tiny = tmp_path / "tiny.npz"
    write_model(tiny, huge, {})
    assert tiny.stat().st_size < 2048
    peak, message = peak_memory(lambda: fb.load(tiny))
    assert "lacks the array 'layers.0.W'" in message and peak < 4 << 20, (peak, message)
    # 3. The same metadata with headers that agree with it but members far too small for them.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (15000, 15000)})
    lying = tmp_path / "lying.npz"
    write_model(lying, huge, {"layers.0.W": header.getvalue() + bytes(100),
                              "layers.0.b": np.zeros(15000, np.float32)})
    peak, message = peak_memory(lambda: fb.load(lying))
    assert re.search(r"array 'layers.0.W' claims shape \(15000, 15000\) of float32 \(900000000 bytes\) but its "
                     r"member holds 100 bytes", message) and peak < 4 << 20, (peak, message)


def test_load_refuses_a_zip_member_claiming_more_than_the_file_holds(tmp_path):
    path = tmp_path / "model.npz"
    fb.save(fb.Network([fb.Dense(4, 3)], seed=0), path)
    data = bytearray(path.read_bytes())
    # Central directory entry of layers.0.W: claim 1 GiB compressed and uncompressed.
    entry = data.rindex(b"PK\x01\x02", 0, data.index(b"layers.0.W.npy", data.index(b"PK\x01\x02")) + 1)
    data[entry + 20:entry + 28] = (1 << 30).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    peak, message = peak_memory(lambda: fb.load(path))
    assert "array 'layers.0.W' claims 1073741824 bytes, more than the file holds" in message, message
    assert peak < 4 << 20


def test_load_errors_say_what_is_wrong_with_the_file(tmp_path):
    def refused(path, match):
        with pytest.raises(ValueError, match=match) as excinfo:
            fb.load(path)
        assert "allow_pickle" not in str(excinfo.value)  # never an invitation to load unsafely
        assert str(path) in str(excinfo.value)

    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    refused(noise, r"not an .npz archive \(not a zip file\)")
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is text\n" * 20)
    refused(text, r"not an .npz archive \(not a zip file\)")
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3.0))
    refused(single, r"holds a single NumPy array \(.npy\), not an .npz archive")
    pickled = tmp_path / "pickled.npz"
    write_model(pickled, good_metadata(), {"layers.0.W": np.array([{"a": 1}] * 12, dtype=object).reshape(4, 3)})
    refused(pickled, "array 'layers.0.W' holds Python objects")
    deep = tmp_path / "deep.npz"
    write_model(deep, "[" * 100_000 + "]" * 100_000, {})
    refused(deep, "its metadata is nested too deeply")


@pytest.mark.parametrize("change,match", [
    (lambda m: m["layers"][0].update(activation=None), 'activation=null would load as "identity"'),
    (lambda m: m["layers"][0].update(activation=7), "unknown activation 7"),
    (lambda m: m["layers"][0].update(n_in="4"), "n_in must be an integer"),
    (lambda m: m["layers"][0].pop("n_out"), "layer 0 of its metadata lacks 'n_out'"),
    (lambda m: m["layers"][0].update(extra=1), "extra=1 would load as null"),
    (lambda m: m["layers"].append([1, 2]), r"layer 1 of its metadata is not a JSON object: \[1, 2\]"),
    (lambda m: m["layers"].__setitem__(0, {"type": "RNN", "n_in": 4, "n_hidden": 3, "activation": "tanh",
                                          "return_sequences": "yes", "truncate": None, "init": "glorot_uniform"}),
     'return_sequences="yes" would load as true'),
    (lambda m: m.update(layers={}), "'layers' must be a non-empty list"),
    (lambda m: m.update(dtype=None), "'dtype' must be 'float32' or 'float64', got None"),
    (lambda m: m.update(loss=3), "'loss' must be a string, got 3"),
    (lambda m: m.update(loss="hinge"), "unknown loss 'hinge'"),
    (lambda m: m.update(seed="x"), "'seed' must be an integer or null"),
    (lambda m: m.update(version=True), "format version True"),
])
def test_malformed_metadata_is_a_clear_value_error(tmp_path, change, match):
    metadata = good_metadata()
    change(metadata)
    path = tmp_path / "model.npz"
    write_model(path, metadata, {"layers.0.W": np.zeros((4, 3), np.float32), "layers.0.b": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=match):
        fb.load(path)


def test_write_model_writes_loadable_files(tmp_path):
    """The crafted files above differ from a good one only where each test says."""
    path = tmp_path / "model.npz"
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_model(path, good_metadata(), {"layers.0.W": W, "layers.0.b": np.ones(3, np.float32)})
    net = fb.load(path)
    np.testing.assert_array_equal(net.layers[0].W, W)


# ---------------------------------------------------------------- issue 12: killed saves
KILLED_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import numpy as np
import fastbp as fb

def savez_then_die(f, **arrays):
    f.write(b"PK partial archive")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

np.savez = savez_then_die
fb.save(fb.Network([fb.Dense(4, 3)], seed=0), {path!r})
"""


def test_the_next_save_removes_temporaries_of_killed_saves(tmp_path):
    path = tmp_path / "model.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))
    for _ in range(3):  # saves killed mid-write, as by SIGKILL or the OOM killer: each removes the one before
        killed = subprocess.run([sys.executable, "-c", KILLED_SAVE.format(root=root, path=str(path))])
        assert killed.returncode == -signal.SIGKILL
        left = sorted(os.listdir(tmp_path))
        assert len(left) == 1 and re.fullmatch(r"\.model\.npz\.\w{8}\.tmp", left[0]), left
    unrelated = [".other.npz.abcdefgh.tmp", ".model.npz.x.abcdefgh.tmp", "model.npz.tmp"]
    for name in unrelated:
        (tmp_path / name).write_bytes(b"not ours")
    fb.save(fb.Network([fb.Dense(4, 3)], seed=0), path)
    assert sorted(os.listdir(tmp_path)) == sorted(unrelated + ["model.npz"])
    fb.load(path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock")
def test_a_save_in_progress_keeps_its_temporary(tmp_path):
    import fcntl

    path = tmp_path / "model.npz"
    in_progress = tmp_path / ".model.npz.abcd1234.tmp"
    with open(in_progress, "wb") as f:  # another process's save, holding its lock while it writes
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        fb.save(fb.Network([fb.Dense(4, 3)], seed=0), path)
        assert in_progress.exists()
    fb.save(fb.Network([fb.Dense(4, 3)], seed=0), path)  # that save died: its lock is gone
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
