"""Saving and loading networks: one ``.npz`` holding the weights and a JSON
description of the architecture and dtype; no pickle anywhere.

File layout (an uncompressed NumPy ``.npz`` archive):

* ``metadata``: a 0-d unicode array holding JSON:
  ``{"format": "fastbp.Network", "version": 1, "loss": ..., "dtype": ...,
  "seed": ..., "layers": [{"type": "Dense", "n_in": ..., "n_out": ...,
  "activation": ..., "init": ...}, ...]}``; an ``RNN`` or ``FixedPoint`` layer
  stores its constructor arguments the same way (``"type": "RNN"``, ...).
* ``layers.<i>.W`` (n_in, n_out) and ``layers.<i>.b`` (n_out,) for each Dense
  layer, ``layers.<i>.Wx``, ``.Wh``, ``.b`` for a recurrent one, in the
  network's dtype.

With ``optimizer=``, the file is also a checkpoint: the optimizer's state,
the epoch count and the shuffling Generator's state are added under the
metadata key ``"training"`` and members ``optimizer.<name>`` (see
``fastbp.checkpoint``); ``load`` ignores them, ``load_checkpoint`` restores them.

Saving is atomic: the archive is written to a temporary file in the same
directory, ``.<name>.<8 random characters>.tmp``, flushed and fsynced, then
moved over ``path`` with ``os.replace`` (and the directory fsynced), so a crash
mid-save leaves the previous file, if any, intact. A save holds a lock on its
temporary file (POSIX ``flock``) until it is renamed; the next save of the same
path deletes the unlocked ones, which killed saves left behind.

Loading trusts nothing in the file: the metadata is checked field by field (a
layer's configuration must read back as itself), and every array's ``.npy``
header against the shapes the metadata implies and against the bytes its zip
member holds, all before the network is allocated or any array read. No pickle
is ever loaded.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from . import checkpoint as _checkpoint
from ._atomic import write_atomically

if TYPE_CHECKING:
    from .network import Network
    from .optim import Optimizer

__all__ = ["save", "load"]

FORMAT = "fastbp.Network"
VERSION = 1


def save(network: Network, path: Union[str, os.PathLike], optimizer: Optional[Optimizer] = None,
         epoch: Optional[int] = None, guard=None) -> str:
    """Save ``network``'s architecture, dtype and weights to ``path``, atomically.

    Parameters
    ----------
    network : Network
    path : str or os.PathLike
        Written exactly as given (no suffix is added); ``.npz`` is customary.
    optimizer : SGD, RMSprop or Adam built on ``network``, optional
        Also save its hyperparameters and state, and the network's random
        Generator: a checkpoint, read back by ``fastbp.load_checkpoint``.
    epoch : int >= 0, optional
        Epochs done, stored with the optimizer (``fit``'s ``initial_epoch`` on resuming).
    guard : fastbp.EWC or fastbp.Rehearsal, optional
        Also save the continual-learning guard (θ*, F and λ, or the replay buffer), under the
        metadata key ``"guard"`` (versioned on its own) and members ``guard.*``;
        ``fastbp.load_guard`` reads it back, ``load`` ignores it.

    Returns
    -------
    path : str
    """
    path = os.fspath(path)
    metadata = dict(network.get_config(), format=FORMAT, version=VERSION)
    arrays = {}
    if optimizer is not None:
        metadata["training"], arrays = _checkpoint.training_state(network, optimizer, epoch)
    elif epoch is not None:
        raise ValueError("epoch is stored with the optimizer's state; pass optimizer= too")
    if guard is not None:
        from . import continual as _continual

        metadata["guard"], guard_arrays = _continual.guard_state(_continual.check_guard(guard))
        arrays.update(guard_arrays)
    arrays["metadata"] = np.array(json.dumps(metadata))
    for name, param, _ in network.named_parameters():
        arrays[name] = param
    write_atomically(path, lambda f: np.savez(f, **arrays))
    return path


def load(path: Union[str, os.PathLike]) -> Network:
    """Load a network saved by ``save``/``Network.save`` (or a checkpoint, as a plain model).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Network
        Same architecture, dtype and weights; its random Generator is freshly
        seeded with the saved seed.

    Raises
    ------
    FileNotFoundError (an OSError)
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not an ``.npz`` archive, holds pickled data,
        is not a fastbp model, or its metadata or an array's header is malformed
        or disagrees with the rest (checked before the network is allocated).
    """
    return read(path)[0]


def read(path, training=False):
    """``load``'s reader: (network, training) where training is ``(optimizer, epoch)`` from
    ``fastbp.checkpoint.read_training_state`` if asked and saved, else None."""
    from .network import Network

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        file_size = os.path.getsize(path)
        with _open_archive(path) as archive:
            metadata = _read_metadata(archive, file_size)
            layers = _layers_from_metadata(metadata["layers"])
            dtype = np.dtype(metadata["dtype"])
            for name, shape in _parameter_shapes(layers):  # before anything is allocated
                _check_array_header(archive, name, shape, dtype, file_size)
            network = Network(layers, loss=metadata["loss"], dtype=dtype, seed=metadata.get("seed"))
            network._trained = True  # its weights come from a file: continual.EWC may consolidate them
            for name, param, _ in network.named_parameters():
                param[...] = _read_array(archive, name)
            if training:
                def read_checked(name, shape, dtype):  # header checked before any data is read
                    _check_array_header(archive, name, shape, dtype, file_size)
                    return _read_array(archive, name)
                members = [name[:-len(".npy")] for name in archive.namelist() if name.endswith(".npy")]
                state = _checkpoint.read_training_state(network, metadata, members, read_checked)
            else:
                state = None
    except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path!r} is not a valid fastbp model file: {exc}") from exc
    return network, state


# ---------------------------------------------------------------- load's checks
def _open_archive(path):
    """The zip archive at ``path``; a ValueError saying what the file is when it is not one."""
    with open(path, "rb") as f:
        start = f.read(len(np.lib.format.MAGIC_PREFIX))
    if start == np.lib.format.MAGIC_PREFIX:
        raise ValueError("it holds a single NumPy array (.npy), not an .npz archive")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if start.startswith(b"PK"):
            raise ValueError("it is a damaged or truncated zip archive") from None
        raise ValueError("it is not an .npz archive (not a zip file)") from None


def _member(archive, name, file_size):
    """The zip member of array ``name``, checked to claim no more bytes than the file holds."""
    try:
        info = archive.getinfo(name + ".npy")
    except KeyError:
        raise ValueError(f"it lacks the array {name!r}") from None
    stored_size_lies = info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size
    if stored_size_lies or info.header_offset + info.compress_size > file_size:
        raise ValueError(f"array {name!r} claims {info.file_size} bytes, more than the file holds")
    return info


def _array_header(archive, name, file_size):
    """(shape, dtype) of array ``name`` from its .npy header, checked against its member's size; reads no data."""
    info = _member(archive, name, file_size)
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"array {name!r} has .npy format version {version}; fastbp reads 1.0 and 2.0")
        header_size = f.tell()
    if dtype.hasobject:
        raise ValueError(f"array {name!r} holds Python objects (pickled data); a model file holds numbers only")
    n_bytes = math.prod(shape) * dtype.itemsize
    if header_size + n_bytes != info.file_size:
        raise ValueError(f"array {name!r} claims shape {shape} of {dtype} ({n_bytes} bytes) but its member "
                         f"holds {info.file_size - header_size} bytes of data")
    return shape, dtype


def _check_array_header(archive, name, shape, dtype, file_size):
    stored_shape, stored_dtype = _array_header(archive, name, file_size)
    if stored_shape != tuple(shape) or stored_dtype != dtype:
        raise ValueError(f"array {name!r} has shape {stored_shape} and dtype {stored_dtype}, "
                         f"expected {tuple(shape)} and {dtype}")


def _read_array(archive, name):
    """Array ``name``, whose header was checked; never unpickles."""
    with archive.open(name + ".npy") as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_metadata(archive, file_size):
    """The metadata dict, checked field by field."""
    if "metadata.npy" not in archive.namelist():
        raise ValueError("it has no fastbp metadata")
    shape, dtype = _array_header(archive, "metadata", file_size)
    if shape != () or dtype.kind != "U":
        raise ValueError(f"its metadata is not a JSON string but an array of shape {shape} and dtype {dtype}")
    try:
        metadata = json.loads(str(_read_array(archive, "metadata")[()]))
    except RecursionError:
        raise ValueError("its metadata is nested too deeply to be a fastbp model's") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"its metadata is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"its metadata is not of format {FORMAT!r}")
    if metadata.get("version") != VERSION or isinstance(metadata.get("version"), bool):
        raise ValueError(f"it has format version {metadata.get('version')!r}; this fastbp reads {VERSION}")
    layers, loss, dtype, seed = (metadata.get(key) for key in ("layers", "loss", "dtype", "seed"))
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"its metadata's 'layers' must be a non-empty list, got {layers!r}")
    if not isinstance(loss, str):
        raise ValueError(f"its metadata's 'loss' must be a string, got {loss!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"its metadata's 'dtype' must be 'float32' or 'float64', got {dtype!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"its metadata's 'seed' must be an integer or null, got {seed!r}")
    return metadata


def _layers_from_metadata(configs):
    """The layers the metadata describes (no storage yet); each configuration must read back as itself."""
    from .layers import layer_from_config

    layers = []
    for i, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"layer {i} of its metadata is not a JSON object: {config!r}")
        try:
            layer = layer_from_config(config)  # ValueError for an unknown type
        except KeyError as exc:
            raise ValueError(f"layer {i} of its metadata lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"layer {i} of its metadata: {exc}") from None
        # What save writes reads back as itself; anything else (an "activation": null that would load
        # as identity, a string where a flag belongs) is not a file fastbp wrote.
        written = layer.get_config()
        differences = [f"{key}={json.dumps(config.get(key))} would load as {json.dumps(written.get(key))}"
                       for key in sorted(set(config) | set(written))
                       if json.dumps(config.get(key)) != json.dumps(written.get(key))]
        if differences:
            raise ValueError(f"layer {i} of its metadata is not one fastbp writes: {', '.join(differences)}")
        layers.append(layer)
    return layers


def _parameter_shapes(layers):
    """(name, shape) of every array the network of ``layers`` stores, as ``Network.named_parameters`` names them."""
    return [(f"layers.{i}.{name}", shape) for i, layer in enumerate(layers)
            for name, shape in layer.parameter_shapes()]
